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
    jx = gc.check_jax(allow_cpu=True, steps=8)
    assert jx["ok"] and jx["platform"] == "cpu" and jx["max_abs_diff"] <= 1e-4
    sp = gc.speedup(cpu, ms=1.0, steps=8, repeats=1, dim=16, width=16, depth=2)
    assert set(sp["methods"]) == {"batched x4 (one GPU)", "DeviceExecutor x2"}
    assert all(m["rounds"] < 8 for m in sp["methods"].values()) and sp["batch"] >= 8
