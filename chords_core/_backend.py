"""The few array operations the core needs beyond ``+`` and ``*``, for numpy, torch and jax arrays.

The numerical core only forms linear combinations of arrays with Python-float (float64)
coefficients (``lincomb``), which every array library supports with plain operators. Stacking the
points of a round into one batched model call, building the per-sample time vector and the
finiteness check need library calls; they are dispatched here on the array's type.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

Array = Any


def lincomb(coeffs: Sequence[float], arrays: Sequence[Array]) -> Array:
    """Return sum_k coeffs[k] * arrays[k] as a new array, skipping zero coefficients.

    Coefficients must be Python floats so that a float32 array stays float32 (NEP 50 weak scalars).
    Terms are accumulated in place into the first product where the dtypes agree, so a k-term
    combination allocates about k arrays instead of 2k.

    Args:
        coeffs: the k coefficients, Python floats.
        arrays: the k arrays (numpy, torch or jax), of one shape.

    Returns:
        A new array (never one of ``arrays`` itself) of that shape.
    """
    if len(coeffs) == 2:  # the hot path: a fine step, a jump, a conversion
        (c0, c1), (a0, a1) = coeffs, arrays
        if c1 == 0.0:
            return c0 * a0 if c0 != 1.0 else a0 + 0.0
        if c0 == 0.0:
            return c1 * a1 if c1 != 1.0 else a1 + 0.0
        return axpy(c1, a1, a0) if c0 == 1.0 else add_into(c1 * a1, c0 * a0)
    terms = _terms(coeffs, arrays)
    c, a = terms[0]
    acc = c * a if c != 1.0 else a + 0.0
    for c, a in terms[1:]:
        acc = add_into(acc, a if c == 1.0 else c * a)
    return acc


def _terms(coeffs: Sequence[float], arrays: Sequence[Array]) -> list[tuple[float, Array]]:
    """The (coefficient, array) terms of a combination of three or more arrays in the order ``lincomb``
    forms them: zero coefficients skipped (one zero term kept if all are), a scaled term first."""
    terms = list(zip(coeffs, arrays))
    if coeffs[0] in (0.0, 1.0) or 0.0 in coeffs:  # else the first term is scaled and none is skipped
        terms = [(c, a) for c, a in terms if c != 0.0] or [(0.0, arrays[0])]
        if len(terms) > 1:
            # start from a scaled term (a fresh array we own), then add the rest into it
            k = next((n for n, (c, _) in enumerate(terms) if c != 1.0), 0)
            terms.insert(0, terms.pop(k))
    return terms


#: ``lincombs`` forms its rows in one block only below this many bytes: a larger fresh block page-faults
#: where separate arrays reuse freed memory (the cascade sampler's seeds at 65,536 float32 elements:
#: 3x the page faults, 1.45x the time per round; at 64 and 4,096 elements the block is 5% faster)
LINCOMBS_BLOCK_BYTES = 1 << 18


def lincombs(rows: Sequence[Sequence[float]], arrays: Sequence[Array]) -> list[Array]:
    """``[lincomb(c, arrays) for c in rows]``: several combinations of the same arrays.

    Small numpy arrays of one floating dtype and shape (all rows together below
    ``LINCOMBS_BLOCK_BYTES``) are combined for all rows at once, broadcast over a new leading axis (a
    few array operations in all instead of a few per row), where that is the same operations in the
    same order per element as ``lincomb``'s: no zero coefficient (which ``lincomb`` skips) and, from
    three arrays on, a first coefficient other than 1 (else ``lincomb`` starts from another term).
    So the values are ``lincomb``'s bit for bit; the results are then the rows of one new array.

    Args:
        rows: n coefficient sequences, Python floats, one per array each.
        arrays: the arrays, of one shape.

    Returns:
        The n new arrays.
    """
    a0 = arrays[0]
    if (len(rows) > 1 and type(a0) is np.ndarray and a0.dtype.char in "fd"
            and len(rows) * a0.nbytes < LINCOMBS_BLOCK_BYTES
            and all(type(a) is np.ndarray and a.dtype == a0.dtype and a.shape == a0.shape for a in arrays[1:])
            and all(len(c) == len(arrays) and 0.0 not in c and (len(c) == 2 or c[0] != 1.0) for c in rows)):
        # one column of coefficients per array, in the arrays' dtype (as a Python float meets them)
        cols = np.array(rows, dtype=a0.dtype).T.reshape((len(arrays), len(rows)) + (1,) * a0.ndim)
        # in lincomb's order: two arrays c1 a1 + c0 a0 (axpy's), more c0 a0 + c1 a1 + ... (where both
        # terms are nan, the sum keeps the first one's bits)
        order = (1, 0) if len(arrays) == 2 else range(len(arrays))
        first, *rest = order
        acc = cols[first] * arrays[first]
        for k in rest:
            acc += cols[k] * arrays[k]
        return list(acc)
    return [lincomb(c, arrays) for c in rows]


def lincomb_into(coeffs: Sequence[float], arrays: Sequence[Array], out: Array) -> Array:
    """``lincomb(coeffs, arrays)`` written into ``out``: the same operations in the same order, so the
    same values bit for bit, without a new array for the result.

    Args:
        coeffs: the coefficients, Python floats.
        arrays: the arrays, of one shape.
        out: where to write the result; it must not overlap any of ``arrays``.

    Returns:
        ``out``, or where the arrays do not fit it (``_into_ok``: another type, dtype, shape or device,
        or gradients to record) the new array ``lincomb`` returns.
    """
    if not _into_ok(out, coeffs, arrays):
        return lincomb(coeffs, arrays)
    if len(coeffs) == 2:
        (c0, c1), (a0, a1) = coeffs, arrays
        if c1 == 0.0:
            return _scaled_into(c0, a0, out)
        if c0 == 0.0:
            return _scaled_into(c1, a1, out)
        if c0 == 1.0:
            return _axpy_into(c1, a1, a0, out)
        return add_into(_mul_into(c1, a1, out), c0 * a0)
    terms = _terms(coeffs, arrays)
    c, a = terms[0]
    acc = _scaled_into(c, a, out)
    for c, a in terms[1:]:
        acc = add_into(acc, a if c == 1.0 else c * a)
    return acc


def axpy_into(c: float, a: Array, y: Array, out: Array) -> Array:
    """``axpy(c, a, y)`` written into ``out`` (bit for bit the same values); the new array of ``axpy``
    where the arrays do not fit ``out`` (see ``lincomb_into``)."""
    if not _into_ok(out, (c,), (a, y)):
        return axpy(c, a, y)
    return _axpy_into(c, a, y, out)


# the writes into ``out`` of ``lincomb_into`` and ``axpy_into``, once ``_into_ok`` has said yes
def _axpy_into(c: float, a: Array, y: Array, out: Array) -> Array:
    if type(out) is np.ndarray:  # axpy's numpy path: c * a, then += y
        np.multiply(a, c, out=out)
        out += y
        return out
    if out.is_cpu:  # (as numpy: see axpy)
        return _torch.mul(a, c, out=out).add_(y)
    return _torch.add(y, a, alpha=c, out=out)


def _scaled_into(c: float, a: Array, out: Array) -> Array:
    """``c * a``, or ``a + 0.0`` for c = 1 (as ``lincomb`` forms a first term), written into ``out``."""
    if c != 1.0:
        return _mul_into(c, a, out)
    if type(out) is np.ndarray:
        return np.add(a, 0.0, out=out)
    return _torch.add(a, 0.0, out=out)


def _mul_into(c: float, a: Array, out: Array) -> Array:
    """``c * a`` written into ``out``."""
    if type(out) is np.ndarray:
        return np.multiply(a, c, out=out)
    return _torch.mul(a, c, out=out)


def _into_ok(out: Array, coeffs: Sequence[float], arrays: Sequence[Array]) -> bool:
    """Whether ``lincomb_into`` can write into ``out``: Python-float coefficients, and numpy arrays or
    torch tensors all of ``out``'s type, dtype and shape (and device), none recording gradients."""
    for c in coeffs:
        if type(c) is not float and type(c) is not int:
            return False
    tp, dtype, shape = type(out), out.dtype, out.shape
    if tp is np.ndarray:
        for a in arrays:
            if type(a) is not tp or a.dtype != dtype or a.shape != shape:
                return False
        return True
    if (_LIBRARY.get(tp) or library(out)) != "torch":
        return False
    grad = _torch.is_grad_enabled()
    if grad and out.requires_grad:
        return False
    cpu = out.is_cpu
    device = None if cpu else out.device
    for a in arrays:
        if (type(a) is not tp or a.dtype is not dtype or a.shape != shape or (grad and a.requires_grad)
                or (a.device != device if device is not None else not a.is_cpu)):
            return False
    return True


