"""A real pretrained network for chords_core: the terrain UNet of ``adaptive-terrain-diffusion`` (ONNX).

The PyPI package ``adaptive-terrain-diffusion`` (0.4.2, import name ``terrain_diffusion``, MIT) ships
``terrain_diffusion/weights/terrain_consistency_unet_difficulty100.onnx`` (45 MB): a 32-channel
consistency UNet on 128 x 128 x 1 heightfields, conditioned on a difficulty label. Its graph is
the complete EDM denoiser D(x; sigma, label):

- inputs ``noisy`` (N, 1, 128, 128) float32, ``sigma`` (N,) float32 (the raw noise level; the
  preconditioning c_in / c_noise / c_skip / c_out is inside the graph: D(x; sigma_min) returns x
  exactly, the consistency boundary condition), ``difficulty`` (N,) float32, the label
  (d - 1) / 99 for a difficulty d in 1..100;
- output ``denoised`` (N, 1, 128, 128) float32, the data prediction x0_hat.

This is exactly how ``terrain_diffusion.TerrainGenerator._denoise`` calls it (its own sampler is one
step: x = sigma_max * noise, sigma_max = 80, then one call). Here the same call is reimplemented
with a session of our own, so that the number of intra-op threads can be set (the package's loader
does not expose it); only the package's bundled weights file is used.

The network is **consistency-distilled** (metadata: ``training = endpoint-distillation``,
``teacher_steps = 20``): D(x; sigma) jumps to the end of the teacher's trajectory from any sigma,
so the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma built from it is not the
teacher's ODE, and multi-step ODE samples saturate (they drift towards the clip range [-1, 1]).
Benchmarks on it measure speed and agreement with the sequential solver on a real network, not
sample quality.

On CPU the network is batch invariant and thread-count invariant (bit for bit, measured with
onnxruntime 1.32): a row's output depends neither on the other rows of the call nor on
``intra_op_num_threads``; ``tests/test_terrain.py`` checks both.

- ``TerrainDenoiser``: ``fn(x, sigma)`` for ``chords_core.DiffusionModel`` (numpy or CPU torch in,
  the same library out), picklable, with ``threads`` onnxruntime intra-op threads;
- ``terrain_model``: the ``DiffusionModel`` (``EDM()`` schedule, ``"x0"`` prediction);
- ``terrain_factory``: the ``chords_torch.ProcessExecutor`` factory (builds the session in the worker);
- ``available``: whether the package and onnxruntime are installed.
"""

from __future__ import annotations

import functools
import importlib.resources
import importlib.util
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import chords_core as cc

__all__ = ["TerrainDenoiser", "terrain_model", "terrain_factory", "terrain_noise", "available", "weights_path",
           "SIZE", "SIGMA_MIN", "SIGMA_MAX", "SIGMA_DATA"]

#: The network's native size (square heightfields, one channel).
SIZE = 128
#: The noise range and data scale of ``terrain_diffusion.TerrainGenerator`` (EDM's).
SIGMA_MIN, SIGMA_MAX, SIGMA_DATA = 0.002, 80.0, 0.5
#: The number of difficulty classes (labels 1..100).
NUM_CLASSES = 100
WEIGHTS = "weights/terrain_consistency_unet_difficulty100.onnx"


def available() -> bool:
    """Whether ``terrain_diffusion`` (the weights) and ``onnxruntime`` are importable."""
    return all(importlib.util.find_spec(m) is not None for m in ("terrain_diffusion", "onnxruntime"))


def weights_path() -> str:
    """The path of the ONNX file bundled with ``terrain_diffusion`` (``FileNotFoundError`` if absent)."""
    resource = importlib.resources.files("terrain_diffusion").joinpath(WEIGHTS)
    if not resource.is_file():
        raise FileNotFoundError(f"terrain_diffusion is installed but {WEIGHTS} is missing; reinstall "
                                "adaptive-terrain-diffusion==0.4.2")
    return str(resource)


def _labels(difficulty: int | Sequence[int]) -> np.ndarray:
    """The float32 labels (d - 1) / 99 of difficulties d in 1..100 (one per sample of the state)."""
    values = np.atleast_1d(np.asarray(difficulty))
    if values.ndim != 1 or values.size == 0 or not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"difficulty must be an integer 1..{NUM_CLASSES} or a non-empty 1-D sequence of them, "
                         f"got {difficulty!r}")
    if (values < 1).any() or (values > NUM_CLASSES).any():
        raise ValueError(f"difficulty must lie in 1..{NUM_CLASSES}, got {values.tolist()}")
    return np.ascontiguousarray((values - 1) / (NUM_CLASSES - 1), dtype=np.float32)


