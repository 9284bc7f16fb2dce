"""Tuning CHORDS for a problem: calibration problems and their measurement (``calibration``), and
the search for init sequences (``search``)."""

from .calibration import Calibration, Candidate, calibration, evaluate
from .search import InitResult, optimize_init, pareto_front

__all__ = ["Calibration", "Candidate", "calibration", "evaluate", "InitResult", "optimize_init", "pareto_front"]
