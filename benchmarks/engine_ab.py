"""Engine cost per CHORDS round, this tree against an earlier commit, in one process, interleaved.

The earlier package is extracted with ``git archive <base> chords_core`` into a temporary directory
and imported as ``chords_core_base`` (its absolute self-imports rewritten), so both run on the same
interpreter, the same arrays and the same machine load. The loop is ``benchmarks/overhead.py``'s:
a near-free model (``x * 0.5``), 8 cores, init 0-2-4-8-16-24-32-40, T = 50, Euler, float32,
``stop=None`` (every round), the default executor. Repeats alternate base and new (in a
random order every repeat); printed: microseconds per round, median [min-max], and the ratio new / base
taken repeat by repeat. Issue #10's condition: no measurable slowdown against e4a40cf (the commit
before the refactor).

    python benchmarks/engine_ab.py --base e4a40cf --sizes 64 65536 --repeats 30

``--method cascade`` times the cascade sampler instead (8 lanes, default tolerance; per round); against a
base whose seeds differ the two runs may differ in rounds, which is printed (the time per round is compared).
"""

from __future__ import annotations

import argparse
import importlib
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
from timing import interleaved, spread

import chords_core as cc
from chords_core.demo import int_at_least

ROOT = pathlib.Path(__file__).resolve().parent.parent
INIT = (0, 2, 4, 8, 16, 24, 32, 40)
T = 50
NAME = "chords_core_base"


def import_base(ref: str, where: pathlib.Path):
    """``chords_core`` as of git ``ref``, imported as ``chords_core_base``."""
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "chords_core"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(where)], input=tar.stdout, check=True)
    pkg = where / NAME
    (where / "chords_core").rename(pkg)
    for f in pkg.rglob("*.py"):
        src = f.read_text()
        new = src.replace("from chords_core.", f"from {NAME}.").replace("import chords_core", f"import {NAME}")
        if new != src:
            f.write_text(new)
    sys.path.insert(0, str(where))
    return importlib.import_module(NAME)


def near_free(x, t):
    return x * np.float32(0.5)


def runner(lib, size: int, method: str = "chords"):
    """One full run of ``lib`` (a chords_core package) at state ``size``: CHORDS every round, or the
    cascade sampler on 8 lanes at its default tolerance; returns a callable."""
    schedule = lib.RectifiedFlow()
    grid = lib.time_grid(schedule, T)
    x = np.random.default_rng(0).standard_normal((1, size)).astype(np.float32)
    model = lib.DiffusionModel(near_free, schedule, "flow")

    def run():
        if method == "cascade":
            return lib.cascade(model, x, grid, "euler", cores=len(INIT))
        return lib.chords(model, x, grid, "euler", init=INIT, stop=None)

    return run


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="e4a40cf", help="the git commit to compare with")
    ap.add_argument("--sizes", type=int_at_least(1), nargs="+", default=[64, 65_536])
    ap.add_argument("--repeats", type=int_at_least(1), default=30,
                    help="repeats at size 64 (a third of them at larger sizes)")
    ap.add_argument("--method", choices=("chords", "cascade"), default="chords")
    args = ap.parse_args(argv)
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{args.base}^{{commit}}"],
                      capture_output=True).returncode:
        ap.error(f"argument --base: {args.base!r} is not a commit of this repository")
    with tempfile.TemporaryDirectory() as tmp:
        base = import_base(args.base, pathlib.Path(tmp))
        print(f"new = this tree, base = {args.base}; us per round, median [min-max] of interleaved repeats")
        print("| state size | base us/round | new us/round | new / base |")
        print("|---|---|---|---|")
        for size in args.sizes:
            runs = {"base": runner(base, size, args.method), "new": runner(cc, size, args.method)}
            a, b = runs["base"](), runs["new"]()
            if args.method == "chords":  # the same run, bit for bit (the engine's cost is compared, not its plan)
                assert (a.rounds, a.nfe) == (b.rounds, b.nfe) and np.array_equal(a.x, b.x)
            elif (a.rounds, a.nfe) != (b.rounds, b.nfe) or not np.array_equal(a.x, b.x):
                # the cascade sampler against a base with other seeds (or rounding in them): another run, whose
                # time per round is still compared; said, not hidden
                off = float(np.abs(a.x - b.x).max())
                print(f"(size {size}: a different run from the base's: rounds {a.rounds} -> {b.rounds}, evaluations "
                      f"{a.nfe} -> {b.nfe}, outputs up to {off:.3g} apart)")
            reps = args.repeats if size <= 4096 else max(5, args.repeats // 3)
            secs, _ = interleaved(runs, reps, shuffle=True)
            old, new = secs["base"] / a.rounds, secs["new"] / b.rounds
            print(f"| {size} | {spread(old, 1e6)} | {spread(new, 1e6)} | {spread(new / old, fmt='.3f')} |", flush=True)


if __name__ == "__main__":
    main()
