"""The demo command line (issue #2: table and PNG)."""

import os

import pytest

import chords_core as cc
from chords_core.__main__ import main


def test_demo_prints_table_and_writes_plot(tmp_path, capsys):
    out = tmp_path / "plots"
    assert main(["demo", "--solver", "euler", "dpmpp_2m", "--cores", "2", "8", "--dim", "8", "--modes", "3",
                 "--samples", "4", "--out", str(out)]) == 0
    text, methods = capsys.readouterr().out.split("Every method at its defaults")  # the CHORDS table comes first
    rows = [line for line in text.splitlines() if line.startswith("| euler") or line.startswith("| dpmpp_2m")]
    assert len(rows) == 6  # sequential + 2 core counts, per solver
    assert len([line for line in methods.splitlines() if line.startswith("| euler |")]) == 3 * 6  # 1, 2, 8 cores
    eight = next(r for r in rows if r.startswith("| euler | 50 | 8 |"))
    cells = [c.strip() for c in eight.strip("|").split("|")]
    assert cells[3] == "0-2-4-8-16-24-32-40" and cells[4] == "17" and cells[5] == "2.94x" and cells[6] == "108"
    assert float(cells[7]) > 0 and float(cells[8]) > 0
    assert os.path.getsize(out / "hits_error_vs_round.png") > 10_000


