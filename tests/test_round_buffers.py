"""Round buffers: the engine writes a large round's new points where the batched model call reads them
(no stacking copy), with the same results bit for bit as the serial executor and as plain stacking."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import chords_core as cc
from chords_core import _backend as B
from chords_core.solvers import Euler

T, CORES = 12, 4


def _bits_equal(a, b) -> bool:
    """Equal bit for bit (signed zeros too), numpy or torch."""
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _same_run(a: cc.Result, b: cc.Result) -> bool:
    return (a.rounds, a.nfe, len(a.hits)) == (b.rounds, b.nfe, len(b.hits)) and _bits_equal(a.x, b.x) and all(
        (p.core, p.round, p.nfe) == (q.core, q.round, q.nfe) and _bits_equal(p.x, q.x) for p, q in zip(a.hits, b.hits))


COEFFS = [(1.0, 0.25), (0.5, 0.0), (0.0, -2.0), (0.0, 1.0), (1.0, 0.0), (0.3, -0.7), (-1.5, 1.0), (0.0, 0.0),
          (1.0, 0.5, 0.5), (0.0, 1.0, 1.0), (0.2, 0.0, -0.4), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (0.5, -0.5, 0.25, 2.0)]


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("coeffs", COEFFS)
def test_lincomb_into_writes_lincomb_bit_for_bit(lib, dtype, coeffs):
    rng = np.random.default_rng(len(coeffs))
    arrays = [rng.standard_normal((3, 257)).astype(dtype) for _ in coeffs]
    for a in arrays:
        a[0, :4] = (-0.0, 0.0, -0.0, 1e-30)  # signed zeros: a + 0.0 and 1.0 * a differ there
    if lib == "torch":
        arrays = [torch.from_numpy(a) for a in arrays]
    out = B._empty(tuple(arrays[0].shape), arrays[0])
    got = B.lincomb_into(coeffs, arrays, out)
    assert got is out and _bits_equal(got, B.lincomb(coeffs, arrays))
    if len(coeffs) == 2:
        out2 = B._empty(tuple(arrays[0].shape), arrays[0])
        assert B.axpy_into(coeffs[1], arrays[1], arrays[0], out2) is out2
        assert _bits_equal(out2, B.axpy(coeffs[1], arrays[1], arrays[0]))


def test_lincomb_into_falls_back_to_a_new_array_where_out_does_not_fit():
    a, b = np.ones((2, 3), np.float32), np.ones((2, 3), np.float64)
    out = np.empty((2, 3), np.float32)
    got = B.lincomb_into((0.5, 0.25), (a, b), out)  # float32 + float64: a float64 result, not out
    assert got is not out and got.dtype == np.float64 and _bits_equal(got, B.lincomb((0.5, 0.25), (a, b)))
    g = torch.ones(2, 3, requires_grad=True)
    got = B.lincomb_into((1.0, 2.0), (g, torch.ones(2, 3)), torch.empty(2, 3))  # gradients: no out=
    assert got.requires_grad


MODELS = {"scaled": lambda x, t: x * 0.5, "identity": lambda x, t: x, "view": lambda x, t: x[..., :]}


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("solver", ["euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc", "ddim"])
@pytest.mark.parametrize("fn", sorted(MODELS))
def test_round_buffers_give_the_serial_result_bit_for_bit(lib, solver, fn, monkeypatch):
    """Every round of 2+ points through the round buffers, also with a model returning its input (the
    buffer itself) or a view of it: the serial executor's result bit for bit."""
    monkeypatch.setattr(B, "ROUND_BUFFER_MIN_BYTES", 0)
    x = np.random.default_rng(7).standard_normal((2, 5)).astype(np.float32)
    if lib == "torch":
        x = torch.from_numpy(x)
    sch = cc.RectifiedFlow() if solver in ("euler", "heun") else cc.VP()
    model = cc.DiffusionModel(MODELS[fn], sch, "flow" if sch is not None and solver in ("euler", "heun") else "eps")
    grid = cc.time_grid(sch, T)
    made = []
    monkeypatch.setattr(B.RoundBuffers, "take", _counting(B.RoundBuffers.take, made))
    got = cc.chords(model, x, grid, solver, cores=CORES, stop=None)
    assert made  # the rounds went through the buffers
    ref = cc.chords(model, x, grid, solver, cores=CORES, stop=None, executor=cc.SerialExecutor())
    assert _same_run(got, ref)


