"""The progress bar every method shows with ``progress=True`` (tqdm, an optional dependency).

``progress_bar`` is a context manager: the bar closes however the run ends (a model error, an
interrupt), and without ``progress`` it yields a bar that does nothing, so a method's loop calls
``bar.update`` without checking.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .checks import check_bool


class _NoBar:
    """The bar of a run without ``progress``: counts, shows nothing."""

    def __init__(self, total: int) -> None:
        self.total, self.n = total, 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def refresh(self) -> None:
        pass


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
        The bar: ``update(n)``, ``total``, ``n``, ``refresh()``.
    """
    if not check_bool("progress", show):  # (a string such as "no" is truthy: it showed the bar)
        yield _NoBar(total)
        return
    try:
        from tqdm.auto import tqdm
    except ImportError as err:  # (a raw "No module named 'tqdm'" named neither the argument nor the extra)
        raise ImportError(f"progress=True shows a bar with tqdm, which is not installed ({err}); pip install "
                          "'chords[progress]' (or tqdm), or pass progress=False") from None

    bar = tqdm(total=total, desc=desc, unit=unit)
    try:
        yield bar
        if bar.n < bar.total:  # the run ended early by its own rule (a stop that accepted an output): complete
            bar.total = bar.n
            bar.refresh()
    finally:
        bar.close()  # (an error or an interrupt leaves the bar where the run was)
