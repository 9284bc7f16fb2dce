"""The README's Python snippets run as written (GPU device lists replaced by CPU devices; the
diffusers snippet, which needs a loaded pipeline, runs in test_diffusers.py with a tiny one)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[tuple[int, str]]:
    """(line, source) of every ```python block of the README."""
    text = README.read_text()
    return [(text[: m.start()].count("\n") + 2, m.group(1)) for m in re.finditer(r"```python\n(.*?)```", text, re.S)]


def on_cpu(source: str) -> str:
    """The snippet with its CUDA device list replaced by CPU devices."""
    return re.sub(r'"cuda:\d+"', '"cpu"', source)


def run_block(line: int, source: str, namespace: dict | None = None) -> dict:
    ns = {} if namespace is None else namespace
    exec(compile("\n" * (line - 1) + on_cpu(source), str(README), "exec"), ns)
    return ns


def test_every_snippet_is_covered():
    blocks = python_blocks()
    assert len(blocks) >= 4
    assert sum("chords_diffusers" in src for _, src in blocks) == 1


@pytest.mark.parametrize("index", range(3))
def test_snippet_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = [b for b in python_blocks() if "chords_diffusers" not in b[1]]
    ns: dict = {}
    for line, src in blocks[: index + 1]:  # later snippets may use names of earlier ones, as a reader would
        run_block(line, src, ns)
    if index == 0:
        import numpy as np

        assert ns["res"].rounds < ns["res"].sequential_rounds and np.isfinite(ns["x_seq"]).all()
    if index == 2:  # the DeviceExecutor's result is the serial executor's, bit for bit
        import torch

        import chords_core as cc

        ref = cc.chords(ns["model"], ns["x"], ns["grid"], "dpmpp_2m", cores=4, executor=cc.SerialExecutor())
        res = ns["res"]
        assert res.x.shape == (8, 16) and res.rounds == ref.rounds and torch.equal(res.x, ref.x)


def test_the_demo_tables_are_what_the_demo_prints(tmp_path, capsys):
    """The README's "Demo (`make demo`)" tables, row by row, are in the demo's output (its method
    rows went stale when the cascade sampler's default changed)."""
    from chords_core.__main__ import main

    text = README.read_text()
    section = text[text.index("### Demo (`make demo`)"):]
    section = section[: section.index("\n### ", 1)] if "\n### " in section[1:] else section
    rows = [line for line in section.splitlines() if re.match(r"\| \w+ \| \d+ \| ", line)]
    assert len(rows) >= 30
    assert main(["demo", "--out", str(tmp_path)]) == 0
    printed = set(capsys.readouterr().out.splitlines())
    stale = [row for row in rows if row not in printed]
    assert not stale, stale
