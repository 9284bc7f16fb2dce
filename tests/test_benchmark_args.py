"""The benchmark scripts refuse bad option values at parse time: argparse's usage error (exit status 2)
naming the option, before any work. A user trial got raw tracebacks, values silently replaced, and
``train_digits.py --steps 0`` overwriting the committed network with an untrained one."""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from unittest import mock

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

NOT_JSON, NOT_RECORD = "<not json>", "<not a record>"  # (replaced by files in tmp_path)

BAD = {
    "batching": [["--repeats", "0"], ["--points", "0"]],
    "chords_stop": [["--family", "foo"], ["--seeds", "-1"], ["--batch", "0"], ["--solvers", "foo"], ["--steps", "0"],
                    ["--cores", "0"], ["--cores", "8", "--steps", "3"]],
    "engine_ab": [["--repeats", "0"], ["--sizes", "-64"], ["--sizes", "0"], ["--base", "nosuchcommit"]],
    # (a trial: an empty --workloads or --solvers printed an empty table, and exited 0)
    "error_scale": [["--solvers", "foo"], ["--solvers", "euler:0"], ["--solvers", "euler"], ["--fine", "0"],
                    ["--workloads"], ["--solvers"]],
    "few_steps": [["--steps", "0"], ["--cores", "0"], ["--seeds", "-1"], ["--solver", "foo"], ["--spacing", "foo"],
                  ["--spacing", "karras", "--schedules", "rf"], ["--cores", "50", "--steps", "3"]],
    "half_precision": [["--seeds", "-1"], ["--problems", "0"], ["--dtypes", "float8"], ["--band", "-1"]],
    "jax_rounds": [["--repeat", "0"], ["--solvers", "foo"], ["--devices", "-1"], ["--sizes", "0"]],
    "level_tol": [["--tols", "nan"], ["--tols", "-1"], ["--tols", "inf"], ["--show", "-1"], ["--level-floor", "0"]],
    "overhead": [["--sizes", "0"], ["--repeats", "0"], ["--repeats", "-2"]],
    # (a user trial: tracebacks from --steps / --cores / --solver, --seeds -1, and exclusive sets combined silently)
    "plain_odes": [["--steps", "0"], ["--steps", "-3"], ["--cores", "0"], ["--solver", "dpmpp_2m"]],
    "linear_odes": [["--seeds", "-1"]],
    "short_steps": [["--spread", "0.5"], ["--spread", "nan"], ["--seeds", "-1"]],
    "single_gaussian": [["--methods", "foo"], ["--show", "-1"], ["--steps", "0"], ["--solvers", "foo"],
                        ["--cores", "9", "--steps", "6"]],
    "suite": [["--report", "/nonexistent.json"], ["--report", NOT_JSON], ["--report", NOT_RECORD], ["--workloads"]],
    "terrain": [["--steps", "0"], ["--repeats", "0"], ["--batch", "0"], ["--difficulty", "-5"],
                ["--difficulty", "101"], ["--cores", "0"], ["--cores", "30"], ["--seed", "-1", "--quick"],
                ["--ref-steps", "-1"], ["--report", "/nonexistent.json"], ["--report", NOT_JSON],
                ["--report", NOT_RECORD]],
    "train_digits": [["--steps", "0"], ["--steps", "-1"], ["--batch", "0"], ["--width", "0"], ["--depth", "0"],
                     ["--lr", "nan"], ["--lr", "-1"], ["--lr", "0"]],
    "wallclock": [["--steps", "0"], ["--steps", "3"], ["--cores", "0"], ["--repeats", "0"], ["--ms", "nan"], ["--cores"]],
    "gpu_check": [["--ms", "-1"], ["--ms", "nan", "--allow-cpu"], ["--ms", "inf"]],
}


@pytest.mark.parametrize("script,args", [(s, a) for s, cases in BAD.items() for a in cases],
                         ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_a_bad_value_is_a_usage_error_naming_the_option(script, args, tmp_path, capsys):
    (tmp_path / "bad.json").write_text("not json")
    (tmp_path / "other.json").write_text(json.dumps({"meta": {}}))
    args = [{NOT_JSON: str(tmp_path / "bad.json"), NOT_RECORD: str(tmp_path / "other.json")}.get(v, v) for v in args]
    if script == "train_digits":
        args += ["--out", str(tmp_path / "net.npz")]
    with mock.patch.dict(os.environ):  # (suite.py sets OPENBLAS_NUM_THREADS at import)
        main = importlib.import_module(script).main
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert f"error: argument {args[0]}" in err and len(err.strip().splitlines()[-1]) < 400, err
    assert not list(tmp_path.glob("net.*"))


def test_train_digits_steps_0_writes_nothing(tmp_path):
    out = tmp_path / "x.npz"
    with pytest.raises(SystemExit) as e:
        importlib.import_module("train_digits").main(["--steps", "0", "--out", str(out)])
    assert e.value.code == 2 and not out.exists() and not out.with_suffix(".sha256").exists()


def test_error_scale_parses_solver_steps():
    assert importlib.import_module("error_scale").solver_steps("dpmpp_2m:20") == ("dpmpp_2m", 20)


def test_gpu_check_skips_cleanly_without_a_gpu(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert importlib.import_module("gpu_check").main([]) == 0
    assert "skipped: no CUDA GPU" in capsys.readouterr().out


@pytest.mark.parametrize("args", [["--steps", "0"], ["--timeout", "-1"], ["--timeout", "nan"], ["--cores", "0"],
                                  ["--solver", "foo"]])
def test_torch_demo_refuses_bad_values(args, capsys):
    from chords_torch import demo

    with pytest.raises(SystemExit) as e:
        demo.main(args)
    assert e.value.code == 2 and f"error: argument {args[0]}" in capsys.readouterr().err


def test_torch_demo_without_torchrun_says_so(capsys, monkeypatch):
    from chords_torch import demo

    monkeypatch.delenv("RANK", raising=False)
    assert demo.main(["--steps", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "torchrun" in err and "Traceback" not in err


def test_terrain_writes_its_committed_record_only_for_a_full_run(tmp_path, monkeypatch):
    """The README names ``terrain.py --methods cascade --repeats 3`` for a figure; running it replaced
    the committed full record (every method) with that run's rows."""
    terrain = importlib.import_module("terrain")
    record = tmp_path / "terrain.json"
    monkeypatch.setattr(terrain, "RESULTS", record)
    monkeypatch.setattr(terrain, "available", lambda: True)
    monkeypatch.setattr(terrain, "run", lambda a: {"methods": list(a.methods)})
    monkeypatch.setattr(terrain, "table", lambda rec: "")
    terrain.main(["--methods", "cascade", "--repeats", "3"])
    assert not record.exists()
    terrain.main(["--methods", "cascade", "--out", str(tmp_path / "mine.json")])
    assert json.loads((tmp_path / "mine.json").read_text()) == {"methods": ["cascade"]}
    terrain.main([])
    assert json.loads(record.read_text())["methods"] == list(terrain.METHODS)


@pytest.mark.parametrize("args", [["--stiff", "--forced"], ["--more", "--forced"], ["--stiff", "--more"]])
def test_plain_odes_problem_sets_exclude_each_other(args, capsys):
    """Each of ``--stiff``, ``--more``, ``--forced`` runs its set "instead": combined, one ran alone silently."""
    with pytest.raises(SystemExit) as e:
        importlib.import_module("plain_odes").main(args)
    assert e.value.code == 2 and f"error: argument {args[1]}: not allowed with argument {args[0]}" in capsys.readouterr().err