def subtract_into(a: Array, b: Array, out: Array | None) -> Array:
    """``a - b`` written into ``out`` where all three are numpy arrays of one dtype and shape (``out``
    may be ``a`` or ``b``), else (``out`` None, say) a new array: the same values bit for bit."""
    if (type(out) is np.ndarray and type(a) is np.ndarray and type(b) is np.ndarray and a.dtype == out.dtype
            and b.dtype == out.dtype and a.shape == out.shape and b.shape == out.shape):
        return np.subtract(a, b, out=out)
    return a - b


def add_into(acc: Array, term: Array) -> Array:
    """acc + term, in place in ``acc`` (which the caller owns) when that keeps the result's dtype."""
    if acc.dtype == term.dtype and acc.shape == term.shape:
        acc += term
        return acc
    return acc + term


def axpy(c: float, a: Array, y: Array) -> Array:
    """y + c a as a new array: c a, then y added (one fused multiply-add, ``torch.add(alpha=)``, for
    torch tensors of one dtype on an accelerator, where each operation is a kernel launch; on the CPU
    numpy's two roundings, so that a CPU tensor's run is a numpy array's bit for bit, ``host``)."""
    if type(y) is np.ndarray:  # the hot path: add_into(c * a, y) written out
        acc = c * a
        if acc.dtype == y.dtype and acc.shape == y.shape:
            acc += y
            return acc
        return acc + y
    if (_LIBRARY.get(type(y)) or library(y)) == "torch" and a.dtype == y.dtype and a.shape == y.shape \
            and not y.is_cpu:
        return _torch.add(y, a, alpha=c)
    return add_into(c * a, y)


def add_scaled_into(acc: Array, term: Array, c: float) -> Array:
    """acc + c term, in place in ``acc`` (which the caller owns) where the dtypes allow; ``term`` may
    be scaled in place (the caller owns it too). Fused on an accelerator only (see ``axpy``)."""
    if type(acc) is not np.ndarray and (_LIBRARY.get(type(acc)) or library(acc)) == "torch" \
            and acc.dtype == term.dtype and acc.shape == term.shape and not acc.is_cpu:
        return acc.add_(term, alpha=c)
    if c != 1.0:
        term *= c
    if acc.dtype == term.dtype and acc.shape == term.shape:  # add_into, written out: the hot path
        acc += term
        return acc
    return acc + term


#: a round's stacked points smaller than this are joined into a fresh array (cheaper at small sizes)
WORKSPACE_MIN_BYTES = 1 << 18


_LIBRARY: dict = {}
_torch: Any = None  # the torch module, set by ``library`` once it has met a torch type (never imported here)


def library(x: Array) -> str:
    """'numpy', 'torch' or 'jax', from the array's type."""
    global _torch
    tp = type(x)
    lib = _LIBRARY.get(tp)
    if lib is None:
        mod = tp.__module__.split(".")[0]
        lib = "jax" if mod in ("jaxlib", "jax") else "torch" if mod == "torch" else "numpy"
        if lib == "torch":
            import torch

            _torch = torch
        _LIBRARY[tp] = lib
    return lib


def _joiners(x: Array) -> tuple[Any, Any]:
    """(concatenate, stack) of ``x``'s library, both taking (arrays, axis)."""
    lib = library(x)
    if lib == "torch":
        import torch

        return torch.cat, torch.stack
    if lib == "jax":
        import jax.numpy as jnp

        return jnp.concatenate, jnp.stack
    return np.concatenate, np.stack


def concat(arrays: Sequence[Array]) -> Array:
    """Concatenate along axis 0."""
    return _joiners(arrays[0])[0](list(arrays), 0)


def stack(arrays: Sequence[Array]) -> Array:
    """Stack along a new axis 0."""
    return _joiners(arrays[0])[1](list(arrays), 0)


class Workspace:
    """A buffer reused from round to round for a round's stacked points (numpy and torch): no fresh
    allocation, and so no page faults, per round at large states. The buffer is scratch: a model
    output that shares memory with it is copied (``detach``), so nothing the engine keeps points
    into it. Points that already lie stacked (``Stacked``, the engine's ``RoundBuffers``) are passed
    on as they lie, without a copy."""

    def __init__(self) -> None:
        self._buf: Any = None
        self._layout: Any = None  # (``layout`` of the points, new axis) the buffer was made for
        self._last: Any = None  # the buffer the last join's result lies in (None: a fresh array)
        self.allocations = 0  # buffers allocated so far (one per growth or change of shape / dtype)

    def join(self, arrays: Sequence[Array], new_axis: bool) -> Array:
        """``stack`` (``new_axis``) or ``concat`` of ``arrays`` into the leading rows of the reused
        buffer, grown when a round needs more (a fresh array below ``WORKSPACE_MIN_BYTES``, for jax,
        for tensors that need gradients and for 0-d states); the buffer ``arrays`` already lie in,
        for ``Stacked`` points."""
        if type(arrays) is Stacked:
            joined = arrays.buffer(new_axis)
            if joined is not None:
                self._last = arrays.rows.whole
                return joined
        x0 = arrays[0]
        if type(x0) is np.ndarray and len(arrays) * x0.nbytes < WORKSPACE_MIN_BYTES:  # the hot small case
            self._last = None
            return np.stack(arrays) if new_axis else np.concatenate(arrays)
        lib = _LIBRARY.get(type(x0)) or library(x0)
        # the same for small contiguous tensors (torch.cat makes any other layout but channels_last contiguous)
        if lib == "torch" and len(arrays) * x0.nbytes < WORKSPACE_MIN_BYTES and x0.is_contiguous():
            self._last = None
            return (_torch.stack if new_axis else _torch.cat)(list(arrays), 0)
        join = _joiners(x0)[1 if new_axis else 0]
        if ((len(arrays) * _nbytes(x0) < WORKSPACE_MIN_BYTES and lib != "torch") or lib == "jax"
                or (not new_axis and len(x0.shape) == 0) or (lib == "torch" and _needs_autograd(arrays))):
            self._last = None
            return join(list(arrays), 0)
        n = len(arrays)
        shape = (n, *x0.shape) if new_axis else (n * x0.shape[0], *x0.shape[1:])
        buf, order = self._buf, common_layout(arrays)
        # (the leading rows of a larger buffer are one block only where axis 0 is the outermost: a
        # Fortran-ordered round takes a buffer of its own size)
        if (buf is None or type(buf) is not type(x0) or tuple(buf.shape[1:]) != shape[1:] or buf.shape[0] < shape[0]
                or (buf.shape[0] != shape[0] and order is not None and order[0] != 0 and not new_axis)
                or buf.dtype != x0.dtype or self._layout != (order, new_axis)
                or (lib == "torch" and (buf.device != x0.device or buf.is_inference() != _inference_mode()))):
            buf = self._buf = own_buffer(_empty(shape, x0, new_axis, order))
            self._layout = (order, new_axis)
            self.allocations += 1
        part = buf[: shape[0]]
        join(list(arrays), 0, out=part)
        self._last = buf
        return part

    def detach(self, out: Array) -> Array:
        """``out``, copied if it shares memory with the buffer the last ``join`` put the points in (a
        model that returns its input or a view of it, or works in place)."""
        buf, self._last = self._last, None  # not kept past the call: a Stacked round's buffer is the engine's
        return out if buf is None else unshared(out, buf)


