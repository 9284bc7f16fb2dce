"""Progress bars (``progress=True``): they count what ran and close however the run ends."""

from __future__ import annotations

import io
import sys
import types

import numpy as np
import pytest

import chords_core as cc

GRID = np.linspace(0.0, 1.0, 21)


class _Bar:
    """A tqdm stand-in that records its bars."""

    made: list[_Bar] = []

    def __init__(self, total, desc, unit, file=None):
        self.total, self.desc, self.unit, self.n, self.closed = total, desc, unit, 0, False
        _Bar.made.append(self)

    def update(self, n=1):
        assert not self.closed
        self.n += n

    def refresh(self):
        pass

    def close(self):
        self.closed = True


@pytest.fixture
def bars(monkeypatch):
    fake = types.ModuleType("tqdm.auto")
    fake.tqdm = _Bar
    monkeypatch.setitem(sys.modules, "tqdm.auto", fake)
    _Bar.made = []
    return _Bar.made


def _fails_at(t_bad):
    def f(t, y):
        if np.isclose(t, t_bad):
            raise RuntimeError("the model failed")
        return -y
    return cc.VectorField(f)


RUNS = {
    "solve": lambda m, x: cc.solve(m, x, GRID, progress=True),
    "chords": lambda m, x: cc.chords(m, x, GRID, cores=3, stop=None, progress=True),
    "srds": lambda m, x: cc.srds(m, x, GRID, blocks=4, stop=None, progress=True),
    "paradigms": lambda m, x: cc.paradigms(m, x, GRID, window=4, tol=0.0, progress=True),
    "cascade": lambda m, x: cc.parallel(m, x, GRID, cores=3, method="cascade", progress=True),
}


@pytest.mark.parametrize("run", sorted(RUNS))
def test_the_bar_counts_to_its_total_and_closes_on_a_model_error(run, bars):
    x = np.ones(3)
    RUNS[run](cc.VectorField(lambda t, y: -y), x)
    assert len(bars) == 1 and bars[0].closed and bars[0].n == bars[0].total
    with pytest.raises(RuntimeError, match="the model failed"):
        RUNS[run](_fails_at(GRID[7]), x)
    assert len(bars) == 2 and bars[1].closed and bars[1].n < bars[1].total


EARLY = {  # (a run, what its bar counts: chords rounds, SRDS iterations)
    "chords": (lambda m, x, g: cc.chords(m, x, g, cores=4, progress=True), lambda r: r.rounds),  # StopWhenConverged
    "srds": (lambda m, x, g: cc.srds(m, x, g, tol=1e-3, progress=True), lambda r: len(r.hits)),
}


@pytest.mark.parametrize("run", sorted(EARLY))
def test_a_run_its_stop_rule_ends_early_ends_the_bar_complete(run, bars):
    """A stop rule that accepts an output before the planned last round: the bar ends at the rounds
    run, as its total (it closed at about half its length, looking interrupted)."""
    field = cc.VectorField(lambda t, y: -y)
    grid = np.linspace(0.0, 1.0, 51)
    call, counted = EARLY[run]
    res = call(field, np.ones(3), grid)
    (bar,) = bars
    assert res.rounds < res.sequential_rounds  # it did stop early
    assert bar.closed and bar.n == bar.total == counted(res)


@pytest.mark.parametrize("by_value", [False, True])
def test_the_srds_bar_counts_the_iterations_returned(by_value, bars):
    """SRDS returns, for a rule reading values, the last output formed in the accepted one's round,
    and for a rule choosing by count its own (``decides_on_values``); the bar counted the outputs
    formed past it too (8 of 8 where 2 were returned: a review)."""
    class Second(cc.StopRule):
        decides_on_values = by_value

        def accept(self, outputs, coarse):
            return len(outputs) >= 2

        def describe(self, n, core, accepted):
            return f"second at {n}"

    grid = np.linspace(0.0, 1.0, 9)
    res = cc.srds(cc.VectorField(lambda t, y: -y), np.ones(3), grid, blocks=8, stop=Second(), progress=True)
    (bar,) = bars
    assert len(res.hits) == (8 if by_value else 2) and res.rounds == 8
    assert bar.closed and bar.n == bar.total == len(res.hits)


@pytest.mark.parametrize("check", [True, "deferred"])
def test_the_chords_bar_counts_the_rounds_a_retirement_adds(check, bars):
    """After a faster core is retired the run goes on to core 0's end (and the eager check
    evaluates the failed round again): the bar's total follows, and ends full."""
    grid = np.linspace(0.0, 1.0, 41)
    field = cc.VectorField(lambda t, y: np.where(np.abs(y) > 10, np.nan, -15.0 * y), batched=True,
                           check_outputs=check)
    with pytest.warns(RuntimeWarning, match="retired"):
        res = cc.chords(field, 5.0 * np.ones((2, 3)), grid, init=(0, 2, 30), stop=cc.StopAtCore(3), progress=True)
    (bar,) = bars
    assert bar.closed and bar.n == bar.total == res.rounds == len(res.trace)


def test_progress_without_tqdm_says_what_to_install(monkeypatch):
    """(A raw ModuleNotFoundError about 'tqdm.auto', naming neither progress nor the extra.)"""
    import sys

    import chords_core as cc

    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    grid = cc.time_grid(cc.RectifiedFlow(), 4)
    model = cc.DiffusionModel(lambda x, t: 0.5 * x, cc.RectifiedFlow(), "flow")
    with pytest.raises(ImportError, match=r"^progress=True shows a bar with tqdm, which is not installed .*progress=False"):
        cc.solve(model, np.ones((1, 2)), grid, progress=True)
    assert cc.solve(model, np.ones((1, 2)), grid).shape == (1, 2)


