"""The progress bar every method shows with ``progress=True`` (tqdm, an optional dependency).

``progress_bar`` is a context manager: the bar closes however the run ends (a model error, an
interrupt), and without ``progress`` it yields a bar that does nothing, so a method's loop calls
``bar.update`` without checking. ``bar_options`` gives the bars made in its block tqdm's options of
one's own (a diffusers pipeline's ``set_progress_bar_config``: its stream, its label).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from .checks import check_bool

#: what writing a bar may raise: the stream gone (a closed pipe, ``EPIPE``; a full disk, ``ENOSPC``),
#: closed (``ValueError``), or ``None`` (``sys.stderr`` of a daemon or ``pythonw``: ``AttributeError``)
_DISPLAY_ERRORS = (OSError, ValueError, AttributeError)


#: the tqdm options of the bars made in a ``bar_options`` block (this thread's or task's context)
_OPTIONS: ContextVar[dict | None] = ContextVar("chords_progress_options", default=None)

#: what a run sets itself (``bar_options`` leaves these out): its count (``initial``: the bar's count
#: started there, and the run's total was lost, "6round", a review), its unit, whether it shows
_OWN = ("iterable", "total", "initial", "unit", "disable")


@contextmanager
def bar_options(**options: Any) -> Iterator[None]:
    """Make the progress bars of the runs in this block with tqdm's ``options``: ``file`` (the stream,
    in place of ``sys.stderr``; a failing one is dropped with a warning, as ``sys.stderr`` is), ``desc``
    (put before the bar's own label), and any other tqdm argument as given (``ncols``, ``leave``,
    ``position``, ...); ``total``, ``initial``, ``unit`` and ``disable`` stay the run's own
    (``progress`` decides whether a bar shows). An option tqdm does not know raises its error when
    the bar is made, before the run (as the pipeline's own bar would). A diffusers pipeline's
    ``set_progress_bar_config`` reaches the bar so (``chords_diffusers``: its file and label were
    ignored, a user trial)."""
    token = _OPTIONS.set({k: v for k, v in options.items() if k not in _OWN})
    try:
        yield
    finally:
        _OPTIONS.reset(token)


class _NoBar:
    """The bar of a run without ``progress``: counts, shows nothing."""

    def __init__(self, total: int) -> None:
        self.total, self.n = total, 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def refresh(self) -> None:
        pass


class _Stream:
    """The stream a bar writes to (``sys.stderr`` when the bar is made), as tqdm sees it: a write or
    flush that fails is kept in ``error``, not raised, and later ones are dropped. tqdm writes while
    holding its global lock, which it takes without a ``finally``: a raise there left the lock held,
    and every later bar in another thread, ours or the user's, waited for it forever (a user trial)."""

    def __init__(self, target: Any = None) -> None:
        self.target = sys.stderr if target is None else target
        self.error: BaseException | None = None

    def _guarded(self, name: str, *args: Any) -> None:
        if self.error is None:
            try:
                getattr(self.target, name)(*args)
            except _DISPLAY_ERRORS as err:
                self.error = err

    def write(self, text: str) -> None:
        self._guarded("write", text)

    def flush(self) -> None:
        self._guarded("flush")

    def __getattr__(self, name: str) -> Any:  # (encoding, fileno, isatty: the stream's own)
        return getattr(self.target, name)

    # tqdm treats its file by identity with sys.stderr / sys.stdout (the terminal's width, tqdm.write
    # clearing the bars of the stream it writes to): the wrapper is equal to the stream it wraps (a review
    # found a 160-column terminal's bar drawn 69 wide and tqdm.write printing onto the bar's line)
    def __eq__(self, other: object) -> bool:
        return self.target == (other.target if isinstance(other, _Stream) else other)

    def __hash__(self) -> int:
        return hash(self.target)


class _Shown(_NoBar):
    """A tqdm bar that is only a display: where writing it fails, the run goes on without it (one
    ``RuntimeWarning``, which the warnings machinery drops where it cannot be written either). A user
    trial: a log pipe whose reader went away stopped a 200-round run after 17 rounds with a
    ``BrokenPipeError``, a closed stderr before any (``'NoneType' object has no attribute 'write'``),
    a full disk after 15, the work done lost and ``progress`` not named."""

    def __init__(self, total: int, desc: str, unit: str) -> None:
        super().__init__(total)
        self._bar: Any = None
        from tqdm.auto import tqdm

        options = dict(_OPTIONS.get() or {})  # (``bar_options``)
        target, label = options.pop("file", None), options.pop("desc", None)
        if label:
            desc = f"{label}: {desc}"
        # a notebook's bar is a widget, and a file of one's own would make it text: a text bar only where a
        # stream was given (``bar_options``)
        cls = tqdm
        if target is not None:
            from tqdm.std import tqdm as cls  # type: ignore[no-redef]
        notebook = any(c.__module__ == "tqdm.notebook" for c in getattr(cls, "__mro__", ()))
        self._stream = None if notebook else _Stream(target)
        file = {} if self._stream is None else {"file": self._stream}
        self._do(lambda: setattr(self, "_bar", cls(total=total, desc=desc, unit=unit, **file, **options)))

    def _do(self, act: Any) -> None:
        try:
            act()
            failed = None if self._stream is None else self._stream.error
            if failed is not None:
                raise failed
        except _DISPLAY_ERRORS as err:
            bar, self._bar = self._bar, None
            if bar is not None:
                if self._stream is None:
                    bar.disable = True  # (tqdm's own close would write again)
                else:  # closed, writing to nothing, so that it leaves tqdm's bars (it held a line: later bars
                    # were drawn below it)
                    if self._stream.error is None:
                        self._stream.error = err
                    try:
                        bar.close()
                    except _DISPLAY_ERRORS:
                        bar.disable = True
            from .call import warn_caller  # (call imports the solvers and executors, none of which shows a bar)

            try:
                warn_caller(f"progress: the bar could not be written ({type(err).__name__}: {err}); the run goes on "
                            "without it", RuntimeWarning)
            except ValueError:  # (the warnings machinery drops an OSError writing it, not a closed stream's)
                pass

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._do(lambda: self._bar.update(n))

    def refresh(self) -> None:
        if self._bar is not None:
            total = self.total

            def show() -> None:
                self._bar.total = total
                self._bar.refresh()

            self._do(show)

    def close(self) -> None:
        if self._bar is not None:
            self._do(self._bar.close)


def check_progress(show: Any) -> bool:
    """``show`` checked as a bool (a string such as "no" is truthy: it showed the bar), and where it is
    ``True``, that tqdm can be imported (``ImportError`` naming the extra: a raw "No module named 'tqdm'"
    named neither the argument nor the extra); for an entry point that runs models before its bar."""
    if not check_bool("progress", show):
        return False
    try:
        import tqdm  # noqa: F401
    except ImportError as err:
        raise ImportError(f"progress=True shows a bar with tqdm, which is not installed ({err}); pip install "
                          "'chords[progress]' (or tqdm), or pass progress=False") from None
    return True


@contextmanager
def progress_bar(show: bool, total: int, desc: str, unit: str) -> Iterator[Any]:
    """A tqdm bar over ``total`` ``unit``s labelled ``desc`` if ``show``, closed on exit.

    Args:
        show: show the bar (needs tqdm); else a silent stand-in.
        total: the expected count (a method may raise ``bar.total`` as it learns more, then ``refresh()``);
            a run that returns before it (a stop rule accepting an earlier output) ends the bar at the
            count reached, as complete, where an error leaves it partial.
        desc: the label, e.g. ``"chords euler x4"``.
        unit: what one ``update`` counts (``"round"``, ``"step"``, ``"iteration"``).

    Yields:
        The bar: ``update(n)``, ``total``, ``n``, ``refresh()``. A bar that cannot be written (a
        closed or full stream, ``sys.stderr`` None) warns once and the run goes on without it.
    """
    if not check_progress(show):
        yield _NoBar(total)
        return
    bar = _Shown(total, desc, unit)
    try:
        yield bar
        if bar.n < bar.total:  # the run ended early by its own rule (a stop that accepted an output): complete
            bar.total = bar.n
            bar.refresh()
    finally:
        bar.close()  # (an error or an interrupt leaves the bar where the run was)
