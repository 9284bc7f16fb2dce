"""Small helpers shared by test modules (importable: pytest puts this folder on sys.path)."""

from __future__ import annotations

from typing import Any


def rel_err(a: Any, b: Any) -> float:
    """Largest absolute difference of two tensors relative to max(1, |b|)."""
    return float((a - b).abs().max()) / max(1.0, float(b.abs().max()))
