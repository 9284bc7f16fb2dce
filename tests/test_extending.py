"""Execute the examples of docs/extending.md.

How the examples run: the guide is split at its ``## `` headings. Each section that has ```python
blocks is one test. Its blocks run in order in one fresh namespace, which is not shared with other
sections. Blocks of other languages (```text) are not run. Each section ends with assertions, so a
failing example fails the test. The traceback names the docs/extending.md line, because every block
is compiled at its own line in the file.

Registrations made by an example (``register_solver``, ``register_method``, the diffusers
``ADAPTERS``) are undone after the section, so that other tests see the shipped registries.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

import chords_core as cc

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)


def sections() -> dict[str, list[tuple[int, str]]]:
    """{heading: [(first line number, code), ...]} for every ``## `` section with python blocks."""
    text = DOC.read_text()
    out: dict[str, list[tuple[int, str]]] = {}
    starts = [m.start() for m in re.finditer(r"^## ", text, re.M)] + [len(text)]
    for a, b in zip(starts, starts[1:]):
        part = text[a:b]
        blocks = [(text.count("\n", 0, a + m.start(2)) + 1, m.group(2)) for m in FENCE.finditer(part)
                  if m.group(1) == "python"]
        if blocks:
            out[part.splitlines()[0][3:].strip()] = blocks
    return out


SECTIONS = sections()


def test_the_guide_covers_every_extension_point():
    names = " ".join(SECTIONS).lower()
    for point in ("solver", "executor", "stop rule", "parallel method", "diffusers"):
        assert point in names, f"docs/extending.md has no section on a {point}"
    for heading, blocks in SECTIONS.items():
        assert "assert" in blocks[-1][1], f"section {heading!r}: its last python block makes no assertion"


@pytest.mark.parametrize("heading", list(SECTIONS))
def test_example_runs(heading):
    registries = [cc.SOLVERS, cc.METHODS]
    torch_threads = None
    if "diffusers" in heading.lower():
        pytest.importorskip("diffusers")
        torch = pytest.importorskip("torch")
        from chords_diffusers.adapters import ADAPTERS

        registries.append(ADAPTERS)
        torch_threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny models: intra-op threads only contend on a shared machine
    saved = [dict(r) for r in registries]
    try:
        # a real module, so that what needs one (dataclasses, pickling) finds the example's namespace
        module = sys.modules["docs_extending_example"] = types.ModuleType("docs_extending_example")
        for line, code in SECTIONS[heading]:
            exec(compile("\n" * (line - 1) + code, str(DOC), "exec"), module.__dict__)
    finally:
        sys.modules.pop("docs_extending_example", None)
        for registry, before in zip(registries, saved):
            registry.clear()
            registry.update(before)
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
    assert all(set(r) == set(s) for r, s in zip(registries, saved))