class _Full:
    """A stream that takes ``room`` writes, then fails as a full disk (or a pipe whose reader went)."""

    def __init__(self, room, err):
        self.room, self.err = room, err

    def write(self, s):
        self.room -= 1
        if self.room < 0:
            raise self.err
        return len(s)

    def flush(self):
        pass


@pytest.mark.parametrize("stream", ["full", "pipe", "none"])
@pytest.mark.parametrize("run", sorted(RUNS))
def test_a_bar_that_cannot_be_written_leaves_the_run_going(run, stream, monkeypatch):
    """A user trial: a log pipe whose reader went away stopped a 200-round run after 17 rounds
    (``BrokenPipeError``), a closed stderr before any (``'NoneType' object has no attribute 'write'``),
    a full disk after 15: the work lost, ``progress`` not named. The bar is a display: the run now
    goes on without it, with one warning naming ``progress``."""
    x = np.ones(3)
    field = cc.VectorField(lambda t, y: -y)
    ref = RUNS[run](field, x)
    err = {"full": OSError(28, "No space left on device"), "pipe": BrokenPipeError(32, "Broken pipe")}.get(stream)
    monkeypatch.setattr(sys, "stderr", None if stream == "none" else _Full(3, err))
    with pytest.warns(RuntimeWarning, match=r"^progress: the bar could not be written \((OSError|BrokenPipeError|"
                                            r"AttributeError)") as caught:
        got = RUNS[run](field, x)
    assert len([w for w in caught if "progress" in str(w.message)]) == 1
    assert np.array_equal(getattr(got, "x", got), getattr(ref, "x", ref))


def test_a_bar_that_could_not_be_written_leaves_no_lock_that_other_threads_wait_for(monkeypatch):
    """tqdm writes while holding its global lock, taken without a ``finally``: a write that raised left
    it held by the run's thread, and every later bar in another thread (the library's or the user's own
    tqdm) waited forever (a user trial)."""
    import threading

    from tqdm import tqdm

    field = cc.VectorField(lambda t, y: -y)
    for stream in (None, _Full(1, BrokenPipeError(32, "Broken pipe"))):
        bars = len(getattr(tqdm, "_instances", ()))
        monkeypatch.setattr(sys, "stderr", stream)
        with pytest.warns(RuntimeWarning, match="^progress: the bar could not be written"):
            cc.parallel(field, np.ones(2), GRID, cores=2, progress=True)
        monkeypatch.undo()
        # (nor a line among tqdm's bars: later bars were drawn below the failed one's)
        assert len(getattr(tqdm, "_instances", ())) == bars
        done = []

        def other(done: list = done) -> None:
            with tqdm(total=2, file=_Full(10**6, OSError())) as bar:
                bar.update(2)
            done.append(cc.solve(field, np.ones(2), GRID))

        worker = threading.Thread(target=other, daemon=True)
        worker.start()
        worker.join(20.0)
        assert done, "another thread's bar waited for the lock a failed bar left held"


def test_a_closed_stderr_leaves_the_run_going_where_the_warning_cannot_be_shown_either():
    """Python's warnings machinery drops a warning it cannot write for an OSError, but raises the
    ``ValueError`` of a closed stream: the run raised it, ``progress`` not named (a review)."""
    import subprocess

    code = ("import sys, numpy as np, chords_core as cc\n"
            "sys.stderr.close()\n"
            "r = cc.parallel(cc.VectorField(lambda t, y: -y), np.ones(2), np.linspace(0, 1, 21), cores=2, "
            "progress=True)\n"
            "print('ran', r.rounds)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("ran "), (out.stdout, out.stderr)


def test_the_bar_is_its_streams_for_tqdm_write_which_clears_it_before_a_message(monkeypatch):
    """tqdm knows a bar's stream by equality with ``sys.stderr``: the wrapper that keeps a failed write
    made tqdm.write print onto the bar's line, and a terminal's bar a fixed 69 columns (a review)."""
    from tqdm import tqdm

    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)

    def f(t, y):
        tqdm.write("model says hi", file=sys.stderr)
        return -y

    cc.solve(cc.VectorField(f), np.ones(2), GRID[:4], progress=True)
    text = stream.getvalue()
    assert text.count("model says hi") == 3 and "]model says hi" not in text
    assert "\rmodel says hi" in text  # (the bar cleared first, then redrawn)


def test_bar_options_give_the_bar_a_stream_and_a_label_of_ones_own(capsys):
    """``bar_options``: a diffusers pipeline's ``set_progress_bar_config`` (file, desc, tqdm's others)
    reaches the bar; the run keeps its own count, unit and whether it shows; outside the block the bar
    is as before."""
    from chords_core.progress import bar_options

    model = cc.DiffusionModel(lambda x, t: 0.5 * x, cc.RectifiedFlow(), "flow")
    grid = cc.time_grid(cc.RectifiedFlow(), 4)
    buf = io.StringIO()
    with bar_options(file=buf, desc="MINE", ascii=True, total=99, unit="apple", disable=True, initial=2):
        cc.chords(model, np.ones((1, 2)), grid, cores=2, stop=None, progress=True)
        cc.chords(model, np.ones((1, 2)), grid, cores=2, stop=None, progress=False)
    text = buf.getvalue()
    assert "MINE: chords euler x2" in text and "4/4" in text and "round" in text and "apple" not in text, text
    assert text.count("MINE") >= 1 and "█" not in text and capsys.readouterr().err == ""
    cc.chords(model, np.ones((1, 2)), grid, cores=2, stop=None, progress=True)
    assert "MINE" not in capsys.readouterr().err and buf.getvalue() == text
