"""Small helpers shared by test modules (importable: pytest puts this folder on sys.path)."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np


def rel_err(a: Any, b: Any) -> float:
    """Largest absolute difference of two tensors relative to max(1, |b|)."""
    return float((a - b).abs().max()) / max(1.0, float(b.abs().max()))


def interpret(prog: Any, x: np.ndarray, fn: Any) -> np.ndarray:
    """A lowered chords_jax program (``Program``) run with numpy, segment by segment: the replay and
    lowering checked independently of jax. Returns the final register buffer (rows, x.size)."""
    buf = prog.init[:, None] * x.reshape(1, -1)
    for seg in prog.segments:
        for _, points, t, _, dest, idx, coef, out_idx, out_coef in zip(*prog.segment_arrays(seg)):
            pts = buf[points].reshape((-1,) + x.shape[1:])
            outs = fn(pts, np.repeat(t, x.shape[0])).reshape(len(points), -1)
            buf[dest] = np.einsum("wm,wmn->wn", coef, buf[idx]) + np.einsum("wm,wmn->wn", out_coef, outs[out_idx])
    return buf


def mixture_problem(schedule: Any, prediction: str, steps: int, seed: int = 3, batch: int = 64, dim: int = 16,
                    spacing: str = "uniform", x_seed: int = 1) -> tuple[Any, np.ndarray, np.ndarray, Any]:
    """A held-out test problem: a ``dim``-D 4-mode Gaussian mixture (``GaussianMixture.random(dim, 4,
    seed)``) as a model on ``schedule`` with ``prediction``, ``batch`` standard normal samples (seed
    ``x_seed``) and a ``steps``-step grid of ``spacing``. Returns (model, x, grid, err), where
    ``err(y)`` is the RMS of y (any float dtype) against the exact solution."""
    import chords_core as cc
    from chords_core.problems import GaussianMixture

    gmm = GaussianMixture.random(dim, 4, seed=seed)
    x = np.random.default_rng(x_seed).standard_normal((batch, dim))
    grid = cc.time_grid(schedule, steps, spacing)
    exact = gmm.reference_solve(x, grid[0], grid[-1], schedule)

    def err(y: Any) -> float:
        return float(np.sqrt(np.mean((np.asarray(y, np.float64) - exact) ** 2)))

    return gmm.model(schedule, prediction), x, grid, err


_WHERE = re.compile(r"round (\d+), core \d+ \(step \d+, stage \d+, t=[^)]*\)")


def first_nonfinite(run: Callable[[], Any]) -> str | None:
    """The core's words for the first non-finite output of ``run()`` (a ``chords_core.chords`` call),
    "round r, core c (step i, stage k, t=..)", or None. The core retires a faster core whose output is
    not finite and goes on (its ``stopped_by``, or the error core 0 raises later, names it), where
    ``chords_jax`` raises at the first: the earliest round named is that one (no round was evaluated
    again before it)."""
    from chords_core import ModelOutputError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the retirements' RuntimeWarning)
        try:
            text = run().stopped_by
        except ModelOutputError as err:
            text = str(err)
    found = [(int(m.group(1)), m.group(0)) for m in _WHERE.finditer(text)]
    return min(found)[1] if found else None


def never_accepts(needed: int | None = 2, decides_on_values: bool = True) -> Any:
    """A tolerance-type stop rule (it warns when unmet) that accepts no output and needs ``needed`` of
    them (``None``: all the cores make)."""
    import chords_core as cc

    class Never(cc.StopRule):
        warns_if_unmet = True

        def outputs_needed(self, available):
            return available if needed is None else needed

        def accept(self, outputs, coarse):
            return False

    rule = Never()
    rule.decides_on_values = decides_on_values
    return rule



def build_under_lock(lock: Any, factory: Callable) -> Any:
    """A worker factory that builds its model holding a multiprocessing lock (one worker at a time
    loading weights, say): the lock travels to the worker only while it is spawned."""
    with lock:
        return factory()