def _counting(take, log):
    def counted(self, number, n, *rest):
        log.append((number, n))
        return take(self, number, n, *rest)

    return counted


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_round_buffers_with_a_vector_field_that_returns_its_input(batched, solver, monkeypatch):
    """A per-point vector field returning its input would alias the round buffer: its outputs are copied."""
    monkeypatch.setattr(B, "ROUND_BUFFER_MIN_BYTES", 0)
    f = cc.VectorField((lambda t, y: y) if not batched else (lambda t, y: y[...]), batched=batched)
    y = np.linspace(0.0, 1.0, 6).reshape(2, 3)
    grid = np.linspace(0.0, 1.0, T + 1)
    got = cc.chords(f, y, grid, solver, cores=CORES, stop=None)
    ref = cc.chords(f, y, grid, solver, cores=CORES, stop=None, executor=cc.SerialExecutor())
    assert _same_run(got, ref)


def test_a_solver_subclass_with_its_own_step_is_not_bypassed(monkeypatch):
    """``_step_into`` writes Euler's step into the buffer only where ``step`` is Euler's own."""
    monkeypatch.setattr(B, "ROUND_BUFFER_MIN_BYTES", 0)

    class Damped(Euler):
        name = "damped"

        def step(self, state, qs, i, j):
            new = super().step(state, qs, i, j)
            return cc.solvers.State(new.x * 0.5)

    model = cc.DiffusionModel(MODELS["scaled"], cc.RectifiedFlow(), "flow")
    x = np.random.default_rng(8).standard_normal((1, 6))
    grid = cc.time_grid(cc.RectifiedFlow(), T)
    got = cc.chords(model, x, grid, Damped(model, grid), cores=CORES, stop=None)
    ref = cc.chords(model, x, grid, Damped(model, grid), cores=CORES, stop=None, executor=cc.SerialExecutor())
    plain = cc.chords(model, x, grid, "euler", cores=CORES, stop=None)
    assert _same_run(got, ref) and not _bits_equal(got.x, plain.x)


