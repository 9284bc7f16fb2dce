"""CHORDS theory: closed-form predictions (``chords_theory``) checked against the engine.

The derivations are in ``theory/derivations.md``; ``from theory import chords_theory as th``.
"""
