"""The array operations of ``_backend`` that the engines' hot paths use: ``lincombs`` (several
combinations of the same arrays at once) and ``row_sq`` (per-sample sums of squares)."""

from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from chords_core import _backend as B


def _bits(a) -> bytes:
    a = a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    return a.dtype.str.encode() + str(a.shape).encode() + a.tobytes()


ROWS = {
    "two, scaled": [(0.9, 0.1), (0.5, -0.25), (0.3, 2.0)],
    "two, first 1": [(1.0, 0.25), (1.0, -3.0)],
    "three": [(0.7, 0.4, -0.1), (0.5, 1.0, 1.0), (-2.0, 0.3, 0.2)],
    "three, first 1 (lincomb reorders)": [(1.0, 0.5, 0.25), (0.5, 0.5, 0.5)],
    "a zero (lincomb skips it)": [(0.9, 0.0), (0.5, 0.5)],
    "one row": [(0.25, 0.75, -1.0)],
}


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rows", list(ROWS))
@pytest.mark.parametrize("shape", [(1, 64), (3, 5, 7), (1, 40_000)])  # the last: above the block size
def test_lincombs_equal_lincomb_row_by_row_bit_for_bit(lib, dtype, rows, shape):
    rows = ROWS[rows]
    rng = np.random.default_rng(len(rows))
    arrays = [rng.standard_normal(shape).astype(dtype) for _ in rows[0]]
    for a in arrays:
        a.reshape(-1)[:4] = (-0.0, 0.0, -0.0, 1e-30)  # signed zeros: a + 0.0 and 1.0 * a differ there
    arrays[0].reshape(-1)[4] = np.inf  # non-finite values propagate as lincomb's do
    arrays[-1].reshape(-1)[5] = np.nan
    for k, a in enumerate(arrays):  # nan in every term, of either sign: the sum keeps the first term's bits
        a.reshape(-1)[6] = -np.nan if k % 2 else np.nan
    if lib == "torch":
        arrays = [torch.from_numpy(a) for a in arrays]
    got = B.lincombs(rows, arrays)
    want = [B.lincomb(c, arrays) for c in rows]
    assert len(got) == len(rows)
    for g, w in zip(got, want):
        assert _bits(g) == _bits(w)
    assert all(g is not a for g in got for a in arrays)  # new arrays, never an input


def test_lincombs_form_small_numpy_rows_in_one_block_and_large_ones_apart():
    small = [np.ones((1, 64), np.float32), np.ones((1, 64), np.float32)]
    got = B.lincombs([(0.5, 0.5), (0.25, 0.75)], small)
    assert got[0].base is not None and got[0].base is got[1].base  # rows of one block
    n = B.LINCOMBS_BLOCK_BYTES // 4  # two rows of this many float32 elements: past the block size
    large = [np.ones((1, n), np.float32), np.ones((1, n), np.float32)]
    got = B.lincombs([(0.5, 0.5), (0.25, 0.75)], large)
    assert got[0].base is None and got[1].base is None  # separate arrays (a large block page-faults)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(1, 64), (1, 70_000), (4, 9000), (5, 64), (2, 3, 4, 5), (3,), ()])
def test_row_sq_is_the_per_sample_sum_of_squares(dtype, shape):
    x = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    got = B.row_sq(x)
    flat = x.astype(np.float64).reshape(shape[0], -1) if len(shape) > 1 else x.astype(np.float64).reshape(1, -1)
    want = (flat * flat).sum(1)
    if len(shape) <= 1:
        assert np.ndim(got) == 0
        want = want[0]
    else:
        assert got.shape == (shape[0],)
    assert got.dtype == np.float64  # (float32: float64 sums, ``test_row_sq_of_float32_beyond_its_range``)
    rtol = 1e-5 if dtype == "float32" else 1e-13
    np.testing.assert_allclose(got, want, rtol=rtol)
    t = B.row_sq(torch.from_numpy(x))  # a tensor on the CPU: numpy's values (a float32 sum set the window
    assert type(t) is type(got) and np.array_equal(t, got)  # methods' floor at 1.2e-38), summed on its view


