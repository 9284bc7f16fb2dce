"""The model-output finiteness check: at every call, or deferred on the device and read back once
per CHORDS output (no device synchronisation per round), naming the same round and core."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch

import chords_core as cc
from chords_core import _backend as B

T, CORES = 16, 4


def _poisoned(at_call: int):
    """A flow model that returns nan for the first point of its ``at_call``-th call (1-based)."""
    calls = [0]

    def fn(x, t):
        calls[0] += 1
        out = x * 0.5
        if calls[0] == at_call:
            out = out.clone()
            out[0] = float("nan")
        return out

    return fn


@pytest.mark.parametrize("at_call", [3, 7, 12])
def test_deferred_check_names_the_same_round_and_core_as_the_eager_one(at_call):
    x = torch.randn(1, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grid = cc.time_grid(cc.RectifiedFlow(), T)
    msgs, outs = {}, {}
    for mode in (True, "deferred"):
        model = cc.DiffusionModel(_poisoned(at_call), cc.RectifiedFlow(), "flow", check_outputs=mode)
        try:
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                res = cc.chords(model, x, grid, "euler", cores=CORES, stop=None, executor=cc.SerialExecutor())
        except cc.ModelOutputError as err:  # core 0's output: the model's failure
            msgs[mode] = str(err)
        else:  # a faster core's: it is retired with the faster ones, named in stopped_by and a warning
            msgs[mode] = res.stopped_by[res.stopped_by.index("; core ") + 2:]
            outs[mode] = [h.x for h in res.hits]
            assert [w.category for w in seen] == [RuntimeWarning] and msgs[mode] in str(seen[0].message)
    assert msgs[True] == msgs["deferred"], msgs
    assert "round " in msgs[True] and "core " in msgs[True] and "non-finite" in msgs[True]
    if outs:  # the same outputs (the eager check evaluates the failed round again: one round more)
        assert len(outs[True]) == len(outs["deferred"]) and all(torch.equal(a, b) for a, b in zip(*outs.values()))


def test_deferred_check_reads_back_once_per_output_not_per_round(monkeypatch):
    reads = []
    real = B.to_host
    monkeypatch.setattr(B, "to_host", lambda a: reads.append(1) or real(a))
    x = torch.randn(2, 8, dtype=torch.float32, generator=torch.Generator().manual_seed(1))
    grid = cc.time_grid(cc.RectifiedFlow(), 32)
    model = cc.DiffusionModel(lambda x, t: x * 0.5, cc.RectifiedFlow(), "flow", check_outputs="deferred")
    res = cc.chords(model, x, grid, "euler", cores=CORES, stop=None)
    assert res.rounds == 32 and len(reads) == len(res.hits) == CORES  # 32 rounds, 4 read-backs
    eager = cc.chords(cc.DiffusionModel(lambda x, t: x * 0.5, cc.RectifiedFlow(), "flow"), x, grid, "euler",
                      cores=CORES, stop=None)
    assert all(torch.equal(a.x, b.x) for a, b in zip(res.hits, eager.hits))


def test_other_methods_check_a_deferred_model_at_once():
    x = torch.randn(1, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    grid = cc.time_grid(cc.RectifiedFlow(), T)
    for method in ("paradigms", "srds", "cascade"):
        model = cc.DiffusionModel(_poisoned(2), cc.RectifiedFlow(), "flow", check_outputs="deferred")
        with pytest.raises(cc.ModelOutputError, match="round 2, .*non-finite"):
            cc.parallel(model, x, grid, "euler", cores=CORES, method=method)


def test_auto_checks_host_arrays_at_every_call_and_bad_modes_are_refused():
    m = cc.DiffusionModel(lambda x, t: x, cc.RectifiedFlow(), "flow")
    assert m.check_outputs == "auto" and not m.deferred_check(np.zeros(3)) and not m.deferred_check(torch.zeros(3))
    with pytest.raises(ValueError, match="check_outputs must be"):
        cc.DiffusionModel(lambda x, t: x, cc.RectifiedFlow(), "flow", check_outputs="lazy")
    with pytest.raises(ValueError, match="check_outputs must be"):
        cc.VectorField(lambda t, y: y, check_outputs=1)


def test_auto_is_resolved_by_where_the_outputs_land():
    from chords_core.models import resolve_check

    assert resolve_check("auto", True) == "deferred" and resolve_check("auto", False) is True
    for mode in (True, False, "deferred"):  # explicit modes stay as given, wherever the outputs land
        assert resolve_check(mode, True) == mode and resolve_check(mode, False) == mode


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("size", [1, 64, 4096, 4097, 70_000])
def test_numpy_finiteness_check_at_every_size_and_position(dtype, size):
    v = np.random.default_rng(0).standard_normal(size).astype(dtype)
    assert B.all_finite(v) and B.all_finite(v.reshape(1, -1)[:, ::-1])  # a non-contiguous view too
    for bad in (np.nan, np.inf, -np.inf):
        for pos in {0, size // 2, size - 1}:
            w = v.copy()
            w[pos] = bad
            assert not B.all_finite(w)
    big = np.full(size, np.finfo(dtype).max / 2, dtype=dtype)  # finite, but a sum or dot product overflows
    with np.errstate(all="raise"):  # and the check itself raises no floating-point warning
        assert B.all_finite(big)


def test_numpy_finiteness_check_on_layouts_without_a_flat_view():
    x = np.random.default_rng(1).standard_normal((300, 200)).astype(np.float32)
    for v in (x.T, x[:, ::3], x[::-1], np.asfortranarray(x)):
        assert B.all_finite(v)
        w = v.copy(order="K")
        w[5, 7] = np.nan
        assert not B.all_finite(w) and not B.all_finite(w.T)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64, torch.bfloat16])
def test_cpu_times_equal_torch_tensor_in_every_dtype(dtype):
    ts = [1 + 2**-11 + 2**-40, 0.1, 1e-3, 0.7]  # the first rounds differently through float32 in float16
    like = torch.zeros(3, dtype=dtype)
    got, want = B.times_like(ts, 3, like), torch.tensor(ts, dtype=dtype).repeat_interleave(3)
    assert got.dtype == dtype and torch.equal(got, want)


def test_torch_finiteness_check_catches_nan_and_inf_past_the_fast_path():
    v = torch.randn(10_000, dtype=torch.float32)
    assert B.all_finite(v)
    for bad in (float("nan"), float("inf"), -float("inf")):
        w = v.clone()
        w[7777] = bad
        assert not B.all_finite(w)
    big = torch.full((10_000,), 3e38, dtype=torch.float32)  # finite, but its dot product overflows
    assert B.all_finite(big)


def _identity(x, t):
    return x


def _view(x, t):
    return x[..., :]


def _scaled(x, t):
    return x * 0.5


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("fn", [_identity, _view, _scaled])
def test_batched_executor_reuses_its_buffer_and_copies_outputs_that_alias_it(lib, fn, monkeypatch):
    """The stacked points go into one reused buffer; a model that returns its input or a view of it
    must still give the serial executor's result bit for bit."""
    monkeypatch.setattr(B, "WORKSPACE_MIN_BYTES", 0)  # small states here: use the buffer anyway
    x = np.random.default_rng(3).standard_normal((2, 5))
    if lib == "torch":
        x = torch.from_numpy(x)
    grid = cc.time_grid(cc.RectifiedFlow(), T)
    model = cc.DiffusionModel(fn, cc.RectifiedFlow(), "flow")
    ex = cc.BatchedExecutor()
    got = cc.chords(model, x, grid, "euler", cores=CORES, stop=None, executor=ex)
    ref = cc.chords(model, x, grid, "euler", cores=CORES, stop=None, executor=cc.SerialExecutor())
    same = (lambda a, b: bool(torch.equal(a, b))) if lib == "torch" else (lambda a, b: np.array_equal(a, b))
    assert all(same(a.x, b.x) for a, b in zip(got.hits, ref.hits))
    assert ex.workspace is not None and 1 <= ex.workspace.allocations <= 3  # grown with the rounds' points (2, 3, 4), then reused