def torch_view(a: np.ndarray) -> Array:
    """A torch tensor on numpy array ``a``'s memory (``torch.from_numpy``; of a copy where ``a`` is
    read-only, which torch would warn of): what a network gets on the host route (``host``)."""
    return _torch.from_numpy(a if a.flags.writeable else a.copy())


def numpy_view(t: Array) -> np.ndarray | None:
    """numpy's view of a float32 / float64 CPU tensor ``t`` (detached; a negative bit resolved, which numpy
    cannot view), on its memory; ``None`` for any other tensor and where numpy can view none (inside a
    ``torch.func`` transform). The one home of this view: sums of CPU tensors (``row_sq``, ``inner``),
    a host-routed run's state and network outputs (``host``)."""
    if not t.is_cpu or t.dtype not in (_torch.float32, _torch.float64):
        return None
    if t.requires_grad:
        t = t.detach()
    try:
        return (t.resolve_neg() if t.is_neg() else t).numpy()  # (is_neg: a tenth of resolve_neg's call)
    except RuntimeError:  # (inside torch.func, numpy views no tensor)
        return None


def plain_numpy_view(t: Array) -> np.ndarray | None:
    """numpy's view of the torch tensor ``t`` where ``Tensor.numpy()`` gives one as it is (a CPU tensor
    of strided layout that needs no gradient, no negative or conjugate bit), else ``None``: one call,
    the host route's common case (``numpy_view`` resolves the rest)."""
    try:
        return t.numpy()
    except Exception:  # (torch's own refusals: RuntimeError, TypeError; left to numpy_view's path)
        return None


def unshared(out: Array, buf: Array) -> Array:
    """``out``, or a copy of it where it shares memory with the numpy array or torch tensor ``buf``."""
    if type(out) is not type(buf):
        return out
    if type(out) is not np.ndarray and library(out) == "torch":
        shared = out.untyped_storage().data_ptr() == buf.untyped_storage().data_ptr()
        return out.clone() if shared else out
    return out.copy() if np.may_share_memory(out, buf) else out


#: a round of at least this many bytes of points is written straight into a buffer of ``RoundBuffers``
#: (no stacking copy) when its executor stacks the points (``Executor.stacks_points``); below it the
#: bookkeeping costs more than the copy saves
ROUND_BUFFER_MIN_BYTES = 1 << 20


class Rows:
    """``n`` consecutive rows of a round buffer from row ``start``: ``buffer`` (n, *S), ``slots`` (one
    point of shape S each, views made once; ``slots`` given from row 0), ``flat`` (n * S[0], *S[1:]: the
    same memory as one concatenation) and ``whole``, the buffer they are part of."""

    __slots__ = ("buffer", "slots", "flat", "whole")

    def __init__(self, whole: Array, slots: list, n: int, start: int = 0) -> None:
        self.whole, self.slots = whole, slots[start:start + n]
        self.buffer = part = whole[start:start + n]
        self.flat = part.reshape((n * int(part.shape[1]), *part.shape[2:]))


class RoundBuffers:
    """Buffers for the rounds' points in turn (numpy arrays, torch tensors with a leading axis), so
    that the engine writes a round's new points where one batched model call reads them: no stacking
    copy, and no new array per point. Round r uses the leading rows of buffer r mod ``depth``; a
    buffer is made for the most points a round has from then on (``capacity``), and made anew when
    that falls to half of it (so the memory falls as cores finish, with few new buffers).

    Reuse is safe for what the engine keeps past ``depth - 1`` rounds only if it copies it out of the
    buffer (``clone``): ``depth`` must exceed the rounds a point stays in use (the evaluations per
    step), and model outputs that alias a buffer are copied (``unshared``).

    Args:
        like: a state: the points' shape, dtype (and device).
        depth: how many buffers are used in turn (at least 2).
    """

    def __init__(self, like: Array, depth: int) -> None:
        self.like, self.depth = like, max(2, depth)
        self._buffers: list[tuple[Array, list, dict[int, Rows]] | None] = [None] * self.depth
        self.allocations = 0  # buffers made so far

    @staticmethod
    def suits(x: Array) -> bool:
        """Whether points like ``x`` can lie in round buffers: a numpy array or a torch tensor with at
        least one axis (jax arrays are immutable) that is not dense in another memory order than C's
        (``layout``). The buffers are C-ordered, as the points the steps make from such states; a
        channels_last or Fortran-ordered state is left to the workspace, which stacks each round in the
        order its points share (``common_layout``): the steps' points take the order of the model's
        outputs, which need not be the state's (buffers in the state's order put a convolution's
        contiguous points in channels_last: 1.5e-4 from the serial executor, a review)."""
        return len(x.shape) >= 1 and (type(x) is np.ndarray or library(x) == "torch") and layout(x) is None

    def take(self, number: int, n: int, capacity: int) -> Rows:
        """The rows of round ``number`` (1-based) for its ``n`` points; ``capacity``: the most points
        of a round from this one on. The rows' contents are stale."""
        k = number % self.depth
        entry = self._buffers[k]
        if entry is None or len(entry[1]) < n or 2 * capacity <= len(entry[1]):
            self._buffers[k] = entry = None  # the old one freed before the new one is made
            buf = own_buffer(_empty((max(n, capacity), *self.like.shape), self.like))
            entry = self._buffers[k] = (buf, list(buf) if type(buf) is np.ndarray else list(buf.unbind(0)), {})
            self.allocations += 1
        rows = entry[2].get(n)
        if rows is None:
            rows = entry[2][n] = Rows(entry[0], entry[1], n)
        return rows


