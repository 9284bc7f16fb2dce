"""The demo: CHORDS against the sequential solver on an analytic Gaussian mixture.

Runs each requested solver sequentially and with CHORDS at each core count from the same noise,
and prints one table row per run: rounds (sequential model-evaluation latency), speedup, NFE, the
RMS error against the sequential solver with the same steps and against the exact ODE solution
(DOP853, rtol 1e-10). Writes a PNG with the RMS error of every core's output against the round it
arrived in (one panel per solver, largest core count).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import (
    SOLVERS,
    VP,
    RectifiedFlow,
    StopAtCore,
    StopOnResidual,
    StopRule,
    chords,
    default_init,
    make_solver,
    solve,
    time_grid,
)
from .problems import GaussianMixture

SCHEDULES = {"rf": (RectifiedFlow, "flow", "uniform"), "vp": (VP.linear, "eps", "logsnr")}


def rms(a: Any, b: Any) -> float:
    """The root mean square of a - b over all elements.

    Args:
        a: an array.
        b: an array of a's shape.

    Returns:
        sqrt(mean((a - b)^2)) as a Python float.
    """
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def parse_stop(text: str) -> StopRule | None:
    """The ``--stop`` option: 'core:N' -> StopAtCore(N), 'residual:TOL' -> StopOnResidual(TOL), 'none' -> None.

    Args:
        text: the option's value.

    Returns:
        The stop rule; ``argparse.ArgumentTypeError`` for anything else.
    """
    if text == "none":
        return None
    kind, _, value = text.partition(":")
    try:
        if kind == "core":
            return StopAtCore(int(value or 1))
        if kind == "residual":
            return StopOnResidual(float(value))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--stop: {e}") from None
    raise argparse.ArgumentTypeError(f"--stop must be 'core:N', 'residual:TOL' or 'none', got {text!r}")


def parse_init(text: str) -> tuple[int, ...]:
    """The ``--init`` option: '0,2,4,8' or '0-2-4-8' -> (0, 2, 4, 8).

    Args:
        text: the option's value.

    Returns:
        The init sequence (unvalidated); ``argparse.ArgumentTypeError`` if it is not integers.
    """
    try:
        return tuple(int(v) for v in text.replace("-", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--init must look like 0,2,4,8 or 0-2-4-8, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The demo's own parser (``python -m chords_core demo``)."""
    p = argparse.ArgumentParser(prog="python -m chords_core demo", description=__doc__.splitlines()[0])
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the demo's options to ``p``.

    Args:
        p: the parser (or subparser) to extend.
    """
    p.add_argument("--solver", nargs="+", default=["euler", "dpmpp_2m", "unipc"], choices=sorted(SOLVERS),
                   help="solvers to run (default: euler dpmpp_2m unipc)")
    p.add_argument("--cores", nargs="+", type=int, default=[2, 4, 8], help="core counts (default: 2 4 8)")
    p.add_argument("--steps", type=int, default=None,
                   help="steps for every solver (default: 50 Euler/DDIM, 25 Heun, 20 others)")
    p.add_argument("--init", type=parse_init, default=None,
                   help="init sequence (fixes the core count), e.g. 0-2-4-8-16-24-32-40")
    p.add_argument("--stop", type=parse_stop, default=StopAtCore(1),
                   help="core:N | residual:TOL | none (default core:1)")
    p.add_argument("--schedule", choices=sorted(SCHEDULES), default="rf",
                   help="rf: rectified flow + flow prediction; vp: VP + eps")
    p.add_argument("--dim", type=int, default=64, help="Gaussian mixture dimension (default 64)")
    p.add_argument("--modes", type=int, default=10, help="Gaussian mixture components (default 10)")
    p.add_argument("--samples", type=int, default=16, help="noise samples solved at once (default 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the mixture and the noise (default 0)")
    p.add_argument("--out", default="demo-output", help="folder for the PNG plot")


def default_steps(solver: str) -> int:
    """The demo's steps for a solver: 50 for first-order one-stage solvers, 50 / stages for
    multi-stage ones (Heun: 25), 20 for higher-order multistep ones.

    Args:
        solver: a name in ``SOLVERS``.

    Returns:
        The number of steps.
    """
    spec = SOLVERS[solver]
    if spec.stages > 1:
        return 50 // spec.stages
    return 50 if spec.order == 1 else 20


def run(args: argparse.Namespace) -> list[dict]:
    """Run every requested solver sequentially and with CHORDS; write the plot.

    Args:
        args: the parsed demo options (``build_parser``).

    Returns:
        One dict per table row (solver, steps, cores, init, rounds, speedup, nfe, err_seq,
        err_exact, output).
    """
    make_schedule, prediction, spacing = SCHEDULES[args.schedule]
    schedule = make_schedule()
    gmm = GaussianMixture.random(args.dim, args.modes, seed=args.seed)
    model = gmm.model(schedule, prediction)
    rows: list[dict] = []
    ladders: dict = {}
    for solver in args.solver:
        steps = args.steps or default_steps(solver)
        grid = time_grid(schedule, steps, spacing)
        noise = np.random.default_rng(args.seed + 1).standard_normal((args.samples, args.dim))
        x_T = noise * float(schedule.sigma(grid[0]))
        exact = gmm.reference_solve(x_T, grid[0], grid[-1], schedule)
        seq = solve(model, x_T, grid, solver)
        bound = make_solver(solver, model, grid)
        seq_rounds = sum(bound.evals(i, i + 1) for i in range(steps))
        rows.append(dict(solver=solver, steps=steps, cores=1, init="-", rounds=seq_rounds, speedup=1.0, nfe=seq_rounds,
                         err_seq=0.0, err_exact=rms(seq, exact), output="sequential"))
        core_counts = [len(args.init)] if args.init else args.cores
        for K in core_counts:
            init = args.init or default_init(steps, K)
            res = chords(model, x_T, grid, solver, init=init, stop=args.stop)
            rows.append(dict(solver=solver, steps=steps, cores=K, init="-".join(map(str, init)), rounds=res.rounds,
                             speedup=res.speedup, nfe=res.nfe, err_seq=rms(res.x, seq), err_exact=rms(res.x, exact),
                             output=res.stopped_by))
        K = max(core_counts)
        full = chords(model, x_T, grid, solver, init=args.init or default_init(steps, K), stop=None)
        pts = [(h.round, rms(h.x, seq), rms(h.x, exact), h.core) for h in full.hits]
        ladders[solver] = (steps, K, pts, rms(seq, exact))
    write_plot(ladders, args.out)
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """The rows of ``run`` as a Markdown table.

    Args:
        rows: the rows.

    Returns:
        The table, one line per row after the header.
    """
    head = "| solver | steps | cores | init | rounds | speedup | NFE | RMS err vs sequential | RMS err vs exact |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['solver']} | {r['steps']} | {r['cores']} | {r['init']} | {r['rounds']} | "
                     f"{r['speedup']:.2f}x | {r['nfe']} | {r['err_seq']:.2e} | {r['err_exact']:.2e} |")
    return "\n".join(lines)


def write_plot(ladders: dict, out: str) -> str | None:
    """Plot every core's output error against its arrival round, one panel per solver.

    Args:
        ladders: solver -> (steps, cores, [(round, error vs sequential, error vs exact, core)],
            sequential error vs exact).
        out: the folder for ``hits_error_vs_round.png`` (created).

    Returns:
        The PNG's path, or ``None`` without matplotlib.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot; pip install 'chords[plots]')")
        return None
    os.makedirs(out, exist_ok=True)
    fig, axes = plt.subplots(1, len(ladders), figsize=(5 * len(ladders), 4), squeeze=False)
    for ax, (solver, (steps, K, pts, seq_err)) in zip(axes[0], ladders.items()):
        r = [p[0] for p in pts]
        ax.semilogy(r, [max(p[1], 1e-17) for p in pts], "o-", label="vs sequential")
        ax.semilogy(r, [p[2] for p in pts], "s-", label="vs exact")
        ax.axhline(seq_err, color="gray", ls="--", label=f"sequential vs exact ({steps} steps)")
        for rr, _, e, c in pts:
            ax.annotate(f"c{c}", (rr, e), textcoords="offset points", xytext=(2, 4), fontsize=7)
        ax.set(title=f"{solver}, {steps} steps, {K} cores", xlabel="round the output arrived", ylabel="RMS error")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out, "hits_error_vs_round.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo with ``argv`` (the ``python -m chords_core demo`` options).

    Args:
        argv: the options (default ``sys.argv[1:]``).

    Returns:
        The exit status (0).
    """
    return run_main(build_parser().parse_args(argv))


def run_main(args: argparse.Namespace) -> int:
    """Run the demo with parsed options; print the table and the plot's path.

    Args:
        args: the parsed demo options.

    Returns:
        The exit status (0).
    """
    rows = run(args)
    print(f"Gaussian mixture: {args.dim}-D, {args.modes} modes, {args.samples} samples, schedule {args.schedule}; "
          f"stop {args.stop}")
    print(format_table(rows))
    print(f"plot: {os.path.join(args.out, 'hits_error_vs_round.png')}")
    return 0