@pytest.mark.parametrize("shape", [(1, 64), (1, 70_000), (3, 9000), (3, 64)])
def test_row_sq_propagates_nan_and_overflows_to_inf_without_a_warning(shape):
    x = np.ones(shape, np.float32)
    x[-1, 3] = np.nan
    got = B.row_sq(x)
    assert np.isnan(got[-1]) and (shape[0] == 1 or np.isfinite(got[0]))
    y = np.full(shape, 1e200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "overflow encountered" warning: inf, or the sum in a wider type
        got = B.row_sq(y)
        assert np.isinf(got).all() if B._WIDE64 is None else np.allclose((got / (np.longdouble(1e200) ** 2 * shape[1])).astype(float), 1.0)


@pytest.mark.parametrize("scale", [1e-25, 1e-20, 1e21, 1e30])
@pytest.mark.parametrize("shape", [(1, 64), (1, 70_000), (3, 9000), (3, 64), (64,), (40, 3)])
def test_float32_sums_of_squares_beyond_float32s_range(scale, shape):
    """A float32 state of 1e-20 squared to 0 (every change scored as converged: 19x the sequential
    error in the cascade sampler), one of 1e21 overflowed (the same): sums of squares, RMS and inner
    products of float32 are float64 values, exact to float32 rounding at any scale."""
    x = (np.random.default_rng(2).standard_normal(shape) * scale).astype(np.float32)
    x64 = x.astype(np.float64)
    flat = x64.reshape(shape[0], -1) if len(shape) > 1 else x64.reshape(1, -1)
    want = (flat * flat).sum(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = B.row_sq(x)
        np.testing.assert_allclose(np.reshape(got, -1), want, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(B.row_sq(torch.from_numpy(x))).reshape(-1), want, rtol=1e-5)
        if shape[0] == 1:
            np.testing.assert_allclose(B.row_sq_one(x), want[0], rtol=1e-5)
        with jax.enable_x64(False):  # (jax's default: no float64 on the device, the sums read back in float64)
            for arr in (x, torch.from_numpy(x), jnp.asarray(x)):
                assert B.rms(arr) == pytest.approx(float(np.sqrt(np.mean(x64 ** 2))), rel=1e-5)
                assert B.inner(arr, arr) == pytest.approx(float(want.sum()), rel=1e-5)
    z = np.zeros(shape, np.float32)
    assert B.rms(z) == 0.0 and np.all(np.reshape(B.row_sq(z), -1) == 0)


def test_row_sq_of_an_empty_batch_and_of_half_precision():
    assert B.row_sq(np.ones((0, 5), np.float32)).shape == (0,)
    h = np.full((2, 70_000), 2.0, np.float16)  # 280,000 in float16 would overflow: summed in float32
    got = B.row_sq(h)
    assert got.dtype == np.float64 and np.allclose(got, 280_000.0)


@pytest.mark.skipif(B._WIDE64 is None, reason="np.longdouble is no wider than float64 on this platform")
@pytest.mark.parametrize("scale", [1e-160, 1e-200, 1e160])
@pytest.mark.parametrize("shape", [(1, 64), (3, 9000), (3, 64), (64,), (40, 3)])
def test_float64_sums_of_squares_beyond_float64s_range_are_wider(scale, shape):
    """A float64 state of 3e-157 squared to subnormals and 0 (the cascade sampler then took 56x the
    sequential error): such samples are summed in np.longdouble, exact to float64 rounding."""
    x = np.random.default_rng(3).standard_normal(shape) * scale
    wide = x.astype(np.longdouble)
    flat = wide.reshape(shape[0], -1) if len(shape) > 1 else wide.reshape(1, -1)
    want = (flat * flat).sum(1)
    got = np.reshape(B.row_sq(x), -1)
    assert got.dtype == np.longdouble
    np.testing.assert_allclose((got / want).astype(np.float64), 1.0, rtol=1e-12)
    if shape[0] == 1:
        assert float(B.row_sq_one(x) / want[0]) == pytest.approx(1.0, rel=1e-12)
    assert B.row_sq(np.ones(shape)).dtype == np.float64  # in range: float64, no second pass


@pytest.mark.parametrize("scale", [2.0 ** -600, 2.0 ** -1060, 2.0 ** 600, 2.0 ** 1000])
def test_the_rms_of_float64_beyond_its_squares_range(scale):
    """A user trial: the RMS of a float64 state below about 1e-155 was 0 (its squares underflow; the
    stop rules' rounding floor, ``agreement_floor``, then 0) and above about 1e155 inf: it is the RMS of
    the state scaled by a power of two, scaled back, on every platform (no wider type needed)."""
    x = np.random.default_rng(4).standard_normal((3, 40))
    want = float(np.sqrt(np.mean(x * x)))
    for arr in (x * scale, torch.from_numpy(x * scale), jnp.asarray(x * scale) if jax.config.read("jax_enable_x64")
                else None):
        if arr is not None:
            got = B.rms(arr)
            assert got == pytest.approx(want * scale, rel=1e-12 if scale > 2.0 ** -1000 else 1e-3)
    assert B.rms(np.array([np.inf, 1.0])) == math.inf and math.isnan(B.rms(np.array([np.nan, 1e-300])))
    assert B.rms(np.full(7, np.finfo(np.float64).max)) == math.inf  # (a review: an OverflowError)


def test_sums_of_squares_of_empty_batches_and_mixed_sign_overflows():
    """A review: the float32 torch path dropped the empty-batch case (a raw reshape error in the
    window methods); float32 products overflowing both ways summed to nan (inf - inf), not recomputed."""
    for x in (torch.zeros(0, 5), torch.zeros(0, 5).half(), np.zeros((0, 5), np.float32)):
        assert tuple(B.row_sq(x).shape) == (0,)
    a = np.array([1e20, 1e20], np.float32)
    b = np.array([1e20, -1e20], np.float32)
    assert B.inner(a, b) == 0.0 and B.inner(torch.from_numpy(a), torch.from_numpy(b)) == 0.0


def test_a_network_asking_for_exact_times_gets_float64_times_in_every_library():
    """``fn.exact_times``: a network that maps times to its own grid (chords_diffusers' denoiser) gets
    float64 times whatever the state's dtype; others get the state's dtype, as before."""
    import chords_core as cc

    seen = []

    class Net:
        exact_times = True

        def __call__(self, x, t):
            seen.append(str(t.dtype))
            return x * 0

    def plain(x, t):
        seen.append(str(t.dtype))
        return x * 0

    rf = cc.RectifiedFlow()
    grid = cc.time_grid(rf, 2)
    for x in (np.zeros((1, 2), np.float32), torch.zeros(1, 2, dtype=torch.bfloat16), jnp.zeros((1, 2), jnp.float32)):
        seen.clear()
        cc.solve(cc.DiffusionModel(Net(), rf, "flow"), x, grid)
        assert set(seen) in ({"float64"}, {"torch.float64"}) or (set(seen) == {"float32"} and "jax" in type(x).__module__)
        seen.clear()
        cc.solve(cc.DiffusionModel(plain, rf, "flow"), x, grid)
        assert set(seen) == {str(x.dtype)}


def test_a_batched_vector_field_asking_for_exact_times_gets_the_unbatched_times():
    """A user trial: a batched ``VectorField`` got its times in the state's dtype, an unbatched one
    Python floats, so a time-dependent float32 field gave other values batched; ``f.exact_times``
    (as ``DiffusionModel`` takes it) gives float64 times, the unbatched values, bit for bit."""
    import chords_core as cc

    def f(t, y):
        t = np.reshape(np.asarray(t, np.float64), np.shape(t) + (1,) * (np.ndim(y) - np.ndim(t)))
        return (np.sin(37.0 * t) - y).astype(y.dtype)

    exact = lambda t, y: f(t, y)  # noqa: E731
    exact.exact_times = True
    grid = np.linspace(0.0, 1.0, 9) * (1 + 1e-7)  # (times float32 rounds)
    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    one = cc.chords(cc.VectorField(f), x, grid, "heun", cores=3, stop=None).x
    got = cc.chords(cc.VectorField(exact, batched=True), x, grid, "heun", cores=3, stop=None).x
    rounded = cc.chords(cc.VectorField(f, batched=True), x, grid, "heun", cores=3, stop=None).x
    assert np.array_equal(got, one) and not np.array_equal(rounded, one)


def test_times_on_an_accelerator_keep_their_host_values():
    """``times_like`` for a tensor off the CPU (the meta device stands in for a GPU here): the times
    made on the host and uploaded (``upload``: through pinned memory, non-blocking, on CUDA), their
    float64 values kept beside them, so that a network mapping times to its grid (the diffusers
    Denoiser) reads them without a device read (``host_times``, which a meta tensor would refuse)."""
    like = torch.empty(3, 2, device="meta", dtype=torch.bfloat16)
    for exact, dtype in ((False, torch.bfloat16), (True, torch.float64)):
        t = B.times_like([0.25, 0.5], 3, like, exact)
        assert t.device.type == "meta" and t.dtype == dtype and t.shape == (6,)
        np.testing.assert_array_equal(B.host_times(t), [0.25] * 3 + [0.5] * 3)
    # the values the tensor holds, rounded to its dtype (a bfloat16 state on the CPU takes this path too)
    t = B.times_like([0.3, 0.7], 2, torch.zeros(2, 2, dtype=torch.bfloat16))
    assert t.dtype == torch.bfloat16 and B.host_times(t).tolist() == t.double().tolist() != [0.3, 0.3, 0.7, 0.7]
    cpu = B.times_like([0.25, 0.5], 1, torch.zeros(2, 2))
    assert cpu.device.type == "cpu" and B.host_times(cpu).tolist() == [0.25, 0.5]  # (read back on the host)
    assert B.upload(cpu, "cpu") is cpu
