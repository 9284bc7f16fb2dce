"""chords_torch over torch.distributed: 3 processes on gloo on this machine, started from pytest.

Rank 0 drives the core engine with a DistributedExecutor, ranks 1 and 2 ``serve``
(``python -m chords_torch.demo``). Checks: bit-for-bit equality with the serial executor, and
that a bad output or a killed rank raises a clear error in rank 0 with every process exiting.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist  # noqa: E402

if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available in this torch build", allow_module_level=True)

BACKENDS = Path(__file__).resolve().parents[1] / "backends"
import chords_core as cc  # noqa: E402
from chords_torch.testing import gmm_problem  # noqa: E402

LAUNCH_TIMEOUT = 120  # seconds for a whole launch (three interpreters importing torch on a busy machine)


def _env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BACKENDS), env.get("PYTHONPATH")]))
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _finish(procs: list, timeout: float) -> list[int]:
    """Wait for every process; on timeout kill their process groups. Returns the exit codes."""
    try:
        return [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def launch(args: list[str], world: int = 3, tmp_path: Path | None = None) -> tuple[list[int], list[str]]:
    """What torchrun does, by hand: ``world`` processes with RANK / WORLD_SIZE / MASTER_* set."""
    port, procs, logs = _free_port(), [], []
    for r in range(world):
        log = open(tmp_path / f"rank{r}.log", "w+")
        env = _env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world))
        procs.append(subprocess.Popen([sys.executable, "-m", "chords_torch.demo", *args], env=env, stdout=log,
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
    codes, outs = launch(["--fault", "nan", "--fault-rank", "2", "--fault-after", "2"], tmp_path=tmp_path)
    rep = report(outs[0])
    # rank 2 serves core 1 (rank 0 only drives); its 2nd evaluation is in round 3 (core 1 starts in round 2)
    assert rep["error"].startswith("ModelOutputError: round 3, core 1") and "non-finite" in rep["error"], outs[0]
    assert codes == [1, 0, 0], outs  # the driver failed, both workers were told to stop and left cleanly


def test_killed_rank_raises_in_the_driver_within_the_timeout(tmp_path):
    codes, outs = launch(["--fault", "die", "--fault-rank", "1", "--fault-after", "3", "--timeout", "20"], tmp_path=tmp_path)
    rep = report(outs[0])
    assert rep["error"].startswith("WorkerDied: rank 1"), outs[0]
    assert codes[0] == 1 and codes[1] == -signal.SIGKILL and codes[2] == 0, outs


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
        with pytest.raises(RuntimeError, match="ranks != 0"):
            serve(lambda x, t: x)
    finally:
        dist.destroy_process_group()
