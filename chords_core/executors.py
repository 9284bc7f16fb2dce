"""Executors evaluate the points of a round. The core ships two; backends add parallel ones.

An executor is a callable ``executor(model, xs, ts) -> outs``: ``xs`` the points (one state each),
``ts`` their float times; it returns the raw model outputs in the same order. It must raise
``ModelOutputError`` (with the point's index) for a bad output, which ``Model.evaluate`` does.
``close()`` releases resources; executors are context managers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._backend import Workspace
from .models import Model

__all__ = ["Executor", "SerialExecutor", "BatchedExecutor"]


class Executor:
    """Base class of executors: evaluate the points of one round. Subclasses implement ``__call__``.

    ``stacks_points``: the executor evaluates a round with one ``model.evaluate(xs, ts, batched=True,
    workspace=...)`` call on the list ``xs`` it is given, so the engine may hand it points that already
    lie stacked in one buffer (``_backend.Stacked``: no stacking copy). False by default.
    """

    stacks_points = False

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
        raise NotImplementedError

    def close(self) -> None:
        """Release the executor's resources (threads, processes); idempotent. No-op by default."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class SerialExecutor(Executor):
    """One model call per point, in core order: the reference semantics, and the minimum memory."""

    def __call__(self, model: Model, xs: Sequence[Any], ts: Sequence[float]) -> list[Any]:
        """One ``model`` call per point, in order (see ``Executor.__call__``)."""
        return model.evaluate(xs, ts, batched=False)


class BatchedExecutor(Executor):
    """All points of a round in one batched call with per-sample times: the single-device mode.

    The stacked points go into a buffer reused from round to round (``Workspace``); a model output
    that shares memory with it is copied. For large rounds the CHORDS engine writes the points
    straight into such a buffer (``stacks_points``), so the model's input is the points themselves.
    A model must not keep a reference to its input, nor modify it.
    """

    workspace: Workspace | None = None  # made on first use (a subclass need not call __init__)

    @property
    def stacks_points(self) -> bool:  # type: ignore[override]
        """True for this class's own ``__call__``; a subclass that overrides it may keep or reorder
        ``xs``, so its points are never handed over in the engine's round buffers."""
        return type(self).__call__ is BatchedExecutor.__call__

    def __call__(self, model: Model, xs: Sequence[Any], ts: Sequence[float]) -> list[Any]:
        """One batched ``model`` call for all points (see ``Executor.__call__``)."""
        if self.workspace is None:
            self.workspace = Workspace()
        return model.evaluate(xs, ts, batched=True, workspace=self.workspace)
