"""chords_core: backend-agnostic CHORDS (multi-core hierarchical ODE solving) for diffusion sampling.

Layers, each a module: ``schedules`` (alpha, sigma) -> ``grid`` (time grids) -> ``models``
(parametrisations, plain ODEs) -> ``solvers`` (one step i -> j) -> ``plan`` (which core evaluates
what, when) -> ``pipeline`` (the engine) with ``executors`` (how a round's evaluations run).
"""

from .executors import BatchedExecutor, Executor, SerialExecutor
from .grid import time_grid
from .models import PREDICTIONS, DiffusionModel, Model, ModelOutputError, VectorField
from .peers import PeerResult, paradigms, srds
from .pipeline import ChordsResult, Hit, chords, rectify
from .plan import Plan, default_init, make_plan, paper_init, validate_init
from .schedules import EDM, VP, RectifiedFlow, Schedule
from .sequential import solve
from .solvers import SOLVERS, make_solver
from .stopping import StopAtCore, StopOnResidual

__version__ = "0.1.0"

__all__ = [
    "BatchedExecutor", "Executor", "SerialExecutor", "time_grid", "PREDICTIONS", "DiffusionModel", "Model",
    "ModelOutputError", "VectorField", "ChordsResult", "Hit", "chords", "rectify", "Plan", "default_init",
    "make_plan", "paper_init", "validate_init", "EDM", "VP", "RectifiedFlow", "Schedule", "solve", "SOLVERS",
    "make_solver", "StopAtCore", "StopOnResidual", "paradigms", "srds", "PeerResult",
]