def test_demo_flags(tmp_path, capsys):
    assert main(["demo", "--solver", "heun", "--init", "0-4-8", "--steps", "12", "--stop", "none", "--schedule", "vp",
                 "--dim", "4", "--modes", "2", "--samples", "2", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    row = next(line for line in text.splitlines() if line.startswith("| heun | 12 | 3 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[4] == "23" and float(cells[7]) == 0.0  # stop=none returns the sequential result (2*12-1 rounds)


@pytest.mark.parametrize("argv, message", [(["--stop", "fastest"], "--stop"), (["--init", "0,a"], "--init")])
def test_demo_rejects_bad_flags(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(["demo", *argv])
    assert message in capsys.readouterr().err


def test_unknown_command(capsys):
    assert main(["fly"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ") and "error: unknown command 'fly'" in err  # (no usage line before)


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    assert "demo" in out and "optimize" in out and "CHORDS vs the sequential solver" in out


def test_every_option_has_help_text():
    from chords_core.__main__ import build_parser

    parser = build_parser()
    subs = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name, sub in subs.items():
        for action in sub._actions:
            if action.dest != "help":
                assert action.help, f"{name} --{action.dest} has no help text"


@pytest.mark.parametrize("argv, message", [
    (["demo", "--stop", "core:9", "--cores", "2", "--solver", "euler", "--dim", "2", "--modes", "1", "--samples", "1"],
     "--stop: core:9 asks for output 9, and a run on 2 core(s) makes 2"),
    (["demo", "--solver", "rk4"], "invalid choice"),
    (["demo", "--cores", "two"], "argument --cores: must be an integer >= 1, got 'two'"),
    # (a user trial: optimize named the library's arguments, cores, budget, solver, not its options; demo
    # blamed --cores for the default core counts and wrote "1 steps")
    (["optimize", "--steps", "12", "--cores", "30"], "error: --cores: at most --steps (12), got 30"),
    (["optimize", "--budget", "0.5"], "argument --budget: must be a finite number >= 1"),
    (["optimize", "--budget", "nan"], "argument --budget: must be a finite number >= 1"),
    (["optimize", "--solver", "nope"], "argument --solver: invalid choice: 'nope'"),
    (["demo", "--steps", "1"], "--cores: at most the steps; euler runs 1 step, and the default core counts (2 4 8) "
                               "ask for 8"),
    # counts below their least value name the option (--steps 0 ran the default steps, --samples 0
    # printed nan rows, optimize --samples 0 died in min())
    *[([cmd, flag, value], f"argument {flag}: must be an integer {least}, got '{value}'")
      for cmd in ("demo", "optimize")
      for flag, value, least in (("--steps", "0", "in [1, 100000]"), ("--samples", "0", ">= 1"),
                                 ("--samples", "-1", ">= 1"), ("--seed", "-1", ">= 0"), ("--cores", "0", ">= 1"),
                                 ("--dim", "0", ">= 1"), ("--modes", "0", ">= 1"))],
    (["optimize", "--max-evals", "-1"], "argument --max-evals: must be an integer >= 0"),
    (["demo", "--stop", "residual"], "argument --stop: residual needs its tolerance, residual:TOL"),  # (float(''))
    (["demo", "--stop", "residual:1e-3:l1"], "argument --stop: StopOnResidual(norm): norm must be one of"),
    # a review: "--stop: --stop: invalid literal for int()", core: taken as core:1, and --cores above a
    # solver's default steps failing after the first solver's whole run
    (["demo", "--stop", "core:x"], "argument --stop: core:N needs an integer N, got 'x'"),
    (["demo", "--stop", "core:"], "argument --stop: core needs its output number, core:N"),
    (["demo", "--solver", "euler", "heun", "--cores", "26"], "--cores: at most the steps; heun runs 25 steps (its default)"),
    (["optimize", "--exhaustive-limit", "-2"], "argument --exhaustive-limit: must be an integer >= 0"),
    # the help's init example failed after the Euler run, naming neither --steps nor the solver
    (["demo", "--init", "0-2-4-8-16-24-32-40"], "--init: its starts must lie below the steps; dpmpp_2m runs 20 steps"),
])
def test_bad_values_exit_2_with_a_usage_error(argv, message, capsys):
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own checks
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and err.startswith("usage:")


def test_a_reader_that_leaves_ends_the_demo_quietly(tmp_path):
    """A review: ``chords demo | head -1`` ended in a BrokenPipeError traceback (status 1); now status
    141, as other tools, nothing on stderr (the reader is gone before the first line here)."""
    import subprocess
    import sys

    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run([sys.executable, "-m", "chords_core", "demo", "--cores", "2", "--solver", "euler", "--steps",
                            "4", "--dim", "2", "--modes", "1", "--samples", "1", "--out", str(tmp_path)],
                           stdout=w, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(w)
    assert p.returncode == 141 and p.stderr == ""


def test_console_script_is_installed():
    import shutil
    import sys
    from pathlib import Path

    script = shutil.which("chords", path=str(Path(sys.executable).parent))
    assert script is not None, "the 'chords' console script is not installed next to this Python"


def test_ctrl_c_exits_130_with_one_line(monkeypatch, capsys):
    from chords_core import demo

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "run_main", interrupted)
    assert main(["demo", "--steps", "4"]) == 130
    err = capsys.readouterr().err
    assert err == "python -m chords_core demo: interrupted\n"


def test_ctrl_c_during_the_imports_and_running_out_of_memory_are_one_line(monkeypatch, capsys):
    """A user trial: Ctrl-C in the first half second (building the parser, importing the demo and
    scipy) printed a 40-line traceback; a size the parser accepted (--steps 2147483647, refused since)
    died with a MemoryError traceback."""
    import chords_core.__main__ as cli
    from chords_core import demo

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert main(["demo"]) == 130 and capsys.readouterr().err == "python -m chords_core demo: interrupted\n"
    # (a review: named "demo" whatever the subcommand, before the parser was built)
    assert main(["optimize"]) == 130 and capsys.readouterr().err == "python -m chords_core optimize: interrupted\n"
    monkeypatch.undo()

    def too_big(args):
        raise MemoryError("Unable to allocate 16.0 GiB")

    monkeypatch.setattr(demo, "run_main", too_big)
    assert main(["demo", "--samples", "100000000000"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("python -m chords_core demo: out of memory (Unable to allocate 16.0 GiB)") and "--steps" in err


def test_steps_beyond_the_command_lines_limit_are_a_usage_error(capsys):
    """A user trial: --steps 2147483647 allocated a 16 GiB grid on an overcommitting machine, which filled
    its memory until the kernel killed the run (no MemoryError to report) after 50 s."""
    for command in ("demo", "optimize"):
        with pytest.raises(SystemExit) as info:
            main([command, "--steps", "2147483647"])
        assert info.value.code == 2
        assert "argument --steps: must be an integer in [1, 100000], got '2147483647'" in capsys.readouterr().err


def test_an_output_that_cannot_be_written_is_one_line_and_status_1(tmp_path):
    """A user trial: `chords optimize ... > /dev/full` (a full disk) ended in an OSError traceback."""
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    for args in (["optimize", "--steps", "6", "--cores", "2"], ["demo", "--steps", "4", "--cores", "2",
                                                                   "--solver", "euler", "--dim", "4"]):
        with open("/dev/full", "w") as full:
            p = subprocess.run([sys.executable, "-m", "chords_core", *args], stdout=full, stderr=subprocess.PIPE,
                               text=True, env=env, timeout=120)
        assert p.returncode == 1, p.stderr
        assert p.stderr.strip().endswith("could not write the output ([Errno 28] No space left on device)"), p.stderr
        assert "Traceback" not in p.stderr


def test_another_os_error_keeps_its_traceback_and_stdout(monkeypatch, capsys):
    """A review: the handler of an output that cannot be written took any OSError for one, and pointed
    the caller's stdout at /dev/null."""
    import errno

    from chords_core import demo

    def fails(args):
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(demo, "run_main", fails)
    with pytest.raises(OSError, match="Cannot allocate memory"):
        main(["demo", "--steps", "4", "--cores", "2"])
    print("still here")
    assert capsys.readouterr().out == "still here\n"


def test_progress_without_tqdm_is_a_usage_error_before_any_run(monkeypatch, capsys):
    """A review: `optimize --progress` without tqdm ended in an ImportError traceback after the calibration."""
    import sys

    from chords_core.tuning import search

    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setattr(search, "calibration", lambda *a, **k: pytest.fail("the calibration ran"))
    assert main(["optimize", "--steps", "6", "--cores", "2", "--progress"]) == 2
    err = capsys.readouterr().err
    assert "error: --progress: progress=True shows a bar with tqdm, which is not installed" in err
    assert "or leave out --progress" in err
    with pytest.raises(ImportError, match="or pass progress=False"):
        search.optimize_init(6, 2, progress=True)


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"python -m chords_core {cc.__version__}"


def test_an_unknown_option_is_named_in_its_subcommands_usage(capsys):
    """(argparse reported it in the top-level usage, naming no subcommand.)"""
    for command in ("demo", "optimize"):
        with pytest.raises(SystemExit) as info:
            main([command, "--bogus"])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"usage: python -m chords_core {command} ") and err.endswith(
            f"python -m chords_core {command}: error: unrecognized arguments: --bogus\n")


def test_usage_errors_come_before_the_out_folder_is_made(tmp_path, monkeypatch, capsys):
    """A user trial: a bad --init, a --stop core:N beyond the cores, were refused only after --out
    (nested folders included) was made, and core:N after the runs before it, naming no option."""
    from chords_core import demo

    monkeypatch.setattr(demo, "run", lambda args: pytest.fail("the run started before the options were checked"))
    for argv, message in ((["--init", "1-4"], "--init: init must start at 0"),
                          (["--init", "0-4-2"], "--init: init must be strictly increasing"),
                          (["--stop", "core:8", "--cores", "4"], "--stop: core:8 asks for output 8, and a run on 4 "),
                          (["--stop", "core:3", "--cores", "4", "2"], "a run on 2 core(s) makes 2: give more --cores"),
                          (["--stop", "core:4", "--init", "0-2-4"], "makes 3: give a longer --init")):
        out = tmp_path / "a" / "b"
        assert main(["demo", "--solver", "euler", *argv, "--out", str(out)]) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "a").exists(), argv
    with pytest.raises(SystemExit):  # (a trailing colon was taken as the default norm)
        main(["demo", "--stop", "residual:1e-3:"])
    assert "needs its norm after the second colon" in capsys.readouterr().err


def test_a_plot_that_cannot_be_written_keeps_the_tables(tmp_path, capsys):
    """A user trial: a plot that could not be written (its name an existing folder) ended a finished
    run in an IsADirectoryError traceback, status 1, the tables never printed; without matplotlib the
    demo listed three plots it never wrote. Solvers and core counts given twice ran twice."""
    import sys

    (tmp_path / "chords_schedule.png").mkdir()
    argv = ["demo", "--solver", "euler", "euler", "--cores", "2", "2", "--steps", "10", "--dim", "2", "--modes", "2",
            "--samples", "2", "--out", str(tmp_path)]
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert err == f"could not write {tmp_path / 'chords_schedule.png'}: Is a directory\n"
    rows = [line for line in out.splitlines() if line.startswith("| euler | 10 |")]
    assert len(rows) == 2 + 6 * 2  # (sequential and 2 cores; every method at 1 and 2 cores), once each
    assert out.rstrip().endswith(f"plots: {tmp_path / 'hits_error_vs_round.png'}, "
                                 f"{tmp_path / 'methods_error_vs_rounds.png'}")
    saved = sys.modules.get("matplotlib")
    sys.modules["matplotlib"] = None  # type: ignore[assignment]
    try:
        assert main(argv[:-1] + [str(tmp_path / "none")]) == 0
    finally:
        sys.modules["matplotlib"] = saved  # type: ignore[assignment]
    out = capsys.readouterr().out
    assert out.count("matplotlib not installed") <= 1 and out.rstrip().endswith("plots: none written")


def test_console_script_names_itself_in_a_value_error():
    """A value only the run can check (``--init`` against the steps) is reported in the program's own
    name: the console script said "python -m chords_core demo: error"."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    script = shutil.which("chords", path=str(Path(sys.executable).parent))
    assert script is not None
    r = subprocess.run([script, "demo", "--init", "0-2-4-8-16-24-32-40"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "\nchords demo: error: --init" in r.stderr and "python -m" not in r.stderr


def test_demo_figures_have_the_expected_panels(tmp_path):
    from chords_core import METHODS, demo

    args = demo.build_parser().parse_args(["--solver", "euler", "dpmpp_2m", "--cores", "2", "4", "--dim", "4", "--modes",
                                           "2", "--samples", "2", "--out", str(tmp_path)])
    _, rows, plots = demo.run(args)
    assert sorted(os.path.basename(p) for p in plots) == sorted(
        ["hits_error_vs_round.png", "methods_error_vs_rounds.png", "chords_schedule.png"])
    assert {r["method"] for r in rows} == set(METHODS) and {r["cores"] for r in rows} == {1, 2, 4}
    baselines = {s: (st, e, b) for s, st, e, b in [("euler", 50, 1.0, [(10, 2.0), (50, 1.0)]),
                                                    ("dpmpp_2m", 20, 1.0, [(10, 2.0), (20, 1.0)])]}
    summary = demo.write_methods_figure(rows, baselines, str(tmp_path))
    assert list(summary) == ["euler, 50 steps", "dpmpp_2m, 20 steps"]
    for panel in summary.values():  # the baseline and one line per method
        assert panel["lines"] == 1 + len(METHODS)
        assert panel["xlabel"].startswith("rounds") and panel["ylabel"].startswith("RMS error")
    sched = demo.write_schedule_figure(8, str(tmp_path))
    plan = __import__("chords_core").make_plan(50, (0, 2, 4, 8, 16, 24, 32, 40))
    assert sched["outputs"] == 8 and sched["evaluations"] == plan.nfe()
    assert sched["rectifications"] == sum(plan.rectifications(c) for c in range(8))
    for name in ("methods_error_vs_rounds.png", "chords_schedule.png", "hits_error_vs_round.png"):
        assert os.path.getsize(tmp_path / name) > 10_000
    table = demo.format_methods_table(rows)
    assert ("**NO**" in table) == any(not r["ok"] for r in rows) and table.count("\n") == len(rows) + 1


def test_a_bad_out_folder_is_a_usage_error_before_the_run(monkeypatch, capsys):
    """(An existing file or an unwritable place as --out raised FileExistsError / FileNotFoundError
    with a traceback and status 1, after the whole run.)"""
    from chords_core import demo

    monkeypatch.setattr(demo, "run", lambda args: pytest.fail("the run started before --out was checked"))
    # a file; a folder below a file; an existing folder that takes no files (makedirs passed it)
    for out in (__file__, os.path.join(__file__, "sub"), *(["/proc"] if os.path.isdir("/proc") else [])):
        assert main(["demo", "--out", out]) == 2
        err = capsys.readouterr().err
        assert err.startswith("usage:") and "--out: cannot make or use the folder" in err and "Traceback" not in err


def test_cores_with_init_is_a_usage_error(capsys):
    """``--init`` fixes the core count; ``--cores`` beside it was ignored silently."""
    from chords_core.__main__ import main

    assert main(["demo", "--init", "0-2-4", "--cores", "2", "--solver", "euler", "--dim", "2", "--samples", "2"]) == 2
    assert "error: --cores: --init fixes the core count (3); give one or the other" in capsys.readouterr().err


def test_the_schedule_figure_draws_the_run_the_user_asked_for(tmp_path, monkeypatch):
    """A user trial: ``chords demo --solver heun --steps 25 --init 0-4-8-16`` drew "T = 50, init
    0-8-16-32" with one evaluation a step, whatever the options."""
    import chords_core as cc
    from chords_core import demo

    drawn = {}
    real = demo.write_schedule_figure
    monkeypatch.setattr(demo, "write_schedule_figure",
                        lambda *a, **k: drawn.update(real(*a, **k)) or drawn)
    args = demo.build_parser().parse_args(["--solver", "heun", "--steps", "25", "--init", "0-4-8-16", "--dim", "4",
                                           "--modes", "2", "--samples", "2", "--out", str(tmp_path)])
    demo.run(args)
    one_a_step = cc.make_plan(25, (0, 4, 8, 16)).nfe()  # (72: the figure drawn before)
    assert drawn["title"] == "CHORDS schedule, heun, T = 25, init 0-4-8-16"
    assert drawn["evaluations"] > 1.9 * one_a_step and drawn["outputs"] == 4  # Heun: two evaluations a step


def test_the_residual_stop_takes_the_reference_norm():
    """``--stop residual:TOL:l2/numel``: the reference code's residual (``StopOnResidual(norm=...)``)."""
    import chords_core as cc
    from chords_core.demo import parse_stop

    assert parse_stop("residual:4e-4:l2/numel") == cc.StopOnResidual(4e-4, norm="l2/numel")
    assert parse_stop("residual:1e-3") == cc.StopOnResidual(1e-3)


def _ctrl_c_at(monkeypatch, n: int) -> list:
    """Make the init search's ``n``-th sequence measured raise KeyboardInterrupt (a Ctrl-C there); the
    list of the sequences asked for, which the caller clears to count again."""
    from chords_core.tuning import search

    real, calls = search.Evaluator.__call__, []

    def cut(self, init):
        calls.append(init)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(self, init)

    monkeypatch.setattr(search.Evaluator, "__call__", cut)
    return calls


def test_an_interrupted_optimize_prints_its_best_so_far(monkeypatch, capsys):
    """A user trial: a Ctrl-C during ``optimize`` (one sequence can take a minute at 800 steps) printed
    only "interrupted". The interrupt now carries the best sequence measured so far
    (``best_so_far``), which the command prints before its line."""
    from chords_core.tuning import search

    calls = _ctrl_c_at(monkeypatch, 12)  # a Ctrl-C at the 12th sequence of the search
    with pytest.raises(KeyboardInterrupt) as info:
        search.optimize_init(12, 3, "euler", dim=2, modes=2, samples=2)
    partial = info.value.best_so_far
    seen = partial.candidates
    assert len(seen) == partial.evaluated == 11 and "interrupted after 11 sequences" in partial.method
    assert partial.best.key == min(c.key for c in seen) and partial.best.ratio <= partial.budget
    calls.clear()
    assert main(["optimize", "--steps", "12", "--cores", "3", "--dim", "2", "--modes", "2", "--samples", "2"]) == 130
    out, err = capsys.readouterr()
    assert "interrupted after 11 sequences: the best so far" in out and "chosen init:" in out
    assert err == "python -m chords_core optimize: interrupted\n"


def test_an_optimize_interrupted_in_its_baselines_carries_them():
    """A user trial: the three baseline sequences (recipe, paper, uniform: each a whole CHORDS run) were
    measured before the search's ``try``, so a Ctrl-C there carried no ``best_so_far``; at the first
    run nothing was measured, and the interrupt is raised as it is."""
    import pytest as _pytest

    from chords_core.tuning import search

    for n, measured in ((2, 1), (3, 2)):
        mp = _pytest.MonkeyPatch()
        try:
            _ctrl_c_at(mp, n)
            with pytest.raises(KeyboardInterrupt) as info:
                search.optimize_init(12, 3, "euler", dim=2, modes=2, samples=2)
        finally:
            mp.undo()
        partial = info.value.best_so_far
        assert partial.evaluated == measured and len(partial.baselines) == measured
        assert partial.best.key == min(c.key for c in partial.candidates) and partial.improvements == ()
    mp = _pytest.MonkeyPatch()
    try:
        _ctrl_c_at(mp, 1)
        with pytest.raises(KeyboardInterrupt) as info:
            search.optimize_init(12, 3, "euler", dim=2, modes=2, samples=2)
    finally:
        mp.undo()
    assert not hasattr(info.value, "best_so_far")


def test_an_interrupted_optimize_whose_output_is_gone_still_says_interrupted(monkeypatch, capsys, tmp_path):
    """A review: with the reader gone by the same Ctrl-C (``| tee``) or a full disk, printing the best so
    far raised BrokenPipeError (a quiet 141) or OSError (a traceback, status 1); the interrupt stays
    the outcome. And a local search cut in a climb lists the climb's improvement in its trace."""
    import sys

    from chords_core.tuning import search

    calls = _ctrl_c_at(monkeypatch, 33)
    with pytest.raises(KeyboardInterrupt) as info:
        search.optimize_init(30, 4, "euler", dim=2, modes=2, samples=2, exhaustive_limit=10, max_evals=80)
    partial = info.value.best_so_far
    assert partial.method.startswith("local search") and partial.improvements[-1][1] == partial.best.rounds

    class Full:  # stdout on a full disk
        def write(self, text):
            raise OSError(28, "No space left on device")

        def flush(self):
            pass

        def fileno(self):
            return handle.fileno()

    calls.clear()
    with open(tmp_path / "out", "w") as handle:
        monkeypatch.setattr(sys, "stdout", Full())
        code = main(["optimize", "--steps", "30", "--cores", "4", "--dim", "2", "--modes", "2", "--samples", "2",
                     "--exhaustive-limit", "10", "--max-evals", "80"])
        monkeypatch.undo()
    assert code == 130 and capsys.readouterr().err == "python -m chords_core optimize: interrupted\n"