class TerrainDenoiser:
    """The terrain UNet as ``fn(x, sigma) -> x0_hat`` for ``chords_core.DiffusionModel`` (x0, ``EDM``).

    One onnxruntime session on the CPU, built at construction. A call takes x of shape
    (N, 1, 128, 128) and sigma of shape (N,) (numpy arrays or CPU torch tensors; any floating dtype,
    evaluated in float32) and returns the data prediction in x's library and dtype, one ``session.run``
    for all N rows: a round of K points of a B-sample state is one call of N = K B rows.

    Args:
        threads: onnxruntime intra-op threads (1 per worker process; the machine's cores for a
            sequential baseline).
        difficulty: the difficulty 1..100 of every sample, or one per sample of the state (length B;
            row r of a call gets ``difficulty[r % B]``, since a call stacks whole states).
        path: the ONNX file (default: the one bundled with ``terrain_diffusion``).
        spin: let idle intra-op threads spin (onnxruntime's default). Off by default, since with
            more than one thread it helps on a quiet machine and hurts on a loaded one (2 threads on
            2 cores, measured: 77 ms spinning vs 95 ms sleeping at load 1.6; 360 vs 170 ms at load 5);
            no effect with one thread (the worker processes).

    Raises:
        ValueError: a bad ``threads`` / ``difficulty``, or (at a call) a bad shape of x or sigma.
        ImportError: onnxruntime or terrain_diffusion is not installed.
    """

    def __init__(self, threads: int = 1, difficulty: int | Sequence[int] = 50, path: str | None = None, *,
                 spin: bool = False) -> None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
        self.threads, self.path, self.spin = threads, path, bool(spin)
        self.labels = _labels(difficulty)  # validates
        self.difficulty = int(difficulty) if np.ndim(difficulty) == 0 else tuple(int(d) for d in difficulty)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not spin:  # idle intra-op threads sleep instead of spinning: on a shared machine spinning steals cores
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(path or weights_path(), sess_options=options,
                                            providers=["CPUExecutionProvider"])
        names = ({i.name for i in self.session.get_inputs()}, [o.name for o in self.session.get_outputs()])
        if names != ({"noisy", "sigma", "difficulty"}, ["denoised"]):
            raise ValueError(f"unexpected ONNX signature: inputs {sorted(names[0])}, outputs {names[1]}; expected "
                             "inputs ['difficulty', 'noisy', 'sigma'] and output ['denoised']")

    def __reduce__(self) -> tuple[Callable[..., TerrainDenoiser], tuple[Any, ...]]:
        """Pickled as its arguments: the session is rebuilt where it is unpickled."""
        return (functools.partial(TerrainDenoiser, spin=self.spin), (self.threads, self.difficulty, self.path))

    def __repr__(self) -> str:
        return f"TerrainDenoiser(threads={self.threads}, difficulty={self.difficulty!r}, spin={self.spin})"

    def denoise(self, x: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        """D(x; sigma) on float32 numpy arrays: x (N, 1, 128, 128), sigma (N,) -> (N, 1, 128, 128) float32.

        Raises:
            ValueError: x or sigma has the wrong shape, or N is not a multiple of the number of
                per-sample difficulties.
        """
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, SIZE, SIZE) or x.shape[0] == 0:
            raise ValueError(f"the terrain UNet takes x of shape (N, 1, {SIZE}, {SIZE}) with N >= 1 (a batch of "
                             f"one-channel {SIZE}x{SIZE} heightfields), got {tuple(x.shape)}")
        n = x.shape[0]
        if sigma.shape != (n,):
            raise ValueError(f"sigma must have shape ({n},) (one noise level per row of x), got {tuple(sigma.shape)}")
        b = self.labels.size
        if n % b:
            raise ValueError(f"{b} per-sample difficulties given, but the call has {n} rows (not a multiple of {b})")
        feeds = {
            "noisy": np.ascontiguousarray(x, dtype=np.float32),
            "sigma": np.ascontiguousarray(sigma, dtype=np.float32),
            "difficulty": np.tile(self.labels, n // b),
        }
        return self.session.run(["denoised"], feeds)[0]

    def __call__(self, x: Any, sigma: Any) -> Any:
        """``fn(x, t)`` of a ``DiffusionModel``: x0_hat at (x, sigma) in x's library (numpy / CPU torch) and dtype."""
        if isinstance(x, np.ndarray):
            return self.denoise(x, np.asarray(sigma)).astype(x.dtype, copy=False)
        import torch

        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a numpy array or a torch tensor, got {type(x).__name__}")
        if x.device.type != "cpu":
            raise ValueError(f"the ONNX session runs on the CPU; x is on {x.device}")
        out = self.denoise(x.detach().numpy(), torch.as_tensor(sigma).detach().cpu().numpy())
        return torch.from_numpy(out).to(x.dtype)


def terrain_model(threads: int = 1, difficulty: int | Sequence[int] = 50, *, spin: bool = False) -> cc.DiffusionModel:
    """The terrain UNet as a chords_core model: ``DiffusionModel(TerrainDenoiser(...), EDM(), "x0")``.

    ``EDM()`` has alpha = 1, sigma = t (the denoiser applies sigma_data = 0.5 itself) and the grid range
    80 -> 0.002 -> 0 of the package (``cc.time_grid(cc.EDM(), steps, "karras")``); the PF-ODE is
    dx/dsigma = (x - D) / sigma.

    Args:
        threads: onnxruntime intra-op threads of the session.
        difficulty, spin: see ``TerrainDenoiser``.
    """
    return cc.DiffusionModel(TerrainDenoiser(threads, difficulty, spin=spin), cc.EDM(), "x0")


def terrain_factory(threads: int = 1, difficulty: int | Sequence[int] = 50) -> Callable[[], TerrainDenoiser]:
    """A picklable ``ProcessExecutor`` factory: each worker builds its own ``TerrainDenoiser(threads, difficulty)``."""
    return functools.partial(TerrainDenoiser, threads, difficulty)


def terrain_noise(batch: int = 1, seed: int = 0, dtype: Any = np.float32) -> np.ndarray:
    """The initial state sigma_max * eps, eps ~ N(0, 1), of shape (batch, 1, 128, 128) (numpy, ``dtype``)."""
    eps = np.random.default_rng(seed).standard_normal((batch, 1, SIZE, SIZE))
    return (SIGMA_MAX * eps).astype(dtype)
