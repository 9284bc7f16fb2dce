"""chords_jax: CHORDS compiled end to end with JAX (``lax.scan`` over rounds, cores on a leading axis).

``chords(model, x, grid, solver, cores=, init=, stop=, history=, devices=)`` takes the arguments of
``chords_core.chords`` and returns its ``Result``; ``solve(model, x, grid, solver)`` is the
compiled sequential solve. ``devices`` shards the core slots over a device mesh axis ``"cores"``,
also across processes under ``jax.distributed`` (a mesh over the global devices; every process
gets the whole result).
"""

from .api import SUPPORTED_SOLVERS, chords, clear_cache, compile_plan, solve
from .lower import Program
from .run import AXIS, compilations, make_mesh

__all__ = ["chords", "solve", "clear_cache", "compile_plan", "Program", "SUPPORTED_SOLVERS", "AXIS", "make_mesh",
           "compilations"]
