"""Executors evaluate the points of a round. The core ships two; backends add parallel ones.

An executor is a callable ``executor(model, xs, ts) -> outs``: ``xs`` the points (one state each),
``ts`` their float times; it returns the raw model outputs in the same order. It must raise
``ModelOutputError`` (with the point's index) for a bad output, which ``Model.evaluate`` does.
``close()`` releases resources; executors are context managers.
"""

from __future__ import annotations

from typing import Any, Sequence

from .models import Model

__all__ = ["Executor", "SerialExecutor", "BatchedExecutor"]


class Executor:
    """Base class of executors."""

    def __call__(self, model: Model, xs: Sequence[Any], ts: Sequence[float]) -> list[Any]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SerialExecutor(Executor):
    """One model call per point, in core order: the reference semantics, and the minimum memory."""

    def __call__(self, model, xs, ts):
        return model.evaluate(xs, ts, batched=False)


class BatchedExecutor(Executor):
    """All points of a round in one batched call with per-sample times: the single-device mode."""

    def __call__(self, model, xs, ts):
        return model.evaluate(xs, ts, batched=True)