def test_vector_field_batched_uses_the_workspace_too():
    f = cc.VectorField(lambda t, y: -y * t[:, None], batched=True)
    y = np.random.default_rng(4).standard_normal(3)
    grid = np.linspace(0.0, 1.0, T + 1)
    got = cc.chords(f, y, grid, "heun", cores=CORES, stop=None)
    ref = cc.chords(f, y, grid, "heun", cores=CORES, stop=None, executor=cc.SerialExecutor())
    assert all(np.array_equal(a.x, b.x) for a, b in zip(got.hits, ref.hits))


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_own_copies_views_into_large_batched_outputs_only(lib):
    big = np.zeros((8, B.OWN_MIN_BYTES // 8))  # float64: 8 rows of OWN_MIN_BYTES / 8 elements, 8 MiB in all
    small = np.zeros((8, 4))
    if lib == "torch":
        big, small = torch.from_numpy(big), torch.from_numpy(small)
    rows = B.split_rows(big, 8)
    kept = B.own(rows[3])
    shares = (kept.untyped_storage().data_ptr() == big.untyped_storage().data_ptr() if lib == "torch"
              else np.shares_memory(kept, big))
    assert not shares and kept.shape == rows[3].shape and float(kept.sum()) == 0.0
    assert B.own(B.split_rows(small, 8)[3]) is not None
    view = B.split_rows(small, 8)[3]
    assert B.own(view) is view  # a small round output: pinning it costs little, no copy
    fresh = big[0] * 1.0
    assert B.own(fresh) is fresh


def test_large_torch_states_run_through_the_batched_executor_like_the_serial_one():
    """Rounds of 2+ points of 1 MiB states: the stacked buffer and the owned copies of kept outputs."""
    x = torch.randn(1, 1 << 18, dtype=torch.float32, generator=torch.Generator().manual_seed(5))
    grid = cc.time_grid(cc.RectifiedFlow(), 8)
    model = cc.DiffusionModel(_scaled, cc.RectifiedFlow(), "flow")
    got = cc.chords(model, x, grid, "euler", cores=3, stop=None)
    ref = cc.chords(model, x, grid, "euler", cores=3, stop=None, executor=cc.SerialExecutor())
    assert all(torch.equal(a.x, b.x) for a, b in zip(got.hits, ref.hits))


def test_device_replicas_check_at_once_when_the_driver_states_are_on_the_host(monkeypatch):
    """'auto' decides by where the outputs end up: replicas on accelerators (simulated here by the
    worker threads) must check when the driver's states are on the host, or nobody would."""
    import threading

    from chords_torch import DeviceExecutor

    monkeypatch.setattr(B, "on_accelerator",
                        lambda x: type(x) is torch.Tensor and threading.current_thread().name.startswith("chords-"))

    def net(x, t):
        out = -x.clone()
        out[0] = float("nan")
        return out

    model = cc.DiffusionModel(net, cc.RectifiedFlow(), "flow")
    x = torch.randn(2, 3, dtype=torch.float64)
    with DeviceExecutor(["cpu", "cpu"]) as ex, pytest.raises(cc.ModelOutputError, match="round 1, core 0"):
        cc.chords(model, x, cc.time_grid(model.schedule, 8), "euler", cores=2, stop=None, executor=ex)


def test_a_worker_bound_model_checks_at_once():
    from chords_torch._common import bind, shell_of

    m = cc.DiffusionModel(lambda x, t: x, cc.RectifiedFlow(), "flow")
    assert bind(shell_of(m), lambda x, t: x).check_outputs is True and m.check_outputs == "auto"
    d = cc.DiffusionModel(lambda x, t: x, cc.RectifiedFlow(), "flow", check_outputs="deferred")
    assert bind(shell_of(d), lambda x, t: x).check_outputs == "deferred"


def test_the_reused_buffer_follows_inference_mode_and_gradients(monkeypatch):
    monkeypatch.setattr(B, "WORKSPACE_MIN_BYTES", 0)
    x = torch.randn(1, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    grid = cc.time_grid(cc.RectifiedFlow(), 8)
    model = cc.DiffusionModel(_scaled, cc.RectifiedFlow(), "flow")
    ex = cc.BatchedExecutor()
    with torch.inference_mode():
        a = cc.chords(model, x, grid, "euler", cores=3, stop=None, executor=ex)
    b = cc.chords(model, x, grid, "euler", cores=3, stop=None, executor=ex)  # was: inference tensor error
    assert all(torch.equal(p.x, q.x) for p, q in zip(a.hits, b.hits))
    w = B.Workspace()
    y = torch.ones(2, 3, requires_grad=True)
    joined = w.join([torch.zeros(2, 3), y], new_axis=False)  # only the second needs gradients
    assert joined.requires_grad and w.allocations == 0


def test_a_held_ctrl_c_is_delivered_when_the_round_fails():
    import os
    import signal

    from chords_torch.distributed import _sigint_deferred

    with pytest.raises(KeyboardInterrupt) as info:
        with _sigint_deferred() as got:
            os.kill(os.getpid(), signal.SIGINT)
            assert got.count == 1
            raise ValueError("the round failed")
    assert isinstance(info.value.__context__, ValueError)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_kind_of_a_bad_output_is_carried_not_read_from_the_message():
    """``is_nonfinite`` survives every re-raise that adds the round and point (batch parts, the
    round's naming, the sequential solve) and pickling; a wrong shape is not non-finite even where
    its message quotes the non-finite one."""
    from chords_core.models import NONFINITE

    grid = cc.time_grid(cc.RectifiedFlow(), T)
    x = torch.zeros(2, 3, dtype=torch.float64)

    def nan_at_5(x, t):  # every evaluation at grid[5]: in the end core 0's, which raises
        return torch.where(torch.isclose(t, torch.tensor(grid[5], dtype=t.dtype))[:, None], torch.nan, x * 0.5)

    model = cc.DiffusionModel(nan_at_5, cc.RectifiedFlow(), "flow")
    for run in (lambda: cc.chords(model, x, grid, cores=CORES, stop=None),
                lambda: cc.chords(model, x, grid, cores=CORES, stop=None, executor=cc.BatchedExecutor(max_batch_bytes=48)),
                lambda: cc.solve(model, x, grid)):
        with pytest.raises(cc.ModelOutputError) as info, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (the faster cores' retirements)
            run()
        assert info.value.is_nonfinite and NONFINITE in str(info.value)

    def wrong_shape(x, t):
        raise cc.ModelOutputError(0, f"a custom check: shape (1,) unlike the state, not '{NONFINITE}'")

    with pytest.raises(cc.ModelOutputError) as info:
        cc.chords(cc.DiffusionModel(wrong_shape, cc.RectifiedFlow(), "flow"), x, grid, cores=CORES, stop=None)
    assert not info.value.is_nonfinite and NONFINITE in str(info.value)
    for err in (cc.ModelOutputError.nonfinite(3, "round 2, core 1"), cc.ModelOutputError(1, "shape")):
        back = pickle.loads(pickle.dumps(err))
        assert (back.point, str(back), back.is_nonfinite) == (err.point, str(err), err.is_nonfinite)


def test_numpy_subclass_outputs_are_plain_arrays_and_masked_values_are_refused_naming_the_point():
    """(A masked array's masked entries were skipped by the arithmetic: 0.69 off the plain model's
    answer, with no error; np.matrix outputs made the result a matrix.)"""
    A = np.array([[0.0, 1.0], [-1.0, -0.1]])
    grid = np.linspace(0.0, 1.0, 11)
    y0 = np.array([[1.0, 0.0]])
    plain = cc.VectorField(lambda t, y: y @ A.T)
    ref = cc.solve(plain, y0, grid, "heun")
    unmasked = cc.VectorField(lambda t, y: np.ma.masked_array(y @ A.T, mask=np.zeros(y.shape, bool)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # np.matrix's own notice
        matrix = cc.VectorField(lambda t, y: np.asmatrix(y @ A.T))
        for f in (unmasked, matrix):
            got = cc.solve(f, y0, grid, "heun")
            assert type(got) is np.ndarray and np.array_equal(got, ref)
            res = cc.chords(f, y0, grid, "heun", cores=3, stop=None)
            assert type(res.x) is np.ndarray and np.array_equal(res.x, cc.chords(plain, y0, grid, "heun", cores=3,
                                                                                  stop=None).x)
    masked = cc.VectorField(lambda t, y: np.ma.masked_array(y @ A.T, mask=np.eye(1, 2, dtype=bool)))
    with pytest.raises(cc.ModelOutputError, match=r"round 1, core 0 .*masked array with 1 masked value"):
        cc.chords(masked, y0, grid, "heun", cores=3, stop=None)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        states = (np.asmatrix(y0), np.ma.masked_array(y0))
    for x in states:  # as a state: refused naming x (a matrix failed inside a matrix product)
        with pytest.raises(TypeError, match=r"x: a (matrix|MaskedArray) state .*np.asarray\(x\)"):
            cc.chords(plain, x, grid, "heun", cores=3)

    # a stacked call of a diffusion model: the error names the point that holds the masked value
    def fn(x, t):
        mask = np.zeros(x.shape, bool)
        if len(x) > 1:
            mask[1] = True  # the second point of the call
        return np.ma.masked_array(x * 0.5, mask=mask)

    for check in (True, False):  # not a finiteness question: refused with the check off too
        model = cc.DiffusionModel(fn, cc.RectifiedFlow(), "flow", check_outputs=check)
        with pytest.raises(cc.ModelOutputError, match=r"round 2, core 1 .*masked array") as err:
            cc.chords(model, np.ones((1, 3)), cc.time_grid(cc.RectifiedFlow(), 8), cores=2, stop=None)
        assert err.value.point == 1 and not err.value.is_nonfinite


@pytest.mark.parametrize("method", ["solve", *sorted(cc.METHODS)])
def test_a_sparse_output_and_an_8_bit_float_state_are_refused_by_name(method):
    """A user trial: a model returning a sparse tensor ran in ``solve`` and failed inside torch in
    every parallel method ("Could not run 'aten::as_strided' ... SparseCPU"); a float8 state passed the
    floating-dtype check and failed in torch ("isfinite" not implemented)."""
    sched = cc.RectifiedFlow()
    grid, x = cc.time_grid(sched, 6), torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def run(fn, state):
        model = cc.DiffusionModel(fn, sched, "flow")
        if method == "solve":
            return cc.solve(model, state, grid)
        return cc.parallel(model, state, grid, cores=2, method=method)

    with pytest.raises(cc.ModelOutputError, match="model returned a tensor of layout torch.sparse_coo, expected "
                                                  "torch.strided .*out.to_dense"):
        run(lambda x, t: (-x).to_sparse(), x)
    with pytest.raises(TypeError, match=r"^x: an 8-bit float state \(torch.float8_e4m3fn\)"):
        run(lambda x, t: -x, x.to(torch.float8_e4m3fn))
    with pytest.raises(TypeError, match=r"^x: a tensor of layout torch.sparse_coo; .*x.to_dense\(\)"):
        run(lambda x, t: -x, x.to_sparse())


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_an_output_that_overflows_the_states_dtype_is_named(lib):
    """A model computing in float64 on a float16 state: its finite 1e6 is inf once cast to the state's
    dtype. It was checked before the cast and returned as inf (numpy printed an overflow warning,
    torch nothing); now every method names it, saying that the values overflow the state's dtype. A
    value that fits (10) goes through."""
    def fn(value):
        if lib == "numpy":
            return lambda x, t: np.full(x.shape, value)
        return lambda x, t: torch.full(x.shape, value, dtype=torch.float64)

    x = np.zeros((2, 3), np.float16) if lib == "numpy" else torch.zeros(2, 3, dtype=torch.float16)
    sched = cc.VP.linear()
    grid = cc.time_grid(sched, 4)
    bad = cc.DiffusionModel(fn(1e6), sched, "eps")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # (numpy's own overflow warning in the cast)
        for call in (lambda: cc.solve(bad, x, grid, "euler"), lambda: cc.chords(bad, x, grid, "euler", cores=2),
                     lambda: cc.parallel(bad, x, grid, "euler", cores=2)):
            with pytest.raises(cc.ModelOutputError, match=r"non-finite values \(nan or inf\) in the state's dtype "
                                                          r"(torch\.)?float16 \(finite in the model's (torch\.)?float64"):
                call()
    ok = cc.solve(cc.DiffusionModel(fn(10.0), sched, "eps"), x, grid, "euler")
    assert ok.dtype == x.dtype and bool(np.isfinite(np.asarray(ok, np.float64)).all())


def test_stop_at_core_says_when_its_output_never_came():
    """Every faster core retired: StopAtCore(2) returns core 0's output, the only one, and says that
    its second output never came (it said "output 1 (core 0)", as if accepted)."""
    field = cc.VectorField(lambda t, y: -np.sqrt(y) * np.sqrt(y))  # nan where a far coarse start overshoots 0
    x, grid = np.array([1.0]), np.linspace(0.0, 3.0, 41)
    seq = cc.solve(field, x, grid, "euler")
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        res = cc.chords(field, x, grid, "euler", init=[0, 30, 35, 38], stop=cc.StopAtCore(2))
        first = cc.chords(field, x, grid, "euler", init=[0, 30, 35, 38], stop=cc.StopAtCore(1))
    assert [h.core for h in res.hits] == [0] and np.array_equal(res.x, seq)
    assert res.stopped_by.startswith("output 1 (core 0), the last: output 2 never came (core 0: the sequential")
    assert "core 1 and faster retired" in res.stopped_by
    assert first.stopped_by.startswith("output 1 (core 0); core 1 and faster retired")
