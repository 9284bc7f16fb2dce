"""Executors evaluate the points of a round. The core ships two; backends add parallel ones.

An executor is a callable ``executor(model, xs, ts) -> outs``: ``xs`` the points (one state each),
``ts`` their float times; it returns the raw model outputs in the same order. It must raise
``ModelOutputError`` (with the point's index) for a bad output, which ``Model.evaluate`` does.
``close()`` releases resources; executors are context managers.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._backend import Stacked, Workspace, _nbytes, library
from .checks import _is_int
from .models import Model, ModelOutputError

__all__ = ["Executor", "SerialExecutor", "BatchedExecutor", "HOST_BATCH_BYTES"]

#: ``BatchedExecutor(max_batch_bytes="auto")`` for arrays in host memory (numpy arrays, torch tensors
#: on the CPU): the most bytes of stacked points per model call. On the host a model call on a few MiB
#: is already bound by memory bandwidth or arithmetic, so stacking more gains nothing, while a larger
#: stack makes an output that falls out of the last-level cache and that the C allocator maps afresh
#: (page faults) every round instead of reusing (glibc maps blocks above 32 MiB anew each time).
#: Points of any size are stacked up to it: on a near-free model one call a point is cheaper from
#: about 64 KiB a point (no stacking copy), but weight-bound models gain much more from the batch
#: (``benchmarks/batching.py``, one call of 8 points against 8 calls: MLPs 0.25-0.37x, a transformer
#: on 64 tokens 0.70x) than convolutional ones lose (a conv net on 64x64 maps 1.33-1.57x, the terrain
#: UNet 1.07-1.19x; ``max_batch_bytes=1`` for those).
HOST_BATCH_BYTES = 4 << 20


class Executor:
    """Base class of executors: evaluate the points of one round. Subclasses implement ``__call__``.

    ``stacks_points(x)``: whether the executor evaluates a round of points like ``x`` with batched
    ``model.evaluate(xs, ts, batched=True, workspace=...)`` calls on the list ``xs`` it is given (or on
    ``Stacked.part`` ranges of it), so that the engine may hand it points that already lie stacked in
    one buffer (``_backend.Stacked``: no stacking copy). False by default.

    ``own_network``: True for an executor that evaluates a network set up when it was made
    (``chords_torch.ProcessExecutor``'s factory, ``DistributedExecutor``'s serving ranks), not the
    call's model: of that only the parametrisation and schedule apply. A caller that builds the
    model itself for one call (``chords_diffusers.sample``: this prompt's encoding and guidance)
    refuses such an executor, which would evaluate another network without notice.

    ``outputs_checked``: True where every output the class returns comes from ``model.evaluate`` on
    the round's own points (which checks its shape, dtype and values); the engine checks the shape of
    every other executor's outputs. Read from the class's own namespace, not inherited: a subclass
    that overrides ``__call__`` may return other arrays, and declares it again if it does not.

    ``values_checked``: True where the outputs' finiteness was checked as ``model.check_outputs``
    says (by ``model.evaluate`` in a worker: chords_torch's executors); the engine checks it for
    every other executor whose outputs it checks (one calling the network itself: a nan it returned
    was named a round later at another point, or returned as the result where it came last, a trial).
    Read from the class's own namespace, as ``outputs_checked``.
    """

    own_network = False
    outputs_checked = False
    values_checked = False

    def stacks_points(self, x: Any) -> bool:
        """Whether rounds of points like ``x`` may be handed over stacked (see the class docstring)."""
        return False

    def __call__(self, model: Model, xs: Sequence[Any], ts: Sequence[float]) -> list[Any]:
        """Evaluate ``model`` at the points (xs[k], ts[k]) of one round.

        Args:
            model: the call's ``Model``; evaluate with ``model.evaluate`` so its parametrisation and
                output checks apply.
            xs: the points, one state each (shape S, all alike), in core order (slowest first).
            ts: their times, Python floats, one per point.

        Returns:
            The raw model outputs (shape S each), in the order of ``xs``.

        Raises:
            ModelOutputError: a bad output (shape, dtype, nan / inf), with ``point`` the index of
                its point in ``xs`` (``Model.evaluate`` raises it so for its own points; an executor
                that splits a round must map the index back).
        """
        raise NotImplementedError(f"{type(self).__name__} does not define __call__ (an Executor subclass must)")

    def close(self) -> None:
        """Release the executor's resources (threads, processes); idempotent. No-op by default."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class SerialExecutor(Executor):
    """One model call per point, in core order: the reference semantics, and the minimum memory."""

    outputs_checked = True

    def __call__(self, model: Model, xs: Sequence[Any], ts: Sequence[float]) -> list[Any]:
        """One ``model`` call per point, in order (see ``Executor.__call__``)."""
        return model.evaluate(xs, ts, batched=False)


def _own_workspace(local: threading.local) -> Workspace:
    """The workspace a thread's ``local`` holds, made on its first use."""
    ws = getattr(local, "workspace", None)
    if ws is None:
        ws = local.workspace = Workspace()
    return ws


class BatchedExecutor(Executor):
    """A round's points in batched calls with per-sample times: the single-device mode.

    The stacked points go into a buffer reused from round to round (``Workspace``); a model output
    that shares memory with it is copied. For large rounds the CHORDS engine writes the points
    straight into such a buffer (``stacks_points``), so the model's input is the points themselves.
    A model must not keep a reference to its input, nor modify it, nor return an array it writes again
    on a later call (a reused output buffer: the methods keep model values across calls). The buffer
    outlives the call for the next one (the methods make a new executor per call where none is
    given); ``close()`` (or leaving a ``with`` block) releases it, and the executor stays usable.

    Args:
        max_batch_bytes: the most bytes of stacked points in one model call. A round above it is
            evaluated in several calls of consecutive points, as many a call as fit (one call a point
            where a point alone fills it); the results are those of one call a round, bit for bit,
            where a sample's output does not depend on the batch it is in (a BLAS matrix product may
            round differently between batch sizes, in the last bit, as between this executor and
            ``SerialExecutor``). ``None``: one call a round, whatever its size. ``"auto"`` (the
            default): for arrays in host memory, stacked calls of at most ``HOST_BATCH_BYTES``
            (4 MiB) of points (one call a point from above 2 MiB a point);
            ``None`` on an accelerator and for jax arrays (a device gains from large batches; split
            a round there with an explicit cap where its activations do not fit).
    """

    max_batch_bytes: int | str | None = "auto"
    outputs_checked = True

    def __init__(self, max_batch_bytes: int | str | None = "auto") -> None:
        if not (max_batch_bytes is None or (isinstance(max_batch_bytes, str) and max_batch_bytes == "auto")):
            if not _is_int(max_batch_bytes) or int(max_batch_bytes) < 1:  # (numpy's integers too)
                raise ValueError(f"max_batch_bytes must be a positive int, None or 'auto', got {max_batch_bytes!r}")
            max_batch_bytes = int(max_batch_bytes)
        self.max_batch_bytes = max_batch_bytes

    @property
    def workspace(self) -> Workspace:
        """The calling thread's stacking buffer, made on its first use (a subclass need not call
        ``__init__``): an executor shared by threads stacks each one's points in a buffer of its own
        (with one buffer for all, a thread's round overwrote the points another thread's model was
        still reading)."""
        return _own_workspace(self._threads())

    @workspace.setter
    def workspace(self, ws: Workspace) -> None:
        self._threads().workspace = ws

    def _threads(self) -> threading.local:
        """The holder of each thread's workspace, made on first use (``dict.setdefault``: one for all)."""
        local = self.__dict__.get("_per_thread")
        return local if local is not None else self.__dict__.setdefault("_per_thread", threading.local())

    def close(self) -> None:
        """Release every thread's stacking buffer (made anew on the next call): a round of K large states
        stays allocated between calls otherwise (32 states of 4 MiB with ``max_batch_bytes=None``)."""
        self.__dict__.pop("_per_thread", None)

    def __getstate__(self) -> dict:
        """Pickled and copied without the threads' buffers (scratch, made anew on first use)."""
        return {k: v for k, v in self.__dict__.items() if k != "_per_thread"}

    def points_per_call(self, x: Any) -> int | None:
        """How many points like ``x`` one model call takes (at least 1); ``None``: a whole round."""
        cap = self.max_batch_bytes
        if cap is None:
            return None
        if type(x) is np.ndarray or library(x) == "torch":
            size = x.nbytes
            if isinstance(cap, str):  # "auto": host arrays only (numpy, tensors on the CPU)
                if type(x) is not np.ndarray and not x.is_cpu:
                    return None
                cap = HOST_BATCH_BYTES
        else:  # jax and other arrays: no cap for "auto"
            if isinstance(cap, str):
                return None
            size = _nbytes(x)
        return max(1, cap // max(1, size))

    def stacks_points(self, x: Any) -> bool:
        """True for this class's own ``__call__`` where a call takes more than one point like ``x``; a
        subclass that overrides ``__call__`` may keep or reorder ``xs``, so its points are never handed
        over in the engine's round buffers."""
        if type(self).__call__ is not BatchedExecutor.__call__:
            return False
        m = self.points_per_call(x)
        return m is None or m > 1

    def __call__(self, model: Model, xs: Sequence[Any], ts: Sequence[float]) -> list[Any]:
        """Batched ``model`` calls of at most ``max_batch_bytes`` each (see ``Executor.__call__``). A call
        made from inside the model on the same thread (a model that itself solves on this executor)
        stacks in a buffer of its own: in the thread's, it overwrote the points the outer call's model
        was reading (1.84 off, silently)."""
        local = self._threads()
        if getattr(local, "busy", False):
            return self._call(model, xs, ts, Workspace())
        local.busy = True
        try:
            return self._call(model, xs, ts, _own_workspace(local))
        finally:
            local.busy = False

    def _call(self, model: Model, xs: Sequence[Any], ts: Sequence[float], workspace: Workspace) -> list[Any]:
        m = self.points_per_call(xs[0]) if len(xs) > 1 else None
        if m is None or m >= len(xs):
            return model.evaluate(xs, ts, batched=True, workspace=workspace)
        if m == 1:
            return model.evaluate(xs, ts, batched=False)
        stacked = xs if isinstance(xs, Stacked) else None
        outs: list[Any] = []
        parts: list[Any] = []
        for a in range(0, len(xs), m):
            part = stacked.part(a, a + m) if stacked is not None else xs[a:a + m]
            parts.append(part)
            try:
                outs += model.evaluate(part, ts[a:a + m], batched=True, workspace=workspace)
            except ModelOutputError as e:
                raise e.relabel(a + e.point, str(e), outs + e.done if e.done is not None else None) from None
        if stacked is not None:  # every part passed on as it lies: its outputs were checked against it
            stacked.joined = all(p.joined for p in parts)
        return outs