class Stacked(list):
    """A round's points that lie, in order, in the ``Rows`` of a round buffer: a list of its
    ``slots``, which ``Workspace.join`` passes on as the buffer itself. Any other use sees a list.

    ``joined``: whether a workspace passed the buffer on (its user then copies an output that shares
    memory with it: ``Workspace.detach``); else the engine checks the outputs itself (``unshared``)."""

    __slots__ = ("rows", "joined")

    def __init__(self, rows: Rows) -> None:
        super().__init__(rows.slots)
        self.rows = rows
        self.joined = False

    def buffer(self, new_axis: bool) -> Array | None:
        """The rows (``new_axis``: (n, *S)) or their concatenation view ((n * S[0], *S[1:])), or
        ``None`` if the list no longer holds the rows' points in order."""
        rows = self.rows
        slots = rows.slots
        if len(self) != len(slots) or any(p is not s for p, s in zip(self, slots)):
            return None
        self.joined = True
        return rows.buffer if new_axis else rows.flat

    def part(self, a: int, b: int) -> Stacked:
        """Points ``a`` to ``b`` (exclusive) of the round, stacked in the same buffer: a batched call on
        part of the round (``BatchedExecutor`` with ``max_batch_bytes``)."""
        rows = self.rows
        return Stacked(Rows(rows.whole, rows.slots, min(b, len(rows.slots)) - a, a))


def copy_into(out: Array, x: Array) -> bool:
    """Copy ``x`` into ``out`` if it has ``out``'s type, dtype and shape (and device, and records no
    gradient); whether it did."""
    if type(x) is not type(out) or x.dtype != out.dtype or x.shape != out.shape:
        return False
    if type(out) is np.ndarray:
        np.copyto(out, x)
        return True
    if x.device != out.device or (x.requires_grad and _torch.is_grad_enabled()):
        return False
    out.copy_(x)
    return True


def clone(x: Array) -> Array:
    """A copy of ``x`` that owns its memory (numpy and torch; other arrays are immutable)."""
    if type(x) is np.ndarray:
        return x.copy()
    return x.clone() if library(x) == "torch" else x


#: views into arrays smaller than this are kept as they are by ``own`` (pinning them costs little)
OWN_MIN_BYTES = 1 << 20


def own(x: Array) -> Array:
    """``x``, or a copy of it where it is a view into a larger array of at least ``OWN_MIN_BYTES``
    (a point's share of a round's batched output), so that keeping it does not keep the whole
    round's output alive."""
    if type(x) is np.ndarray:
        size = getattr(x.base, "nbytes", 0)
        return x.copy() if size > x.nbytes and size >= OWN_MIN_BYTES else x
    if library(x) == "torch":
        try:
            size = x.untyped_storage().nbytes()
        except (NotImplementedError, RuntimeError):  # (a torch.func transform's tensor: no storage of its own)
            return x
        return x.clone() if size > x.nbytes and size >= OWN_MIN_BYTES else x
    return x  # jax arrays are not views; other array types are left alone


def layout(x: Array) -> tuple[int, ...] | None:
    """The memory order of a dense array ``x`` other than C order: its axes from the outermost to the
    innermost (by stride; a numpy array's axes of one element first, in order), for a numpy array (or subclass) or a
    torch tensor whose elements fill one block without gaps or overlaps (a channels_last tensor, a
    Fortran-ordered or transposed array); ``None`` for a C-contiguous one, for one that is not dense
    (a strided slice, a broadcast or expanded one: zero strides) and for other arrays. It is the
    order ``_empty`` allocates in. (A point's memory order can change a layout-sensitive model's
    rounding: a channels_last network, a reduction over a Fortran-ordered array.)

    A torch tensor's axes of one element keep their place by stride, inside an axis of the same
    stride (torch calls a channels_last tensor of one channel contiguous, yet a convolution reads
    its strides: a review found one evaluated C-ordered 1.5e-5 off in float32), so that ``in_layout``
    rebuilds a point's strides as they were (a batch of one made from an HWC image keeps its
    (4, 1, 20, 4)); numpy's go first. ``common_layout`` puts a one-element axis 0 outermost."""
    if isinstance(x, np.ndarray):
        if x.flags.c_contiguous:
            return None
        strides, unit = x.strides, x.itemsize
        shape = x.shape
        order = tuple(sorted(range(len(shape)), key=lambda a: -math.inf if shape[a] == 1 else -strides[a]))
    elif library(x) == "torch":
        shape = x.shape
        if x.is_contiguous() and 1 not in shape:
            return None
        strides, unit = x.stride(), 1
        order = tuple(sorted(range(len(shape)), key=lambda a: (-strides[a], shape[a] == 1)))
        if order == tuple(range(len(shape))):
            return None
    else:
        return None
    step = unit
    for a in reversed(order):  # dense: each axis's stride is the product of the sizes inside it
        if shape[a] != 1:
            if strides[a] != step:
                return None
            step *= shape[a]
    return order


def common_layout(arrays: Sequence[Array]) -> tuple[int, ...] | None:
    """``layout`` of the arrays where all have the same, else ``None`` (C order): the order points
    are joined in (``Workspace.join``), as ``torch.cat`` keeps a memory format only where its inputs
    share it. A one-element axis 0 counts as outermost here, where ``layout`` places it by stride: a
    round is joined along it (a batch of one made from an HWC image was joined as (H, W, n, C), and
    beside a standard channels_last point C-ordered, a review: 5.7e-6 off ``solve`` at tol 0)."""
    order = _joined(arrays[0])
    if order is not None and any(_joined(a) != order for a in arrays[1:]):
        return None
    return order


def _joined(x: Array) -> tuple[int, ...] | None:
    """``layout(x)`` with a one-element axis 0 moved outermost (``common_layout``)."""
    order = layout(x)
    if order is None or order[0] == 0 or x.shape[0] != 1:
        return order
    order = (0, *(a for a in order if a != 0))
    return None if order == tuple(range(len(order))) else order


def layouts(arrays: Sequence[Array]) -> list[tuple[int, ...] | None] | None:
    """``layout`` of each array, or ``None`` where every one is C-ordered (the common case, one value to
    send): the orders an executor that moves points through C-ordered buffers or messages lays them
    out in again, point by point (a round can mix orders: a C-ordered state's steps with a
    channels_last network's outputs; one order for the round evaluated all of them C-ordered, a
    review: 1.9e-5 off the serial executor with Heun)."""
    out = [layout(a) for a in arrays]
    return None if all(o is None for o in out) else out


def laid_out(rows: Array, orders: Sequence[tuple[int, ...] | None] | None) -> Any:
    """The rows of ``rows`` (stacked C-ordered, as a buffer or a message holds them), each in its
    memory order (``orders``, ``layouts``'); ``rows`` itself where ``orders`` is ``None``."""
    return rows if orders is None else [in_layout(r, order) for r, order in zip(rows, orders)]


def in_layout(x: Array, order: tuple[int, ...] | None) -> Array:
    """``x`` itself for ``order`` None, else a copy of it laid out in the dense memory ``order``
    (``layout``'s: the axes from the outermost to the innermost), a numpy array or a torch tensor."""
    if order is None:
        return x
    out = _empty(tuple(x.shape), x, order=order)
    out[...] = x
    return out


