"""chords_torch over torch.distributed: 3 processes on gloo on this machine, started from pytest.

Rank 0 drives the core engine with a DistributedExecutor, ranks 1 and 2 ``serve``
(``python -m chords_torch.demo``). Checks: bit-for-bit equality with the serial executor, and
that a bad output or a killed rank raises a clear error in rank 0 with every process exiting.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist  # noqa: E402
from helpers import free_port

if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available in this torch build", allow_module_level=True)

BACKENDS = Path(__file__).resolve().parents[1] / "backends"
import chords_core as cc  # noqa: E402
from chords_torch.distributed import HUNG_EXIT  # noqa: E402
from chords_torch.testing import gmm_problem  # noqa: E402

LAUNCH_TIMEOUT = 120  # seconds for a whole launch (three interpreters importing torch on a busy machine)


def _env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BACKENDS), env.get("PYTHONPATH")]))
    return env


def _finish(procs: list, timeout: float) -> list[int]:
    """Wait for every process; on timeout kill their process groups. Returns the exit codes."""
    try:
        return [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


SCENARIOS = Path(__file__).resolve().parent / "dist_scenarios.py"


def launch(args: list[str], world: int = 3, tmp_path: Path | None = None,
           program: tuple[str, ...] = ("-m", "chords_torch.demo")) -> tuple[list[int], list[str]]:
    """What torchrun does, by hand: ``world`` processes with RANK / WORLD_SIZE / MASTER_* set."""
    port, procs, logs = free_port(), [], []
    for r in range(world):
        log = open(tmp_path / f"rank{r}.log", "w+")
        env = _env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world))
        procs.append(subprocess.Popen([sys.executable, *program, *args], env=env, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True))
        logs.append(log)
    codes = _finish(procs, LAUNCH_TIMEOUT)
    outs = []
    for log in logs:
        log.seek(0)
        outs.append(log.read())
        log.close()
    return codes, outs


def report(out: str) -> dict:
    return json.loads(next(line for line in out.splitlines() if line.startswith("{")))


def test_torchrun_three_ranks_equal_serial_bitwise(tmp_path):
    out = tmp_path / "hits.pt"
    p = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3", "-m", "chords_torch.demo",
         "--steps", "16", "--cores", "4", "--solver", "dpmpp_2m", "--rank0-evaluates", "--out", str(out)],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        text = p.communicate(timeout=LAUNCH_TIMEOUT)[0]
    finally:
        _finish([p], 0)
    assert p.returncode == 0, text
    rep = report(text)
    assert rep["world"] == 3 and rep["backend"] == "gloo" and rep["equal"] is True
    model, _ = gmm_problem()
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = cc.chords(model, x, cc.time_grid(model.schedule, 16), "dpmpp_2m", cores=4, stop=None, executor=cc.SerialExecutor())
    hits = torch.load(out)
    assert len(hits) == 4 and all(torch.equal(a, h.x) for a, h in zip(hits, ref.hits))
    assert rep["rounds"] == ref.rounds and rep["nfe"] == ref.nfe
    assert rep["first_output_round"] == ref.hits[0].round and rep["first_output_speedup"] > 1
    assert "speedup' 1.0 by design" in rep["note"]


def test_bad_output_on_a_rank_raises_in_the_driver_and_all_ranks_exit(tmp_path):
    codes, outs = launch(["--fault", "nan", "--fault-rank", "1", "--fault-after", "2"], tmp_path=tmp_path)
    rep = report(outs[0])
    # rank 1 serves point 0 of each round, core 0 (rank 0 only drives): its 2nd evaluation is in round 2
    assert rep["error"].startswith("ModelOutputError: round 2, core 0") and "non-finite" in rep["error"], outs[0]
    assert rep["error"].rstrip().endswith("(evaluated on rank 1)"), outs[0]  # (a trial: no rank was named)
    assert rep["nonfinite"] is True  # the kind travels with the error, not only its message
    assert codes == [1, 0, 0], outs  # the driver failed, both workers were told to stop and left cleanly


def test_a_network_that_writes_into_its_input_on_a_rank_is_refused_as_on_rank_0(tmp_path):
    """A user trial: the serial executor refuses a network's in-place write into its input, a serving
    rank accepted it (its points are views of the rank's receive buffer, which the check skipped)."""
    codes, outs = launch(["--fault", "inplace", "--fault-rank", "1", "--fault-after", "2"], tmp_path=tmp_path)
    rep = report(outs[0])
    assert rep["error"].startswith("ModelOutputError: round 2, core 0") and "modified its input in place" in rep["error"]
    assert codes == [1, 0, 0], outs


def test_a_models_sys_exit_on_a_rank_is_its_error_not_the_ranks_end(tmp_path):
    # a sys.exit(0) inside the model: the driver gets the model's error (not a WorkerDied from a rank that
    # vanished with status 0, which torchrun counts as success) before the rank leaves, as sys.exit asks
    codes, outs = launch(["--fault", "exit", "--fault-rank", "1", "--fault-after", "2"], tmp_path=tmp_path)
    rep = report(outs[0])
    assert rep["error"].startswith("WorkerError: rank 1") and "SystemExit" in rep["error"], outs[0]
    assert codes == [1, 0, 0], outs


def test_a_faster_cores_bad_output_on_a_rank_retires_it_and_the_run_completes(tmp_path):
    codes, outs = launch(["--fault", "nan", "--fault-rank", "2", "--fault-after", "2"], tmp_path=tmp_path)
    rep = report(outs[0])
    # rank 2 serves core 1 (point 1); its 2nd evaluation is in round 3 (core 1 starts in round 2): core 1
    # and the faster ones are retired (the kind came from the rank), with core 0's output of that round
    # (ModelOutputError.done): no round evaluated again
    assert "core 1 and faster retired after a non-finite model output at round 3, core 1" in rep["stopped_by"], outs[0]
    assert rep["equal"] and rep["rounds"] == 20, rep  # 20 steps (the demo's); 21 before
    assert codes == [0, 0, 0], outs


def test_killed_rank_raises_in_the_driver_within_the_timeout(tmp_path):
    codes, outs = launch(["--fault", "die", "--fault-rank", "1", "--fault-after", "3", "--timeout", "20"], tmp_path=tmp_path)
    rep = report(outs[0])
    assert rep["error"].startswith("WorkerDied: rank 1"), outs[0]
    assert codes[0] == 1 and codes[1] == -signal.SIGKILL and codes[2] == 0, outs


def test_an_interrupted_round_is_completed_then_the_executor_gives_exact_results(tmp_path):
    codes, outs = launch(["interrupt"], tmp_path=tmp_path, program=(str(SCENARIOS),))
    rep = report(outs[0])
    assert rep["first"] == "KeyboardInterrupt", outs[0]
    assert rep["second"] == "equal", outs[0]  # before: the next call read the old answers, one round off
    assert codes == [0, 0, 0], outs


@pytest.mark.parametrize("scenario", ["interrupt_twice", "interrupt_alarm", "interrupt_between"])
def test_a_second_interrupt_ends_the_call_at_once_and_closes_the_executor(scenario, tmp_path):
    """docs/torch.md: a second Ctrl-C interrupts at once. It took effect only once the round's answers
    were in (4 s here): Python runs the handler only when the main thread leaves the backend's wait.
    Another signal handler's exception (a SIGALRM timeout's) mid-wait cuts the round alike: it aborted
    rank 0 (SIGABRT in gloo), a user trial."""
    codes, outs = launch([scenario], tmp_path=tmp_path, program=(str(SCENARIOS),))
    rep = report(outs[0])
    assert rep["first"] == "KeyboardInterrupt" and rep["seconds"] < 3.0, outs[0]
    assert rep["second"] == "ExecutorClosed", outs[0]
    # (it said "closed by the user or after a lost worker", neither of which, a trial)
    assert rep["why"] == ("this DistributedExecutor is closed (a round was cut by KeyboardInterrupt while the ranks "
                          "were evaluating: their answers could not be told from the next call's; end the job, or "
                          "destroy and re-create the process group)"), outs[0]
    assert "protocol was cut in the middle of a round" in rep["third"], outs[0]  # it would read stale answers
    assert codes[0] == 0, outs  # (the workers, never told to stop, end when the driver's group goes)


def test_one_open_executor_a_group_local_nan_retires_and_an_ignored_sigint_stays_ignored(tmp_path):
    """(Trial 6.) A second executor open on one group ran on the first one's model (the serving rank
    holds one): now it supersedes the first; rank 0's own non-finite output (``local=``) raised where a serving rank's retires
    the faster cores; an ignored SIGINT (SIG_IGN, as under nohup) interrupted the run and cut the group."""
    codes, outs = launch(["misc"], world=2, tmp_path=tmp_path, program=(str(SCENARIOS),))
    rep = report(outs[0])
    assert rep["second_open"].startswith("this DistributedExecutor was superseded by a newer one"), outs[0]
    assert rep["newer_equal"] is True, outs[0]
    assert rep["many_axes"].startswith("states may have at most 8 dimensions") and rep["after_many_axes"], outs[0]
    assert rep["autocast"] is True, outs[0]  # (a user trial: rank 0's torch.autocast was not carried)
    assert any("faster retired after a non-finite model output" in m for m in rep["local_nan"]), outs[0]
    assert rep["local_nan_finite"] is True and rep["ignored_sigint"] is True, outs[0]
    # (a trial: after the close that ended serve on rank 1, the next executor's lost rank said only
    # "connection lost")
    assert rep["after_stop"].startswith("WorkerDied: rank 1") and "was closed, which ends serve() on the serving " \
        "ranks: where they did not call serve() again, do so for each executor" in rep["after_stop"], outs[0]
    assert codes == [0, 0], outs


def test_a_refused_executor_a_slow_local_share_and_interrupts_on_a_serving_rank(tmp_path):
    """(A trial.) A refused ``DistributedExecutor(...)`` superseded the open one, whose close then
    released no rank; rank 0's own share past ``round_timeout`` on 3 MiB states blamed rank 1, which had
    answered, and cut the group (each receive got what was left of the round, 1 ms); a Ctrl-C in a
    serving rank's model reached rank 0 as "connection lost"; an idle serving rank ignored Ctrl-C until
    the driver's next message (20 s in the trial)."""
    codes, outs = launch(["serving"], world=2, tmp_path=tmp_path, program=(str(SCENARIOS),))
    rep = report(outs[0])
    assert rep["refused"] == ["ValueError", "ValueError", "TypeError"] and rep["slow_local_equal"] is True, outs[0]
    assert rep["model_interrupt"].startswith("WorkerError: rank 1: KeyboardInterrupt"), outs[0]
    assert rep["after_equal"] is True, outs[0]
    served = report(outs[1])
    assert served["idle_interrupt"] == "KeyboardInterrupt" and served["seconds"] < 3.0, outs[1]
    assert codes == [0, 0], outs


def test_idle_serving_ranks_outlast_the_group_timeout_and_an_executor_left_open_is_closed_at_exit(tmp_path):
    """(A trial.) A serving rank waited for its next message under the process group's timeout: one
    without points for that long (cores < ranks), or a driver idle between calls, ended it with "lost
    the driver", and torchrun the job. A ``round_timeout`` set after a first call did not reach the
    ranks (their hung-call limit stayed the old one). An executor rank 0 never closed (the README's
    pattern) left every serving rank failing "lost the driver" at rank 0's exit."""
    codes, outs = launch(["idle"], world=3, tmp_path=tmp_path, program=(str(SCENARIOS),))
    rep = report(outs[0])
    assert rep["first_seconds"] > 3.0 and rep["equal"] is True and rep["second_executor_equal"] is True, outs[0]
    assert rep["timeouts_sent"] == [30000, 30000, 20000, 20000], outs[0]  # (a shell to each serving rank)
    assert codes == [0, 0, 0], outs


def test_close_from_another_thread_during_a_round_lets_the_round_finish_then_stops_the_ranks(tmp_path):
    """A review: close() sent its STOP without the round lock, between a round's messages: the serving
    rank read it as the points' times (zeros), evaluated garbage and the job stalled into a
    WorkerTimeout. Now the round ends correctly and the ranks stop after it, whether close waits for it
    (within its grace) or returns first; later calls raise ExecutorClosed."""
    codes, outs = launch(["close_race"], world=2, tmp_path=tmp_path, program=(str(SCENARIOS),))
    rep = report(outs[0])
    for grace in ("5.0", "0.05"):
        assert rep[f"equal_{grace}"] is True and rep[f"after_{grace}"] == "ExecutorClosed", outs
    # (a new executor after a close() that returned first waits for the old round: a second review)
    assert rep["old_round_done_first"] is True and rep["old_equal"] is True and rep["newer_equal"] is True, outs
    assert codes == [0, 0], outs


def test_a_channels_last_state_reaches_the_serving_ranks_in_its_memory_order(tmp_path):
    """A user trial: a channels_last state's stacked points are not contiguous, which gloo refuses: the
    first round raised ``WorkerDied: rank 1 (send): connection lost``, a healthy rank blamed and the group
    cut. They are sent contiguous; then the serving ranks evaluated C-ordered points and sent C-ordered
    outputs, which a convolution rounds differently (as ProcessExecutor's workers did: 6e-3 in bfloat16).
    The header now carries the points' memory order and the answer the outputs': the serial executor's
    result bit for bit, in its memory order, for networks returning their input's order, C order or
    channels_last, float32 and bfloat16, chords and cascade. A review: a round can mix orders (a C-ordered
    state's steps with a channels_last network's outputs, Heun, DPM++(2M)), and one order for the round
    evaluated them all C-ordered (1.9e-5 off); and a channels_last tensor of one channel, which torch
    calls contiguous, was sent as C-ordered (1.5e-5 off): per-point orders, strides kept."""
    codes, outs = launch(["layout"], world=2, tmp_path=tmp_path, program=(str(SCENARIOS),))
    rep = report(outs[0])
    assert rep["sensitive"] == [True, True], rep  # (layout-sensitive networks: the comparison can fail)
    assert len(rep["layout"]) == 72 and all(row[6] and row[7] for row in rep["layout"]), rep["layout"]
    assert codes == [0, 0], outs


def test_a_retirement_on_ranks_takes_the_outputs_before_the_bad_point(tmp_path):
    """A serving rank sends the outputs of its points before a bad one, and the driver passes on the
    round's outputs before it (``ModelOutputError.done``): a retirement costs no round evaluated again,
    with two points a rank and with rank 0 evaluating too (``local=``): the serial executor's rounds
    and outputs (a round more per retirement before)."""
    codes, outs = launch(["done"], tmp_path=tmp_path, program=(str(SCENARIOS),))
    rep = report(outs[0])
    rounds, nfe = rep["serial"]
    assert rounds == 40, rep  # (the field's retirements: rounds as the sequential solver's)
    for name in ("ranks", "local"):
        assert rep[name][:2] == [rounds, nfe] and "retired" in rep[name][2] and rep[name][3] is True, rep
    assert codes == [0, 0, 0], outs


def test_a_hung_rank_ends_itself_once_the_driver_has_given_up(tmp_path):
    """Two ranks: rank 0 handles the WorkerTimeout and exits 0; rank 1, stuck in its model, exits by
    itself (before: it slept on, and a torchrun job with it)."""
    codes, outs = launch(["hung"], world=2, tmp_path=tmp_path, program=(str(SCENARIOS),))
    rep = report(outs[0])
    assert rep["error"].startswith("WorkerTimeout: rank 1") and rep["seconds"] < 10, outs[0]
    assert codes == [0, HUNG_EXIT], outs
    assert f"exits with status {HUNG_EXIT}" in outs[1]


def test_a_hung_rank_ends_the_torchrun_job(tmp_path):
    """Three ranks under torchrun: rank 0 handles the WorkerTimeout and exits 0; the job still ends,
    with a failure status (the other serving rank loses its connection to rank 0, or the hung rank
    ends itself, whichever comes first), instead of waiting on the hung rank forever."""
    t0 = time.monotonic()
    p = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3", str(SCENARIOS), "hung"],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        text = p.communicate(timeout=LAUNCH_TIMEOUT)[0]
    finally:
        _finish([p], 0)
    rep = report(text)
    assert rep["error"].startswith("WorkerTimeout: rank 2") and rep["seconds"] < 10, text
    assert p.returncode != 0, text  # the job failed as a whole: torchrun saw the hung rank's exit status
    assert time.monotonic() - t0 < LAUNCH_TIMEOUT


def test_a_model_shell_that_would_run_code_is_refused_by_the_workers(tmp_path):
    marker = tmp_path / "pwned"
    codes, outs = launch(["pickle", str(marker)], tmp_path=tmp_path, program=(str(SCENARIOS),))
    rep = report(outs[0])
    assert rep["error"].startswith("WorkerError: rank 1") and "not a model shell" in rep["error"], outs[0]
    assert rep["error_rank"] == 1, outs[0]  # (WorkerError.rank was None for a serving rank's error)
    assert rep["file_created"] is False and not marker.exists()
    assert codes == [0, 0, 0], outs


def test_misuse_is_reported_clearly():
    from chords_torch import DistributedExecutor, serve

    with pytest.raises(RuntimeError, match="init_process_group"):
        DistributedExecutor()
    with pytest.raises(RuntimeError, match="init_process_group"):
        serve(lambda x, t: x)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        with pytest.raises(ValueError, match="world size >= 2"):
            DistributedExecutor()
        with pytest.raises(ValueError, match="^batched must be True or False, got 'no'"):  # (it was taken as True)
            DistributedExecutor(batched="no")
        with pytest.raises(RuntimeError, match="ranks != 0"):
            serve(lambda x, t: x)
    finally:
        dist.destroy_process_group()


def test_a_world_of_one_runs_with_a_local_network_as_serial_does():
    # (torchrun --nproc-per-node=1 on a script written for several ranks: refused before, with local= too)
    import chords_core as cc
    from chords_torch import DistributedExecutor

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(6, 6)

        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.lin(x)) * t[:, None]

    net = Net().double().eval()
    sched = cc.RectifiedFlow()
    model, grid = cc.DiffusionModel(net, sched, "flow"), cc.time_grid(sched, 10)
    x = torch.randn(2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        ex = DistributedExecutor(local=net, batched=True)
        with torch.no_grad():
            for method in ("cascade", "chords", "paradigms"):
                got = cc.parallel(model, x, grid, "euler", cores=4, method=method, executor=ex)
                want = cc.parallel(model, x, grid, "euler", cores=4, method=method, executor=cc.SerialExecutor())
                assert torch.equal(got.x, want.x) and got.rounds == want.rounds, method
        ex.close()
        with pytest.raises(RuntimeError, match="closed"):
            cc.parallel(model, x, grid, "euler", cores=4, executor=ex)
    finally:
        dist.destroy_process_group()


class _Payload:
    def __init__(self, target: tuple) -> None:
        self.target = target

    def __reduce__(self) -> tuple:
        return self.target


@pytest.mark.parametrize("target", [(os.system, ("true",)), (eval, ("1 + 1",)), (cc.solve, ())])
def test_load_shell_takes_no_pickle(target):
    import pickle

    from chords_torch._common import ShellError, load_shell

    with pytest.raises(ShellError, match="not a model shell"):
        load_shell(pickle.dumps(_Payload(target)))


@pytest.mark.parametrize("doc,match", [
    ({"o": "posix:system", "s": {}}, "refused to load posix:system"),
    ({"o": "chords_core.sequential:solve", "s": {}}, "refused to load"),  # a library function, not a class
    ({"o": "chords_never_imported_module_xyz:Model", "s": {}}, "refused to load"),  # never imported
    ({"o": "chords_core.models:DiffusionModel", "s": {"__class__": None}}, "refused field name"),
    ({"o": "chords_core.models:DiffusionModel._call", "s": {}}, "refused to load"),
    ({"a": ["|O", [1], [0]]}, "refused array dtype"),
    ({"a": [[["f", "<f8"]], [1], [0]]}, "refused array dtype"),  # a structured dtype
    ({"a": ["<f8", [1], [{"o": "posix:system"}]]}, "something else than numbers"),
    ({"o": "chords_core.schedules:RectifiedFlow", "s": {}}, "must be a chords_core Model"),
])
def test_load_shell_refuses_anything_but_plain_data_and_the_library_classes(doc, match):
    import json

    from chords_torch._common import ShellError, load_shell

    with pytest.raises(ShellError, match=match):
        load_shell(json.dumps(doc).encode())
    assert "chords_never_imported_module_xyz" not in sys.modules


def test_a_shell_cannot_change_the_library_classes():
    """A pickle could BUILD onto a class object and rewrite its methods for the whole process; plain
    data only ever sets fields of a new instance."""
    import json

    from chords_torch._common import load_shell

    doc = {"o": "chords_core.models:DiffusionModel",
           "s": {"_call": None, "evaluate": None, "fn": None, "prediction": "eps", "check_outputs": True,
                 "schedule": {"o": "chords_core.schedules:RectifiedFlow", "s": {}}}}
    load_shell(json.dumps(doc).encode())
    m = cc.DiffusionModel(lambda x, t: x, cc.RectifiedFlow(), "flow")
    import numpy as np

    assert np.array_equal(m.evaluate([np.ones((1, 2))], [0.5])[0], np.ones((1, 2)))


def test_every_library_model_shell_travels_as_plain_data():
    import numpy as np

    from chords_diffusers.schedulers import VESigmaVP, VPSigma
    from chords_torch._common import ShellError, dump_shell, load_shell

    schedules = [cc.RectifiedFlow(), cc.VP.linear(), cc.VP.cosine(), cc.EDM(), VESigmaVP(), VPSigma()]
    models = [cc.DiffusionModel(lambda x, t: x, s, p, check_outputs=c)
              for s in schedules for p, c in (("eps", True), ("v", "deferred"))]
    models.append(cc.VectorField(lambda t, y: -y, batched=True))
    for m in models:
        shell = load_shell(dump_shell(m))
        assert type(shell) is type(m) and getattr(shell, "fn", getattr(shell, "f", 0)) is None
        assert shell.check_outputs == m.check_outputs
        if isinstance(m, cc.DiffusionModel):
            assert shell.schedule == m.schedule and hash(shell.schedule) == hash(m.schedule)
            assert shell.prediction == m.prediction
            ts = np.linspace(0.2, 0.8, 5)
            assert np.array_equal(shell.schedule.alpha(ts), m.schedule.alpha(ts))
    odd = cc.DiffusionModel(lambda x, t: x, cc.RectifiedFlow(), "flow")
    odd.extra = object()
    with pytest.raises(ShellError, match="holds a object at model.extra"):
        dump_shell(odd)


def test_timeout_keyword_is_a_deprecated_alias_of_round_timeout():
    from chords_torch import DeviceExecutor

    with pytest.warns(DeprecationWarning, match="round_timeout"):
        ex = DeviceExecutor(["cpu"], timeout=3)
    assert ex.round_timeout == 3.0
    ex.close()
    with pytest.raises(ValueError, match="round_timeout must be a positive number"):
        DeviceExecutor(["cpu"], round_timeout=0)


def test_idle_timeout_bounds_a_serving_ranks_wait_for_the_driver(tmp_path):
    codes, outs = launch(["idle_timeout"], world=2, tmp_path=tmp_path, program=(str(SCENARIOS),))
    rep = report(outs[1])
    assert rep["error"].startswith("WorkerTimeout: rank 1: no message from the driver within idle_timeout=1 s"), outs
    assert 0.9 < rep["seconds"] < 2.9 and codes == [0, 0], outs
    # (a user trial: a serving rank's own network in training mode was not warned of, rank 0 checking only
    # the call's model, which that rank does not run)
    assert [w for w in rep["warnings"] if w.startswith("serve (rank 1): the network's batch-norm layer 'BatchNorm1d' is in "
                                                       "training mode")], rep["warnings"]


@pytest.mark.parametrize("stderr", ["as it is", "None"])
def test_a_model_call_that_holds_the_gil_still_ends_the_serving_rank(stderr):
    """(A trial.) The hung-call watch is a Python thread, which a model holding the GIL in native code
    (a regex that backtracks for ever) keeps from running: the rank lived on, and torchrun's job with
    it. ``faulthandler`` (a C thread) ends it ``HUNG_BACKSTOP`` seconds past the watch's deadline,
    writing to file descriptor 2 (with ``sys.stderr`` None or a StringIO, arming it failed every
    evaluation: a review)."""
    code = textwrap.dedent(f"""
        import re, sys, time
        from chords_torch import distributed as d
        d.HUNG_GRACE, d.HUNG_BACKSTOP = 0.2, 0.3
        watch = d._HungWatch(1, period=0.05)
        watch.limit = 0.5
        sys.stderr = {"sys.stderr" if stderr == "as it is" else None}
        watch.start()
        print("started", flush=True)
        re.match(r"(a+)+$", "a" * 64 + "b")  # holds the GIL for far longer than any test
        print("returned", flush=True)
    """)
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    assert p.returncode == 1 and "started" in p.stdout and "returned" not in p.stdout, (p.stdout, p.stderr)
    assert "Timeout" in p.stderr and time.monotonic() - t0 < 60, p.stderr  # (faulthandler's dump: "Timeout (0:00:01)!")


def test_a_process_group_destroyed_and_made_again_is_let_go():
    """A trial: the executors' record of each process group held the group itself, so a group
    destroyed and made again (docs/torch.md's advice after a cut round) kept its gloo sockets and
    threads, 4 file descriptors and 3 threads a cycle, until ``init_process_group`` failed with "Too
    many open files" after about 250 cycles under ``ulimit -n 1024``."""
    import gc
    import os

    import chords_core as cc
    from chords_torch import DistributedExecutor
    from chords_torch import distributed as cdist

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(3, 3)

        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.lin(x) * t[:, None]

    net = Net().double().eval()
    sched = cc.RectifiedFlow()
    model, grid = cc.DiffusionModel(net, sched, "flow"), cc.time_grid(sched, 4)
    x = torch.randn(2, 3, dtype=torch.float64)

    def cycle() -> None:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        try:
            with torch.no_grad(), DistributedExecutor(local=net) as ex:
                cc.chords(model, x, grid, "euler", cores=2, executor=ex)
        finally:
            dist.destroy_process_group()
        gc.collect()

    cycle()  # (the first group's one-time threads and files)
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(10):
        cycle()
    assert len(cdist._GROUPS) == 0
    assert len(os.listdir("/proc/self/fd")) - fds < 10  # (40 before: 4 a group kept)
