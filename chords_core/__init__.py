"""chords_core: backend-agnostic parallel ODE solving (CHORDS and its peers) for diffusion sampling.

The layers, one module (or subpackage) each, in the order a solve passes through them:

- ``schedules`` (alpha, sigma) -> ``grid`` (time grids) -> ``models`` (parametrisations, plain ODEs)
- ``solvers`` (one step i -> j; the registry ``SOLVERS``) -> ``sequential`` (``solve``)
- ``inits`` (CHORDS' start sequences) -> ``plan`` (which core evaluates what, when)
- ``engine`` (CHORDS' round loop) with ``executors`` (how a round's evaluations run),
  ``stopping`` (stop rules), ``history`` (multistep history at a rectification), ``results``
- ``methods`` (every parallel method, one registry; ``parallel`` is the entry point)
- ``host`` (a run on CPU tensors computed on numpy's views of them, ``host.host_route``)
- ``tuning`` (calibration problems, the init search), ``problems`` (analytic test problems),
  ``checks`` (argument validation), ``demo`` and ``__main__`` (the command line).
"""

from .engine import rectify
from .executors import HOST_BATCH_BYTES, BatchedExecutor, Executor, SerialExecutor
from .grid import time_grid
from .history import HISTORY_POLICIES
from .inits import default_init, paper_init, recipe_init, uniform_init, validate_init
from .methods import METHODS, Method, cascade, chords, paradigms, parallel, parasolver, parataa, register_method, srds
from .models import PREDICTIONS, DiffusionModel, Model, ModelOutputError, VectorField
from .plan import Plan, make_plan
from .results import Hit, Result
from .schedules import EDM, VP, RectifiedFlow, Schedule
from .sequential import solve
from .solvers import SOLVERS, make_solver, register_solver
from .stopping import RunAll, StopAtCore, StopNotMet, StopOnResidual, StopRule, StopWhenConverged

__version__ = "0.1.0"

__all__ = [
    "BatchedExecutor", "Executor", "SerialExecutor", "HOST_BATCH_BYTES", "time_grid",
    "HISTORY_POLICIES",
    "default_init", "paper_init",
    "recipe_init", "uniform_init", "validate_init", "METHODS", "Method", "cascade", "chords", "paradigms", "parallel",
    "parasolver", "parataa",
    "register_method", "srds", "PREDICTIONS", "DiffusionModel", "Model", "ModelOutputError", "VectorField", "Plan",
    "make_plan", "Hit", "Result", "EDM", "VP", "RectifiedFlow", "Schedule", "solve", "SOLVERS", "make_solver",
    "register_solver", "RunAll", "StopAtCore", "StopNotMet", "StopOnResidual", "StopRule", "StopWhenConverged",
    "rectify",
]