def _empty(shape: tuple, like: Array, new_axis: bool = False, order: tuple[int, ...] | None = None) -> Array:
    """An uninitialised array of ``shape`` with the dtype (and device) of ``like``, in the memory
    ``order`` of points like ``like`` (``layout``; ``None``: C order) joined along axis 0
    (``new_axis``: stacked on a new outermost axis). (Allocated in C order, a round of channels_last
    points reached the model contiguous: 2.3e-5 from ``solve`` at tol 0 through a per-sample
    normalisation, a user trial.)"""
    torch = library(like) == "torch"
    if order is not None:
        if new_axis:
            order = (0, *(a + 1 for a in order))
        base = tuple(shape[a] for a in order)
        back = tuple(int(a) for a in np.argsort(order))
        if torch:
            return _torch.empty(base, dtype=like.dtype, device=like.device).permute(back)
        return np.empty(base, dtype=like.dtype).transpose(back)
    if torch:
        return _torch.empty(shape, dtype=like.dtype, device=like.device)
    return np.empty(shape, dtype=like.dtype)


#: ids of the torch buffers the library's stacking workspaces and round buffers made, while they live:
#: views of them are the library's own, which no other thread writes during a model call (``owned_view``)
_OWNED: set[int] = set()


def own_buffer(buf: Any) -> Any:
    """``buf``, a torch tensor's storage root registered in ``_OWNED`` until it is collected (other
    arrays as they are): a buffer only the library writes, whose views a network's in-place write is
    caught in (``models.input_version``; the stacking workspaces, round buffers and the torch
    backend's worker and serving-rank receive buffers)."""
    if type(buf) is np.ndarray or library(buf) != "torch":
        return buf
    import weakref

    root = buf if buf._base is None else buf._base  # (a permuted buffer: a view of its root)
    _OWNED.add(id(root))
    weakref.finalize(root, _OWNED.discard, id(root))
    return buf


def owned_view(x: Any) -> bool:
    """Whether torch tensor ``x`` is a view of one of the library's own buffers (``_OWNED``)."""
    return id(x._base) in _OWNED


def in_torch_func(*xs: Any) -> bool:
    """Whether the calling thread runs inside a ``torch.func`` transform (grad, vjp, jvp, vmap): its level
    where torch tells it (``maybe_current_level``, torch 2.4 and later), or one of the tensors ``xs`` is a
    transform's (where torch cannot tell, a transform is seen only through its tensors); False where
    torch is not loaded."""
    if _torch is None:
        return False
    func = _torch._C._functorch
    level = getattr(func, "maybe_current_level", None)
    if level is not None and level() is not None:
        return True
    wrapped = getattr(func, "is_functorch_wrapped_tensor", None)
    return wrapped is not None and any(wrapped(x) for x in xs)


def _inference_mode() -> bool:
    import torch

    return torch.is_inference_mode_enabled()


def _needs_autograd(arrays: Sequence[Array]) -> bool:
    """Whether stacking torch tensors must record gradients (``out=`` cannot)."""
    import torch

    return torch.is_grad_enabled() and any(a.requires_grad for a in arrays)


def split_rows(x: Array, n: int) -> list[Array]:
    """Split axis 0 into ``n`` equal consecutive blocks (views where the library has them)."""
    rows = int(x.shape[0]) // n
    lib = "numpy" if type(x) is np.ndarray else library(x)
    if lib == "numpy":
        return list(x.reshape((n, rows) + tuple(x.shape[1:])))
    if lib == "torch":
        return list(x.chunk(n))  # n views of ``rows`` rows each: one call
    return [x[k * rows : (k + 1) * rows] for k in range(n)]


class _NumpyDtypes(dict):
    """torch float32 / float64 -> the numpy dtype (filled on first use, so that importing this module
    does not import torch); other dtypes map to ``None`` (float16: torch rounds a time through float32
    first, numpy directly, so they could differ)."""

    def __missing__(self, key: Any) -> Any:
        import torch

        self.update({torch.float32: np.float32, torch.float64: np.float64})
        return self.setdefault(key, None)


_NUMPY_DTYPES = _NumpyDtypes()


def _host_times(ts: Sequence[float], repeats: int, dtype: Any) -> np.ndarray:
    arr = np.array(ts, dtype=dtype)
    return arr if repeats == 1 else np.repeat(arr, repeats)


#: the attribute of a torch time tensor that ``times_like`` made on the host and moved to the state's
#: device (off the CPU, or a CPU dtype numpy lacks) that holds its values on the host, as float64 numpy
HOST_TIMES = "chords_host_times"


def upload(t: Any, device: Any) -> Any:
    """The host tensor ``t`` on ``device`` without waiting for the device: a copy from pageable host
    memory to a CUDA device waits for the work queued on its stream first (one device synchronisation
    per model call, where the output check promises none), so a CUDA copy goes through pinned memory,
    ``non_blocking`` (the caching host allocator keeps the pinned block until the copy is done)."""
    import torch  # (a torch tensor's: torch is there)

    device = torch.device(device)
    if device.type == "cpu":
        return t
    if device.type == "cuda":
        try:
            t = t.pin_memory()
        except RuntimeError:  # (no pinned memory to be had: the plain copy)
            return t.to(device)
        return t.to(device, non_blocking=True)
    return t.to(device)


def upload_times(t: Any, device: Any) -> Any:
    """The host time tensor ``t`` on ``device`` (``upload``), with its values kept beside it on the host
    (``HOST_TIMES``: float64 numpy of the values it holds, rounded to its dtype), for a network that maps
    times to its own grid and must not read them back from the device (``host_times``)."""
    host = t.double().numpy()
    t = upload(t, device)
    setattr(t, HOST_TIMES, host)
    return t


def host_times(t: Any) -> np.ndarray:
    """The times ``t`` (a model's time argument) as float64 numpy on the host, from the values
    ``times_like`` keeps beside a tensor it uploaded where it has them (no device read; the values the
    tensor holds, rounded to its dtype), else read from ``t`` (a tensor that a network made anew or
    changed in place has no such values, or stale ones: pass the one it was given)."""
    kept = getattr(t, HOST_TIMES, None)
    if kept is not None:
        return kept
    if hasattr(t, "detach"):
        return t.detach().cpu().double().numpy().reshape(-1)
    return np.asarray(t, dtype=np.float64).reshape(-1)


def times_like(ts: Sequence[float], repeats: int, like: Array, exact: bool = False) -> Array:
    """A 1-D array of the times ``ts``, each repeated ``repeats`` times, in ``like``'s library.

    Floating states get times of their own dtype (and device); other states, and any with
    ``exact``, get float64 (jax without x64: float32).
    """
    lib = "numpy" if type(like) is np.ndarray else library(like)
    if lib == "numpy":
        return _host_times(ts, repeats, like.dtype if like.dtype.kind == "f" and not exact else np.float64)
    if lib == "torch":
        torch = _torch
        np_dtype = (np.float64 if exact else _NUMPY_DTYPES[like.dtype]) if like.is_cpu else None
        if np_dtype is not None:  # on the CPU through numpy: a third of torch.tensor's cost, the same values
            return torch.from_numpy(_host_times(ts, repeats, np_dtype))
        dtype = like.dtype if like.dtype.is_floating_point and not exact else torch.float64
        t = torch.tensor(ts, dtype=dtype)  # (made on the host, as torch.tensor(..., device=) makes it too)
        # (with their host values, for a network that maps times to its own grid, the diffusers Denoiser:
        # reading them back from the device would wait for it at every call)
        return upload_times(t if repeats == 1 else t.repeat_interleave(repeats), like.device)
    import jax
    import jax.numpy as jnp

    wide = jnp.float64 if jax.config.read("jax_enable_x64") else jnp.float32  # (the widest jax has here)
    dtype = like.dtype if jnp.issubdtype(like.dtype, jnp.floating) and not exact else wide
    return jnp.repeat(jnp.asarray(ts, dtype=dtype), repeats)


