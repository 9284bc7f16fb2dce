"""chords_jax: CHORDS compiled end to end with JAX (``lax.scan`` over rounds, cores on a leading axis).

``chords(model, x, grid, solver, cores=, init=, stop=, history=, devices=)`` takes the arguments of
``chords_core.chords`` and returns its ``Result``; ``solve(model, x, grid, solver)`` is the
compiled sequential solve. ``devices`` shards the core slots over a device mesh axis ``"cores"``,
also across processes under ``jax.distributed`` (a mesh over the global devices; every process
gets the whole result). ``srds(model, x, grid, solver, blocks=, tol=, max_iters=, stop=, devices=)``
is ``chords_core.srds`` compiled the same way (its schedule is static too).
``parallel(model, x, grid, solver, cores=, method=, tol=)`` compiles the sliding-window methods of
``chords_core.parallel`` (cascade, ParaDiGMS, ParaSolver; Euler and DDIM) as one ``lax.while_loop``.
"""

from .api import SUPPORTED_SOLVERS, chords, clear_cache, compile_plan, solve
from .lower import Program
from .multihost import set_sync_timeout
from .parareal import compile_srds, srds
from .run import AXIS, compilations, make_mesh
from .window import parallel

__all__ = ["chords", "srds", "parallel", "solve", "clear_cache", "compile_plan", "compile_srds", "Program",
           "SUPPORTED_SOLVERS", "AXIS", "make_mesh", "compilations", "set_sync_timeout"]