def test_torch_states_that_record_gradients_are_stacked_as_before(monkeypatch):
    monkeypatch.setattr(B, "ROUND_BUFFER_MIN_BYTES", 0)
    w = torch.nn.Parameter(torch.tensor(0.5, dtype=torch.float64))
    model = cc.DiffusionModel(lambda x, t: x * w, cc.RectifiedFlow(), "flow")
    x = torch.randn(1, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    grid = cc.time_grid(cc.RectifiedFlow(), T)
    got = cc.chords(model, x, grid, "euler", cores=CORES, stop=None)
    ref = cc.chords(model, x, grid, "euler", cores=CORES, stop=None, executor=cc.SerialExecutor())
    assert _same_run(got, ref) and got.x.requires_grad
    got.x.sum().backward()
    assert w.grad is not None


def test_round_buffers_follow_the_round_width_and_are_reused(monkeypatch):
    """Rounds use two buffers in turn, made for the most points a round has from then on and made anew
    only when that halves (so the memory falls as cores finish); only the batched executor gets them."""
    monkeypatch.setattr(B, "ROUND_BUFFER_MIN_BYTES", 0)
    made = []
    monkeypatch.setattr(B.RoundBuffers, "take", _counting(B.RoundBuffers.take, made))
    sizes = []
    empty = B._empty

    def counted_empty(shape, like, *rest):
        sizes.append(shape[0])
        return empty(shape, like, *rest)

    monkeypatch.setattr(B, "_empty", counted_empty)
    model = cc.DiffusionModel(MODELS["scaled"], cc.RectifiedFlow(), "flow")
    x = np.random.default_rng(10).standard_normal((1, 4))
    init_ = (0, 2, 4, 8, 16, 24, 32, 40)
    plan = cc.make_plan(50, init_)
    cc.chords(model, x, cc.time_grid(cc.RectifiedFlow(), 50), "euler", init=init_, stop=None)
    widths = [len(r.evals) for r in plan.rounds]
    assert [n for _, n in made] == [w for w in widths if w >= 2]
    assert sizes == [8, 8, 4, 4, 2]  # widths 2..8: 8 rows each; 4 and 3: 4 rows; the one round of 2: 2 rows
    made.clear()
    cc.chords(model, x, cc.time_grid(cc.RectifiedFlow(), 50), "euler", init=init_, stop=None,
              executor=cc.SerialExecutor())
    assert not made


def _peak(run) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        run()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_batched_rounds_hold_little_more_memory_than_serial_ones():
    """Large states: the round buffers replace the stacking buffer and the separate states, and a
    round's output is freed with the round (the step's quantities are dropped once stepped; a user
    trial: core 0's values kept for the default stop's error estimate were views pinning their
    rounds' whole outputs, 1.39x the serial executor's peak: 54 state copies against its 39)."""
    x = np.random.default_rng(11).standard_normal((1, 1 << 18)).astype(np.float32)  # 1 MiB a state
    model = cc.DiffusionModel(MODELS["scaled"], cc.RectifiedFlow(), "flow")
    grid = cc.time_grid(cc.RectifiedFlow(), 50)
    init_ = (0, 2, 4, 8, 16, 24, 32, 40)

    def run(executor, stop):
        return lambda: cc.chords(model, x, grid, "euler", init=init_, stop=stop, executor=executor)

    for stop in (None, cc.StopWhenConverged()):
        serial = _peak(run(cc.SerialExecutor(), stop))
        for cap in (None, 4 << 20):  # one call a round; calls of 4 points
            batched = _peak(run(cc.BatchedExecutor(max_batch_bytes=cap), stop))
            assert batched <= 1.15 * serial, (stop, cap, batched / 2**20, serial / 2**20)


@pytest.mark.parametrize("solver", ["euler", "heun", "dpmpp_2m"])
def test_a_round_that_falls_back_to_plain_stacking_keeps_its_anchors(solver, monkeypatch):
    """When a point cannot be written into its round's buffer (another dtype, device, gradients), the
    round is stacked by the executor: the points earlier steps wrote into that buffer are copied out,
    so an anchor kept from such a round does not change when the buffer is reused. Each round in turn
    is made to fall back; every run equals the serial executor's bit for bit."""
    monkeypatch.setattr(B, "ROUND_BUFFER_MIN_BYTES", 0)
    sch = cc.RectifiedFlow() if solver != "dpmpp_2m" else cc.VP()
    model = cc.DiffusionModel(lambda x, t: np.tanh(x) * 0.5 + 0.1 * t[:, None].astype(x.dtype), sch,
                              "flow" if solver != "dpmpp_2m" else "eps")
    x = np.random.default_rng(3).standard_normal((2, 7)).astype(np.float32)
    grid = cc.time_grid(sch, T)
    ref = cc.chords(model, x, grid, solver, cores=CORES, stop=None, executor=cc.SerialExecutor())
    points, copy_into = cc.engine.CoreRecords.points, B.copy_into
    now = {"round": 0}

    def recorded(self, rd):
        now["round"] = rd.number
        return points(self, rd)

    monkeypatch.setattr(cc.engine.CoreRecords, "points", recorded)
    for bad in range(2, ref.rounds + 1):
        monkeypatch.setattr(B, "copy_into", lambda out, p, bad=bad: False if now["round"] == bad else copy_into(out, p))
        assert _same_run(cc.chords(model, x, grid, solver, cores=CORES, stop=None), ref), bad


def test_a_batched_executor_subclass_with_its_own_call_gets_plain_points(monkeypatch):
    """A subclass that overrides ``__call__`` may keep the points it is given: they are never the
    engine's round buffers (which later rounds overwrite), and its run equals the serial one."""
    monkeypatch.setattr(B, "ROUND_BUFFER_MIN_BYTES", 0)

    class Recording(cc.BatchedExecutor):
        def __init__(self):
            self.log = []

        def __call__(self, model, xs, ts):
            self.log.append([(p, p.copy()) for p in xs])
            return super().__call__(model, xs, ts)

    ex = Recording()
    model = cc.DiffusionModel(lambda x, t: x * 0.5, cc.RectifiedFlow(), "flow")
    x = np.random.default_rng(4).standard_normal((2, 7)).astype(np.float32)
    assert not ex.stacks_points(x) and cc.BatchedExecutor().stacks_points(x)
    grid = cc.time_grid(cc.RectifiedFlow(), T)
    got = cc.chords(model, x, grid, "euler", cores=CORES, stop=None, executor=ex)
    assert _same_run(got, cc.chords(model, x, grid, "euler", cores=CORES, stop=None, executor=cc.SerialExecutor()))
    assert all(np.array_equal(p, kept) for rnd in ex.log for p, kept in rnd)


def _batch_log(fn, log):
    """``fn``, recording the rows of each call."""
    def logged(x, t):
        log.append(int(x.shape[0]))
        return fn(x, t)

    return logged


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("solver", ["euler", "heun", "dpmpp_2m", "unipc"])
@pytest.mark.parametrize("per_call", [1, 2, 3])
@pytest.mark.parametrize("buffers", [False, True])
def test_rounds_split_by_max_batch_bytes_equal_one_call_a_round(lib, solver, per_call, buffers, monkeypatch):
    """A round above ``max_batch_bytes`` goes in calls of as many points as fit (through the round
    buffers' ranges where the round has one): the same run as one call a round and as the serial
    executor, bit for bit, with no call above the cap."""
    if buffers:
        monkeypatch.setattr(B, "ROUND_BUFFER_MIN_BYTES", 0)
    x = np.random.default_rng(3).standard_normal((2, 5)).astype(np.float32)
    if lib == "torch":
        x = torch.from_numpy(x)
    sch = cc.RectifiedFlow() if solver in ("euler", "heun") else cc.VP()
    log: list[int] = []
    model = cc.DiffusionModel(_batch_log(lambda x, t: x * 0.5 + 0.1, log), sch,
                              "flow" if solver in ("euler", "heun") else "eps")
    grid = cc.time_grid(sch, T)
    ex = cc.BatchedExecutor(max_batch_bytes=per_call * 40 + 39)  # a point: 2 x 5 float32 = 40 bytes
    assert ex.points_per_call(x) == per_call and ex.stacks_points(x) is (per_call > 1)
    made = []
    monkeypatch.setattr(B.RoundBuffers, "take", _counting(B.RoundBuffers.take, made))
    got = cc.chords(model, x, grid, solver, cores=CORES + 2, stop=None, executor=ex)
    assert bool(made) is (buffers and per_call > 1)
    assert max(log) == 2 * per_call and len(log) > got.rounds  # rounds were split, no call above the cap
    log.clear()
    one = cc.chords(model, x, grid, solver, cores=CORES + 2, stop=None, executor=cc.BatchedExecutor(max_batch_bytes=None))
    assert max(log) == 2 * (CORES + 2) and len(log) == one.rounds
    assert _same_run(got, one)
    assert _same_run(got, cc.chords(model, x, grid, solver, cores=CORES + 2, stop=None, executor=cc.SerialExecutor()))


@pytest.mark.parametrize("per_call", [1, 2, 3])
def test_split_rounds_of_a_batched_vector_field_and_a_model_returning_its_input(per_call, monkeypatch):
    """Stacked along a new axis (a batched ``VectorField``) and with outputs aliasing the round
    buffer's ranges (copied): the serial result bit for bit."""
    monkeypatch.setattr(B, "ROUND_BUFFER_MIN_BYTES", 0)
    y = np.linspace(0.0, 1.0, 6).reshape(2, 3)  # 48 bytes a point
    grid = np.linspace(0.0, 1.0, T + 1)
    ex = cc.BatchedExecutor(max_batch_bytes=48 * per_call)
    for f in (cc.VectorField(lambda t, y: -y * t[:, None, None], batched=True), cc.VectorField(lambda t, y: y[...], batched=True)):
        got = cc.chords(f, y, grid, "heun", cores=CORES, stop=None, executor=ex)
        assert _same_run(got, cc.chords(f, y, grid, "heun", cores=CORES, stop=None, executor=cc.SerialExecutor()))


@pytest.mark.parametrize("per_call", [1, 2, 3])
def test_a_split_round_names_the_core_of_a_bad_output(per_call):
    """A non-finite output in a later call of a split round: the error names the same round and core
    as with one call a round."""
    def fn(x, t):
        out = x * 0.5
        out[np.asarray(t) < 0.3] = np.nan  # the fastest cores reach t < 0.3 first
        return out

    model = cc.DiffusionModel(fn, cc.RectifiedFlow(), "flow")
    x = np.random.default_rng(5).standard_normal((1, 4))
    grid = cc.time_grid(cc.RectifiedFlow(), T)
    messages = []
    for cap in (32 * per_call, None):
        with pytest.raises(cc.ModelOutputError) as err:
            cc.chords(model, x, grid, "euler", cores=CORES + 2, stop=None, executor=cc.BatchedExecutor(max_batch_bytes=cap))
        messages.append(str(err.value))
    assert messages[0] == messages[1] and "round" in messages[0] and "core" in messages[0]


def test_max_batch_bytes_auto_and_bad_values():
    """``"auto"``: on the host (numpy, CPU tensors) stacked calls of at most ``HOST_BATCH_BYTES`` of
    points, one call a point where a point fills that; no cap for jax arrays; a bad value names the
    argument."""
    ex = cc.BatchedExecutor()
    small, big = np.zeros((1, 1024), np.float32), np.zeros((1, 1 << 20), np.float32)
    mid = np.zeros((1, 1 << 16), np.float32)  # 256 KiB a point: 16 a call (real models gain from the batch)
    assert ex.points_per_call(small) == cc.HOST_BATCH_BYTES // 4096 and ex.points_per_call(big) == 1
    assert ex.points_per_call(mid) == 16 and ex.points_per_call(torch.from_numpy(mid)) == 16
    assert ex.stacks_points(mid) and ex.stacks_points(torch.from_numpy(mid))
    assert ex.points_per_call(torch.from_numpy(big)) == 1 and not ex.stacks_points(big) and ex.stacks_points(small)
    import jax.numpy as jnp
    assert ex.points_per_call(jnp.zeros((1, 1 << 20))) is None
    assert cc.BatchedExecutor(max_batch_bytes=None).points_per_call(big) is None
    for bad in (0, -1, True, 1.5, "big", 2.0**30):
        with pytest.raises(ValueError, match="max_batch_bytes"):
            cc.BatchedExecutor(max_batch_bytes=bad)


@pytest.mark.parametrize("flag", [False, True])
def test_an_executor_with_a_stacks_points_attribute_still_runs(flag, monkeypatch):
    """``stacks_points`` was a class attribute before it took the state: an executor setting it as a
    bool still works (True: it gets the round buffers' points and evaluates them in one call)."""
    monkeypatch.setattr(B, "ROUND_BUFFER_MIN_BYTES", 0)

    class Old(cc.Executor):
        stacks_points = flag

        def __call__(self, model, xs, ts):
            return model.evaluate(xs, ts, batched=True)

    model = cc.DiffusionModel(lambda x, t: x * 0.5, cc.RectifiedFlow(), "flow")
    x = np.random.default_rng(2).standard_normal((2, 8))
    grid = cc.time_grid(cc.RectifiedFlow(), T)
    made = []
    monkeypatch.setattr(B.RoundBuffers, "take", _counting(B.RoundBuffers.take, made))
    got = cc.chords(model, x, grid, "euler", cores=3, stop=None, executor=Old())
    assert bool(made) is flag
    assert _same_run(got, cc.chords(model, x, grid, "euler", cores=3, stop=None, executor=cc.SerialExecutor()))


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_close_releases_a_batched_executors_stacking_buffer(lib):
    """A reused executor kept its largest round's stacking buffer after the call, through ``close()``
    (a no-op) and later small calls: 128 MiB for 32 states of 4 MiB. ``close()`` releases it; the
    executor still runs, with a new buffer, to the same result."""
    import gc
    import weakref

    rf = cc.RectifiedFlow()
    model = cc.DiffusionModel(lambda x, t: x * 0.5, rf, "flow")
    x = np.random.default_rng(0).standard_normal((1, 1 << 15))
    if lib == "torch":
        x = torch.from_numpy(x)
    grid = cc.time_grid(rf, 8)
    ex = cc.BatchedExecutor(max_batch_bytes=None)
    first = cc.paradigms(model, x, grid, window=4, tol=0.0, executor=ex)
    buf = ex.workspace._buf
    assert buf is not None and buf.shape[0] >= 4
    held = weakref.ref(buf)
    del buf
    ex.close()
    gc.collect()
    assert held() is None
    again = cc.paradigms(model, x, grid, window=4, tol=0.0, executor=ex)
    assert (again.x == first.x).all() and ex.workspace._buf is not None


def test_a_model_that_solves_on_the_same_executor_gets_its_own_stacking_buffer():
    """A user trial: a model whose network itself ran ``cc.parallel`` on the executor evaluating it
    (same thread) stacked its inner rounds in the buffer holding the outer round's points, which the
    network read afterwards: 1.84 off separate executors, silently."""
    sched = cc.RectifiedFlow()
    grid = cc.time_grid(sched, 8)
    inner = cc.DiffusionModel(lambda x, t: np.tanh(x) - 0.5 * x, sched, "flow")

    def outer(ex):
        def fn(x, t):
            y = cc.parallel(inner, np.ones((2, x.shape[1])), grid, "euler", cores=4, executor=ex).x
            return 0.1 * y.mean() + np.tanh(x) * (1 - t[:, None]) - 0.5 * x  # reads x after the inner call
        return cc.DiffusionModel(fn, sched, "flow")

    x = np.random.default_rng(0).standard_normal((2, 8192))  # 128 KiB a point: stacked in the buffer
    shared = cc.BatchedExecutor()
    got = cc.parallel(outer(shared), x, grid, "euler", cores=4, method="chords", executor=shared)
    ref = cc.parallel(outer(cc.SerialExecutor()), x, grid, "euler", cores=4, method="chords",
                      executor=cc.SerialExecutor())
    assert np.array_equal(got.x, ref.x)


def _normalising(seen: list):
    """A layout-sensitive 'network': a per-sample mean over the features (as GroupNorm / LayerNorm), whose
    sum order follows the memory order; ``seen`` records each call's memory order (``B.layout``)."""
    def fn(x, t):
        seen.append(B.layout(x))
        return (x - x.mean(axis=(1, 2, 3), keepdims=True) if isinstance(x, np.ndarray)
                else x - x.mean(dim=(1, 2, 3), keepdim=True)) * 0.5
    return fn


@pytest.mark.parametrize("lib", ["torch-channels-last", "numpy-fortran"])
def test_a_points_memory_order_reaches_the_model_in_large_rounds(lib):
    """A user trial: a round of 256 KiB or more was stacked in a C-ordered buffer, so a channels_last
    (or Fortran-ordered) state reached the model contiguous in the batched calls and in its own order in
    ``solve``: 2.3e-5 off at tol 0 through a per-sample normalisation, and the result came back
    contiguous. The buffers now keep the state's memory order: bit for bit equal, the same order in
    every call, at rounds below and above the round-buffer size (2 and 8 MiB)."""
    seen: list = []
    model = cc.DiffusionModel(_normalising(seen), cc.VP.linear(), "eps")
    grid = cc.time_grid(model.schedule, 10)
    x = np.random.default_rng(0).standard_normal((8, 4, 64, 64))
    if lib == "numpy-fortran":
        x, order = np.asfortranarray(x), (3, 2, 1, 0)
    else:
        x, order = torch.from_numpy(x.astype(np.float32)).to(memory_format=torch.channels_last), (0, 2, 3, 1)
    ref = cc.solve(model, x, grid, "ddim")
    assert set(seen) == {order} and B.layout(x) == order
    for cores in (2, 4):
        seen.clear()
        got = cc.parallel(model, x, grid, "ddim", cores=cores, tol=0)
        assert _bits_equal(got.x, ref) and set(seen) == {order} and B.layout(got.x) == order
        seen.clear()
        assert _same_run(cc.chords(model, x, grid, "ddim", cores=cores, stop=None), cc.chords(
            model, x, grid, "ddim", cores=cores, stop=None, executor=cc.SerialExecutor())) and set(seen) == {order}
    # (round buffers are C-ordered: such a state's rounds are stacked by the workspace, in their points' order)
    assert not B.RoundBuffers.suits(x)


def test_points_whose_order_is_not_the_states_are_stacked_as_solve_sees_them():
    """A review of the memory-order fix: (1) round buffers in a channels_last state's order put the
    points of a model that returns contiguous outputs (a convolution) in channels_last, 1.5e-4 from the
    serial executor; (2) an expanded state (a zero stride) was taken for one with its batch axis
    innermost, and the window methods' rounds reached the model so, 7.6e-6 from ``solve``; (3) a
    small transposed tensor, stacked by ``torch.cat``, reached it contiguous; (4) a numpy memmap raised
    AttributeError. Each round is stacked in the order its points share (C order where they differ
    or are not dense): bit for bit ``solve`` and the serial executor."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 4, 3, padding=1)

    def contiguous_conv(x, t):
        with torch.no_grad():
            return (0.1 * conv(x)).contiguous()

    model = cc.DiffusionModel(contiguous_conv, cc.VP.linear(), "eps")
    grid = cc.time_grid(model.schedule, 8)
    x = torch.randn(8, 4, 64, 64).contiguous(memory_format=torch.channels_last)  # 512 KiB a point
    ref = cc.solve(model, x, grid, "ddim")
    got = cc.chords(model, x, grid, "ddim", cores=4, stop=None)
    assert _same_run(got, cc.chords(model, x, grid, "ddim", cores=4, stop=None, executor=cc.SerialExecutor()))
    assert _bits_equal(got.x, ref)
    seen: list = []
    norm = cc.DiffusionModel(_normalising(seen), cc.VP.linear(), "eps")
    states = {"expanded": torch.randn(1, 4, 64, 64).expand(8, 4, 64, 64),
              "broadcast": np.broadcast_to(np.random.default_rng(2).standard_normal((1, 4, 64, 64)), (8, 4, 64, 64)),
              "transposed": torch.randn(2, 16, 257).transpose(1, 2).unsqueeze(-1)}
    for name, x in states.items():
        ref = cc.solve(norm, x, grid, "ddim")
        for method in ("cascade", "paradigms", "chords"):
            got = cc.parallel(norm, x, grid, "ddim", cores=4, method=method, **({"stop": None} if method == "chords"
                                                                                 else {"tol": 0}))
            assert _bits_equal(got.x, ref), (name, method)
    mm = np.lib.format.open_memmap(str(Path(tempfile.mkdtemp()) / "x.npy"), mode="w+", dtype=np.float32,
                                   shape=(8, 4, 64, 64))
    mm[:] = np.random.default_rng(3).standard_normal(mm.shape)
    assert _bits_equal(cc.parallel(norm, mm, grid, "ddim", cores=3, tol=0).x, cc.solve(norm, np.asarray(mm), grid, "ddim"))


def test_a_reused_stacking_buffer_follows_the_points_memory_order():
    """The executor's buffer outlives a call: a C-ordered call then a Fortran-ordered one of the same
    shape on one executor stack the second in its own order (a buffer kept by shape alone would not)."""
    seen: list = []
    model = cc.DiffusionModel(_normalising(seen), cc.VP.linear(), "eps")
    grid = cc.time_grid(model.schedule, 6)
    ex = cc.BatchedExecutor()
    x = np.random.default_rng(1).standard_normal((2, 4, 32, 64))  # 128 KiB a point: stacked rounds in the workspace
    cc.parallel(model, x, grid, "ddim", cores=3, tol=0, executor=ex)
    seen.clear()
    f = np.asfortranarray(x)
    got = cc.parallel(model, f, grid, "ddim", cores=3, tol=0, executor=ex)
    assert set(seen) == {(3, 2, 1, 0)} and _bits_equal(got.x, cc.solve(model, f, grid, "ddim"))


def test_a_batch_of_one_made_from_an_hwc_image_is_joined_as_channels_last():
    """Reviews: ``layout`` keeps a point's one-element axes where its strides put them, so that a
    point is rebuilt exactly; a round is joined along axis 0, which therefore counts as outermost
    there (``common_layout``). A batch of one made from an HWC image ((4, 1, 256, 4)) was joined as
    (H, W, n, C), and beside a standard channels_last point (a network returning channels_last, DPM++'s
    rounds mix the two) C-ordered: 5.7e-6 off ``solve`` at tol 0 through a per-sample normalisation."""
    hwc = torch.randn(64, 64, 4, generator=torch.Generator().manual_seed(1)).permute(2, 0, 1).unsqueeze(0)
    std = torch.randn(1, 4, 64, 64).contiguous(memory_format=torch.channels_last)  # ((hwc's own .contiguous(
    # memory_format=channels_last) is hwc itself: torch ignores its one-element axis)
    assert std.stride() == (16384, 1, 256, 4) and B.layout(hwc) == (2, 3, 0, 1) and B.in_layout(hwc, B.layout(hwc)).stride() == hwc.stride()
    assert B.common_layout([hwc, std]) == B.common_layout([std, hwc]) == (0, 2, 3, 1)
    for new_axis, strides in ((False, (16384, 1, 256, 4)), (True, (16384, 16384, 1, 256, 4))):
        assert B.Workspace().join([hwc, std] * 2, new_axis).stride() == strides, new_axis

    def net(x, t):  # per-sample normalisation (its rounding follows the layout), channels_last out
        y = (x - x.mean(dim=(1, 2, 3), keepdim=True)) * 0.5 + 0.01 * x.sum(dim=1, keepdim=True)
        return y.contiguous(memory_format=torch.channels_last)

    model = cc.DiffusionModel(net, cc.VP.linear(), "eps")
    grid = cc.time_grid(model.schedule, 10)
    got = cc.parallel(model, hwc, grid, "dpmpp_2m", cores=4, tol=0)
    assert torch.equal(got.x, cc.solve(model, hwc, grid, "dpmpp_2m"))
