"""Write each notebooks/NN_*.py (jupytext percent format) as a paired .ipynb, without outputs.

The .py scripts are the source of truth: the test suite runs them top to bottom (each ends in
assertions) and checks that the .ipynb files hold the same cells. Run ``python notebooks/sync.py``
after editing a script. ``jupytext --sync`` produces equivalent notebooks if it is installed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cells(source: str) -> list[dict]:
    """Split percent-format source into notebook cells: ``# %%`` starts code, ``# %% [markdown]`` markdown."""
    out: list[dict] = []
    kind, lines = None, []

    def flush():
        if kind is None:
            return
        body = list(lines)
        while body and not body[-1].strip():
            body.pop()
        if kind == "markdown":
            body = [ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in body]
        text = "\n".join(body)
        cell = {"cell_type": kind, "metadata": {}, "source": text.splitlines(keepends=True)}
        if kind == "code":
            cell.update(execution_count=None, outputs=[])
        out.append(cell)

    for ln in source.splitlines():
        if ln.startswith("# %%"):
            flush()
            kind, lines = ("markdown" if "[markdown]" in ln else "code"), []
        elif kind is not None:
            lines.append(ln)
    flush()
    return out


def notebook(source: str) -> dict:
    return {
        "cells": cells(source),
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
            "jupytext": {"formats": "ipynb,py:percent"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def scripts() -> list[Path]:
    return sorted(p for p in HERE.glob("[0-9][0-9]_*.py"))


def main(argv: list[str] | None = None) -> int:
    for py in scripts():
        nb = py.with_suffix(".ipynb")
        nb.write_text(json.dumps(notebook(py.read_text()), indent=1) + "\n")
        print(f"wrote {nb.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