def values_of(x: Array) -> Array:
    """``x``'s values, for reading (no derivative flows through a read): a tensor that requires
    gradients detached; inside a ``torch.func.grad`` / ``vjp`` / ``jvp`` transform, where numpy can view
    no tensor's memory (a transform's wrapper, or a plain tensor: "Cannot access data pointer of
    Tensor that doesn't have storage" from a stop rule), a numpy copy of its values (float64 for
    float64, float32 for other floats, integers as integers: a rare path, and a slow one for large
    states). Inside ``torch.func.vmap`` a ``TypeError`` naming ``x``: its values are those of every
    mapped sample."""
    if type(x) is np.ndarray:
        return x
    if getattr(x, "requires_grad", False):
        x = x.detach()
    if (_LIBRARY.get(type(x)) or library(x)) != "torch":
        return x
    if not in_torch_func(x):
        return x
    func = _torch._C._functorch
    while func.is_functorch_wrapped_tensor(x):
        if func.is_batchedtensor(x):
            raise TypeError("x: a value is read (an output check, a stop rule, a tolerance) under torch.func.vmap, "
                            "where it is every mapped value's at once: map over samples by passing them as the batch "
                            "axis of x; map over anything else (a guidance scale the model reads) with a loop")
        x = func.get_unwrapped(x)
    floating = x.dtype.is_floating_point
    return np.array(x.tolist(), dtype=(np.float64 if x.dtype == _torch.float64 else np.float32) if floating else None)


def all_finite(x: Array) -> bool:
    """True if no element is nan or inf.

    The sum of squares is finite unless an element is nan or inf, or the finite values overflow;
    only a non-finite sum is checked elementwise. numpy: ``vdot`` (one BLAS pass for float32 /
    float64, no temporary, and unlike ``dot`` or a reduction no floating-point warning on
    overflow); torch tensors on the CPU: the same on numpy's view of them; elsewhere ``dot`` above
    4,096 elements, one reduction below.
    """
    if type(x) is np.ndarray and x.dtype.char in "fd":  # the hot path
        v = x.reshape(-1) if x.flags.c_contiguous else x.ravel("K")  # a view where the layout allows
        return math.isfinite(np.vdot(v, v)) or bool(np.isfinite(x).all())
    lib = library(x)
    if lib == "torch":
        torch = _torch
        if not x.is_cpu or x.dtype not in (torch.float32, torch.float64):
            x = values_of(x)
            if type(x) is np.ndarray:  # (under torch.func: a copy of its values)
                return all_finite(x)
        if x.dtype in (torch.float32, torch.float64):
            if x.is_cpu:  # numpy's view of it: one BLAS pass (vdot), cheaper than torch's at every size
                try:
                    return all_finite((x.detach() if x.requires_grad else x).numpy())
                except (RuntimeError, TypeError, ValueError):  # a tensor numpy cannot view: a negative bit, or
                    v = values_of(x)  # inside torch.func (then a copy of its values)
                    if type(v) is np.ndarray:
                        return all_finite(v)
            if x.numel() > 4096:
                v = x.reshape(-1)  # one BLAS pass, no boolean temporary
                if math.isfinite(float(torch.dot(v, v))):
                    return True
            elif math.isfinite(float(x.sum())):  # a small tensor: one reduction
                return True
        return bool(torch.isfinite(x).all())
    if lib == "jax":
        import jax.numpy as jnp

        return bool(jnp.isfinite(x).all())
    return bool(np.isfinite(x).all())


def on_accelerator(x: Array) -> bool:
    """True for a torch tensor on a device other than the CPU (reading a value back from it waits
    for the device to finish its queued work)."""
    return type(x) is not np.ndarray and library(x) == "torch" and not x.is_cpu


def finite_flags(outs: Sequence[Array]) -> Array:
    """One boolean per array, True where it has no nan or inf, computed where the arrays live
    (a torch tensor on the device: nothing is read back)."""
    if library(outs[0]) == "torch":
        import torch

        return torch.stack([torch.isfinite(o).all() for o in outs])
    return np.array([all_finite(o) for o in outs])


def to_host(x: Array) -> np.ndarray:
    """``x`` as a numpy array on the host (one transfer for a torch tensor on a device)."""
    if library(x) == "torch":
        return x.cpu().numpy()
    return np.asarray(x)


def is_floating(x: Array) -> bool:
    """True if ``x`` has a real floating dtype (numpy, torch or jax)."""
    if library(x) == "torch":
        return bool(x.dtype.is_floating_point)
    dt = np.dtype(x.dtype)
    return dt.kind == "f" or dt.name == "bfloat16"  # ml_dtypes' bfloat16 (jax's) has kind 'V' in numpy


def cast_like(x: Array, like: Array) -> Array:
    """``x`` in the dtype of ``like`` (no copy when it already is): a float32 state stays float32
    whatever precision the model computes in."""
    if x.dtype == like.dtype:
        return x
    lib = library(x)
    if lib == "torch":
        return x.to(like.dtype)
    return x.astype(like.dtype)


def minimum(a: Array, b: Array) -> Array:
    """Elementwise minimum of two arrays (or Python floats) of one library."""
    if isinstance(a, float) and isinstance(b, float):
        return min(a, b)
    lib = "numpy" if type(a) is np.ndarray else library(a)
    if lib == "torch":
        import torch

        return torch.minimum(a, b)
    if lib == "jax":
        import jax.numpy as jnp

        return jnp.minimum(a, b)
    return np.minimum(a, b)


try:  # einsum's C core: np.einsum(..., optimize=False) calls it after a dispatch that costs as much at small sizes
    from numpy._core.multiarray import c_einsum as _c_einsum
except ImportError:  # another numpy layout: the public function, the same result
    _c_einsum = np.einsum


def _single_or_wider(x: Array) -> Array:
    """``x``, with half-precision values (float16, bfloat16) in float32: their sums of squares
    overflow from about 65,504 (a state of that many unit values) and a tiny guard added to them
    underflows."""
    if getattr(x.dtype, "itemsize", 4) < 4:
        return x.float() if library(x) == "torch" else x.astype(np.float32)
    return x


