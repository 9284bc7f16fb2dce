"""benchmarks/gpu_check.py: skips cleanly without a GPU; its checks run (on the CPU) and compare."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", PATH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_without_a_gpu_it_says_so_and_exits_0(capsys, monkeypatch):
    gc = _module()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gc.main([]) == 0
    assert "no CUDA GPU is visible here" in capsys.readouterr().out


def test_its_checks_compare_with_the_serial_result_on_the_cpu():
    gc = _module()
    cpu = [torch.device("cpu")] * 2
    dev = gc.check_devices(cpu, steps=8)
    assert dev["ok"] and dev["max_abs_diff"] == 0.0 and dev["core0_equals_solve"]
    assert dev["max_abs_diff_own_stream"] == 0.0
    dif = gc.check_diffusers(torch.device("cpu"), steps=6)
    assert dif["ok"] and len(dif["schedulers"]) == 3
    jx = gc.check_jax(allow_cpu=True, steps=8)
    assert jx["ok"] and jx["platform"] == "cpu" and jx["max_abs_diff"] <= 1e-4
    sp = gc.speedup(cpu, ms=1.0, steps=8, repeats=1, dim=16, width=16, depth=2)
    assert set(sp["methods"]) == {"batched x4 (one GPU)", "DeviceExecutor x2"}
    assert all(m["rounds"] < 8 for m in sp["methods"].values()) and sp["batch"] >= 8


def test_a_torchrun_past_its_timeout_is_ended_with_its_ranks(tmp_path):
    """torchrun starts each rank in a session of its own: killing torchrun, or its process group, left
    the ranks running (a review: two sleeping ranks outlived it, and reading their pipes then hung)."""
    import os
    import subprocess
    import time

    gc = _module()
    script = tmp_path / "rank.py"
    script.write_text("import os, time, pathlib\n"
                      "pathlib.Path(os.environ['PIDS'], os.environ['RANK']).write_text(str(os.getpid()))\n"
                      "time.sleep(600)\n")
    env = dict(os.environ, PIDS=str(tmp_path), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while len([p for p in tmp_path.iterdir() if p.name.isdigit()]) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    pids = [int(p.read_text()) for p in tmp_path.iterdir() if p.name.isdigit()]
    assert len(pids) == 2
    t0 = time.monotonic()
    gc.stop_torchrun(proc, grace=20)
    assert time.monotonic() - t0 < 20 and proc.poll() is not None

    def alive(pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in pids)