#: float32 sums of squares (and inner products) outside [_SQ32_LO, _SQ32_HI] in magnitude are formed
#: again in float64: below, the squares of elements under about 1e-19 leave float32's normal range (all 0
#: from about 1e-23: a state of 1e-20 scored every change as converged); above, they overflow to inf
_SQ32_LO, _SQ32_HI = 1e-30, 1e38
#: numpy float64 sums of squares outside [_SQ64_LO, _SQ64_HI] are formed again in ``np.longdouble``
#: where it is wider (x86: 80-bit, to about 1e4932; elsewhere often float64 itself): states below about
#: 1e-150 or above 1e150, whose squares leave float64's range (the cascade sampler accepted
#: unconverged points there: 56x the sequential error at 3e-157)
_SQ64_LO, _SQ64_HI = 1e-290, 1e300
_WIDE64 = np.longdouble if np.finfo(np.longdouble).max > np.finfo(np.float64).max else None
_TINY64 = float(np.finfo(np.float64).tiny)
#: numpy dtype char -> (safe low, safe high, the wider dtype a sum out of them is formed in again)
_SAFE = {"f": (_SQ32_LO, _SQ32_HI, np.float64), "d": (_SQ64_LO, _SQ64_HI, _WIDE64)}


def square(v: float, like: Array = None) -> Any:
    """``v * v`` for a tolerance ``v`` >= 0 compared with ``row_sq``'s sums of a state like ``like``:
    a Python float, or where that leaves float64's normal range:

    - overflowed (an inf tol^2 accepted every change of a state beyond about 1e154): ``np.longdouble``
      if it is wider, else the largest float; a sum that overflowed to inf stays over either;
    - underflowed (a tol^2 of 0 is tol 0, exact): ``np.longdouble`` where ``row_sq`` forms the sums of
      ``like`` in it too (numpy arrays and torch tensors on the CPU); else the float (a jax array's or
      a CUDA tensor's sums underflow to 0 as well, which a positive tol^2 would accept: tol 0, exact,
      is the safe side).
    """
    sq = v * v
    if _TINY64 <= sq < math.inf or v == 0:
        return sq
    over = sq == math.inf
    if _WIDE64 is not None and (over or type(like) is np.ndarray or (library(like) == "torch" and like.is_cpu)):
        return _WIDE64(v) * _WIDE64(v)
    return np.finfo(np.float64).max if over else sq


def _float32(x: Array) -> bool:
    return str(getattr(x, "dtype", "")) in ("float32", "torch.float32")


def _as64(x: Array, host: bool = False) -> Array:
    """``x`` in float64; a jax array where x64 is disabled: itself, or with ``host`` a numpy copy (for a
    value read back anyway: ``rms`` / ``inner``)."""
    if type(x) is np.ndarray:
        return x.astype(np.float64)
    lib = library(x)
    if lib == "torch":
        return x.double()
    if lib == "jax":
        import jax

        if jax.config.read("jax_enable_x64"):
            return x.astype("float64")
        return np.asarray(x, np.float64) if host else x
    return np.asarray(x, np.float64)


def _unsafe(s: float) -> bool:
    """A float32 sum of squares / products that may have overflowed or lost its small terms."""
    return not abs(s) < _SQ32_HI or abs(s) < _SQ32_LO


def inner(a: Array, b: Array) -> float:
    """sum(a * b) over every element, as a Python float: half precision multiplied and summed in
    float32 (its products overflow from about 256), float32 again in float64 where the sum is out of
    float32's safe range (``_SQ32_LO``), a tensor that requires gradients read without them (no
    autograd warning, no graph)."""
    # (CPU tensors summed on numpy's views, as numpy sums: a torch sum's order gave the Anderson mixing's
    # weights other last bits than a numpy state's; others detached before widening: .float() on a tensor
    # that requires gradients records a step)
    if hasattr(a, "detach"):
        a = _viewed(a)
    if hasattr(b, "detach"):
        b = _viewed(b)
    return _sum_products(_single_or_wider(a), _single_or_wider(b))


def _viewed(t: Array) -> Array:
    """``numpy_view(t)`` where there is one, else ``t`` detached."""
    v = numpy_view(t) if library(t) == "torch" else None
    return t.detach() if v is None else v


def _sum_products(a: Array, b: Array) -> float:
    """sum(a * b) as a Python float (numpy: BLAS ``vdot``, no temporary and no floating-point warning
    where float32 overflows); a float32 sum out of ``[_SQ32_LO, _SQ32_HI]`` (nan included: products
    overflowing both ways sum to inf - inf) formed again in float64, unless ``a`` is all zeros."""
    if type(a) is np.ndarray and type(b) is np.ndarray and a.dtype.char in "fd":
        s = float(np.vdot(a, b))
    else:
        s = float((a * b).sum())
    if _unsafe(s) and _float32(a) and (s != 0 or bool(a.any())):
        s = float((_as64(a, True) * _as64(b, True)).sum())
    return s


#: numpy float32 / float64 samples of at least this many elements are summed one ``vdot`` a sample
#: (``row_sq``); smaller ones in one ``einsum`` over the batch
ROW_VDOT_MIN = 8192


def row_sq(d: Array) -> Array:
    """Per-sample sum of squares over all but the leading (batch) axis; a 0-d value for a state
    without a batch axis (1-D or 0-d). numpy: one pass without a temporary, a BLAS ``vdot`` per
    sample for one sample or samples of ``ROW_VDOT_MIN`` elements and more (about 3x einsum's speed
    there, and like einsum no floating-point warning on overflow). Half precision is summed in
    float32 (``_single_or_wider``); float32 gives float64 sums (a sample whose float32 sum overflowed
    or is below ``_SQ32_LO`` is summed again in float64); a float64 sample whose sum is out of
    ``[_SQ64_LO, _SQ64_HI]`` is summed again in ``np.longdouble`` where that is wider (the result is
    then a longdouble array). A torch tensor on the CPU is summed so on numpy's view of it (the
    result is a numpy array: torch has no wider type than float64); on CUDA, float32 in one float64
    reduction (no read back) and float64 as it is; on a device without float64 (MPS) in float32
    (``_row_sq32_device``)."""
    d = _single_or_wider(d)
    if type(d) is not np.ndarray and library(d) == "torch" and d.is_cpu and d.dtype in (_torch.float32, _torch.float64):
        v = numpy_view(d)
        if v is not None:
            return _row_sq_checked(v)
        d = values_of(d)  # (inside torch.func, numpy views no tensor: a copy of its values)
    if type(d) is np.ndarray and d.dtype.char in "fd":
        return _row_sq_checked(d)
    if _float32(d):
        if library(d) == "torch":
            return _row_sq32_device(d)
        return _row_sq(_as64(d))  # jax (float32 where x64 is off) and others
    return _row_sq(d)


def _row_sq32_device(d: Any) -> Any:
    """``row_sq`` of a float32 tensor on an accelerator, in float64 (as numpy's: the floor
    ``smallest_normal`` of the window methods follows the sums' dtype) where the device has it (CUDA:
    one float64 reduction, no read back); elsewhere (MPS has no float64) in float32."""
    if d.device.type == "cuda":
        norm = _torch.linalg.vector_norm(d.flatten(1) if len(d.shape) > 1 else d.reshape(-1), dim=-1,
                                         dtype=_torch.float64)
        return norm * norm
    return _row_sq(d)


def _row_sq(d: Array) -> Array:
    if len(d.shape) <= 1:
        return np.vdot(d, d) if type(d) is np.ndarray and d.dtype.char in "fd" else (d * d).sum()
    flat = d.reshape(d.shape[0], -1) if d.shape[0] else d.reshape(0, 0)  # (an empty batch: no -1 to infer)
    if type(flat) is np.ndarray and flat.dtype.char in "fd":
        n = flat.shape[0]
        if n == 1:
            return np.vdot(flat, flat).reshape(1)
        if n and flat.shape[1] >= ROW_VDOT_MIN:
            out = np.empty(n, flat.dtype)
            for i in range(n):
                row = flat[i]
                out[i] = np.vdot(row, row)
            return out
    if type(flat) is np.ndarray or library(flat) == "numpy":
        einsum = _c_einsum if type(flat) is np.ndarray else np.einsum  # others may dispatch (__array_function__)
        return einsum("ij,ij->i", flat, flat)
    return (flat * flat).sum(1)


def _in_range(out: np.ndarray, lo: float, hi: float) -> bool:
    """Whether every value of ``out`` lies in (lo, hi) (nan: no)."""
    if out.size <= 32:  # (a few values: faster as Python floats than as two reductions)
        vals = out.tolist() if out.ndim else [float(out)]
        return not vals or (lo < min(vals) and max(vals) < hi)
    return bool(np.minimum.reduce(out, axis=None) > lo and np.maximum.reduce(out, axis=None) < hi)


def _row_sq_checked(d: np.ndarray) -> Any:
    """``row_sq`` of a numpy float32 / float64 state, samples out of their dtype's safe range summed
    again wider (float32 in float64, float64 in ``_WIDE64``); float32 gives float64 values. All-zero
    samples (a change that is exactly none) sum to 0 in any precision and are left alone."""
    out = _row_sq(d)
    if d.dtype.char == "f":
        out = np.asarray(out, np.float64)
    lo, hi, wide = _SAFE[d.dtype.char]
    if wide is None or _in_range(out, lo, hi):
        return out
    rows = d.reshape(d.shape[0], -1) if d.ndim > 1 and d.shape[0] else d.reshape(1, -1)
    flat = np.reshape(out, -1)
    bad = ~((flat > lo) & (flat < hi))
    zero = bad & (flat == 0)
    if zero.any():
        bad[zero] = rows[zero].any(axis=1)
    if not bad.any():
        return out
    idx = np.flatnonzero(bad)
    w = rows[idx].astype(wide)
    out = np.array(out, wide)
    out.reshape(-1)[idx] = np.einsum("ij,ij->i", w, w)
    return out


def row_sq_host(d: Array) -> np.ndarray:
    """``row_sq`` of any array as a 1-d numpy array on the host (one value for a 0-d or 1-d state),
    every sample's sum formed in a type wide enough for it: numpy arrays and torch tensors on the CPU
    as ``row_sq`` forms them; others (jax arrays, tensors on a device) summed where they live, and
    summed again on the host as numpy's where a sum is out of its dtype's safe range or 0 (a jax
    float32 sum with x64 off, a CUDA float64 one: they are not widened where they live)."""
    d = values_of(d)
    sq = row_sq(d)
    if type(sq) is not np.ndarray and library(sq) == "torch":
        sq = sq.cpu().numpy()
    sq = np.reshape(np.asarray(sq), -1)
    host = type(d) is np.ndarray or (library(d) == "torch" and d.is_cpu)
    if host or sq.dtype.char not in _SAFE:
        return sq
    lo, hi, _ = _SAFE[sq.dtype.char]
    if _in_range(sq, lo, hi):
        return sq
    return np.reshape(np.asarray(row_sq(_single_or_wider(np.asarray(to_host(d))))), -1)


def row_sq_read(d: Array) -> Any:
    """``row_sq`` of a value the caller reads on the host at once (a window method's scores): a numpy
    array's as ``row_sq`` gives it; any other array's as ``row_sq_host`` (out-of-range sums formed
    again on the host), float32 sums as float64, as numpy's. (A jax float32 state with x64 off summed
    its squares in float32, where a state of 1e-20 underflowed to 0: the cascade sampler accepted a
    point that had moved and returned 0.74 of the sequential answer, a user trial.)"""
    if type(d) is np.ndarray:
        return row_sq(d)
    sq = row_sq_host(d)
    return sq.astype(np.float64) if sq.dtype == np.float32 else sq


def row_sq_one(d: np.ndarray) -> Any:
    """``row_sq(d)[0]`` for a numpy array of one sample (``d.shape[0] == 1``), as a numpy scalar: the
    same value (one ``vdot`` over the same elements), without the reshapes and checks around it,
    which cost more than the sum itself on small states (the window methods score every point)."""
    if d.dtype.char in "fd":
        s = np.vdot(d, d)
        lo, hi, _ = _SAFE[d.dtype.char]
        if lo < s < hi or (s == 0 and not d.any()):
            return np.float64(s)
        return _row_sq_checked(d)[0]
    return row_sq(d)[0]


def rms(x: Array) -> float:
    """Root mean square over all elements, as a Python float (of a tensor's value: no autograd);
    16-bit floats are summed in float32 (``_single_or_wider``), float32 again in float64 where its
    sum is out of float32's safe range (``_SQ32_LO``), float64 of x scaled by a power of two where
    its sum is out of ``[_SQ64_LO, _SQ64_HI]``."""
    x = _single_or_wider(values_of(x))
    n = _numel(x)
    if not n:
        return 0.0  # (an empty batch)
    sq = _sum_products(x, x)
    if not _SQ64_LO < sq < _SQ64_HI and sq == sq and not _float32(x) and bool((x != 0).any()):
        # float64 squares out of range (a state beyond about 1e+-150 squared to 0 or inf): the RMS of x
        # scaled by a power of two near 1 / max|x| (exact), scaled back
        top = float(abs(x).max())
        if math.isfinite(top):
            k = math.frexp(top)[1]
            y = x * 2.0 ** -(k // 2) * 2.0 ** -(k - k // 2)  # (in two factors: 2^1029 alone overflows)
            try:
                return math.ldexp((_sum_products(y, y) / n) ** 0.5, k)
            except OverflowError:  # (values within ulps of the largest float: an RMS that rounds past it)
                return math.inf
    return (sq / n) ** 0.5


def _finfo(x: Array) -> Any:
    """The ``finfo`` of ``x``'s floating dtype, from its own library."""
    if type(x) is not np.ndarray and library(x) == "torch":
        return _torch.finfo(x.dtype)
    if type(x) is not np.ndarray and library(x) == "jax":
        import jax.numpy as jnp

        return jnp.finfo(x.dtype)
    return np.finfo(x.dtype)


def eps(x: Array) -> float:
    """The machine epsilon of ``x``'s floating dtype, as a Python float."""
    return float(_finfo(x).eps)


def smallest_normal(x: Array) -> Any:
    """The smallest positive normal number of ``x``'s floating dtype, as a Python float (a
    ``np.longdouble`` for ``np.longdouble``, whose smallest normal a float would round to 0)."""
    tiny = _finfo(x).tiny
    return tiny if type(tiny) is np.longdouble else float(tiny)


def _nbytes(x: Array) -> int:
    """Bytes of an array's elements (0 where its type does not say)."""
    if type(x) is np.ndarray:
        return x.nbytes
    size = getattr(getattr(x, "dtype", None), "itemsize", None)
    return _numel(x) * size if isinstance(size, int) else 0


def _numel(x: Array) -> int:
    n = 1
    for s in x.shape:
        n *= int(s)
    return n
