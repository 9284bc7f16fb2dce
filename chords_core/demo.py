"""The demo: CHORDS against the sequential solver on an analytic Gaussian mixture.

Runs each requested solver sequentially and with CHORDS at each core count from the same noise,
and prints one table row per run: rounds (sequential model-evaluation latency), speedup, NFE, the
RMS error against the sequential solver with the same steps and against the exact ODE solution
(DOP853, rtol 1e-10). Writes three PNGs: the RMS error of every core's output against the round it
arrived in (one panel per solver, largest core count), the CHORDS schedule, and every method's error
against its rounds.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import (
    METHODS,
    SOLVERS,
    VP,
    RectifiedFlow,
    StopAtCore,
    StopOnResidual,
    StopRule,
    chords,
    default_init,
    make_solver,
    parallel,
    solve,
    time_grid,
)
from .inits import validate_init
from .problems import GaussianMixture

#: "No degradation": error against the exact solution at most this times the sequential solver's.
CRITERION = 1.05
#: the demo's core counts where neither --cores nor --init is given
CORE_COUNTS = (2, 4, 8)

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
    """The ``--stop`` option: 'core:N' -> StopAtCore(N), 'residual:TOL' -> StopOnResidual(TOL),
    'residual:TOL:l2/numel' -> StopOnResidual(TOL, norm="l2/numel") (the reference code's), 'none' -> None.

    Args:
        text: the option's value.

    Returns:
        The stop rule; ``argparse.ArgumentTypeError`` for anything else.
    """
    if text == "none":
        return None
    kind, _, value = text.partition(":")
    if kind == "residual" and not value:
        raise argparse.ArgumentTypeError(f"residual needs its tolerance, residual:TOL (e.g. residual:1e-3), "
                                         f"got {text!r}")
    if kind == "core" and not value:  # (it was taken as core:1)
        raise argparse.ArgumentTypeError(f"core needs its output number, core:N (e.g. core:1), got {text!r}")
    try:
        if kind == "core":
            try:
                n = int(value)
            except ValueError:
                raise ValueError(f"core:N needs an integer N, got {value!r}") from None
            return StopAtCore(n)
        if kind == "residual":
            tol, colon, norm = value.partition(":")
            if colon and not norm:  # (a trailing colon was taken as the default norm)
                raise ValueError(f"residual:TOL:NORM needs its norm after the second colon, got {text!r}")
            return StopOnResidual(float(tol), norm=norm or "rms")
    except ValueError as e:  # (argparse names the option: "argument --stop: ...")
        raise argparse.ArgumentTypeError(str(e)) from None
    raise argparse.ArgumentTypeError(f"--stop must be 'core:N', 'residual:TOL[:l2/numel]' or 'none', got {text!r}")


def positive_float(text: str) -> float:
    """An argparse ``type``: a finite number > 0 (argparse names the option in its error)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


#: the command line's most grid steps (the library's functions take any): at 2^31 the grid's 16 GiB
#: were allocated on an overcommitting machine and the run was killed by the kernel after 50 s, a user
#: trial; a CHORDS run is about a millisecond a step here, ``optimize`` about a run a step
MAX_CLI_STEPS = 100_000


def int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type`` for an integer option of at least ``low`` (and at most ``high``).

    Args:
        low: the smallest value allowed.
        high: the largest value allowed, or ``None``.

    Returns:
        The parser of the option's text; argparse names the option in its error
        (``argument --samples: must be an integer >= 1, got '0'``).
    """
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low or (high is not None and value > high):
            what = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be an integer {what}, got {text!r}")
        return value

    return parse


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
    p.add_argument("--cores", nargs="+", type=int_at_least(1), default=None,
                   help=f"core counts (default: {' '.join(map(str, CORE_COUNTS))}; not with --init)")
    p.add_argument("--steps", type=int_at_least(1, MAX_CLI_STEPS), default=None,
                   help=f"steps for every solver, at most {MAX_CLI_STEPS} (default: 50 Euler/DDIM, 25 Heun, 20 "
                        "others)")
    p.add_argument("--init", type=parse_init, default=None,
                   help="init sequence (fixes the core count; its starts below every solver's steps), e.g. "
                        "0-2-4-8-12-16")
    p.add_argument("--stop", type=parse_stop, default=StopAtCore(1),
                   help="core:N | residual:TOL[:l2/numel] | none (default core:1; l2/numel: the reference "
                        "code's residual)")
    p.add_argument("--schedule", choices=sorted(SCHEDULES), default="rf",
                   help="rf: rectified flow + flow prediction; vp: VP + eps")
    p.add_argument("--dim", type=int_at_least(1), default=64, help="Gaussian mixture dimension (default 64)")
    p.add_argument("--modes", type=int_at_least(1), default=10, help="Gaussian mixture components (default 10)")
    p.add_argument("--samples", type=int_at_least(1), default=16, help="noise samples solved at once (default 16)")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="seed of the mixture and the noise (default 0)")
    p.add_argument("--out", default="demo-output", help="folder for the three PNG plots")


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


def core_counts(args: argparse.Namespace) -> list[int]:
    """The core counts the demo runs: ``len(--init)``, ``--cores`` or ``CORE_COUNTS``; ``ValueError``
    for both options (``--cores`` was ignored silently)."""
    if args.init and args.cores:
        raise ValueError(f"--cores: --init fixes the core count ({len(args.init)}); give one or the other")
    counts = [len(args.init)] if args.init else list(dict.fromkeys(args.cores or CORE_COUNTS))  # (once each)
    if isinstance(args.stop, StopAtCore) and args.stop.n > min(counts):  # (it failed after the runs before it,
        # once the folder was made, naming no option)
        raise ValueError(f"--stop: core:{args.stop.n} asks for output {args.stop.n}, and a run on {min(counts)} "
                         f"core(s) makes {min(counts)}: give {'a longer --init' if args.init else 'more --cores'}, "
                         "or another --stop")
    # checked per solver before any run: a bad --init or --cores failed after the first solver's whole
    # run, naming neither the option nor the solver's steps
    for solver in args.solver:
        steps = args.steps if args.steps is not None else default_steps(solver)
        plural = "s" if steps != 1 else ""
        runs = f"{solver} runs {steps} step{plural}{'' if args.steps is not None else ' (its default)'}"
        if args.init and max(args.init) >= steps:
            raise ValueError(f"--init: its starts must lie below the steps; {runs}, and init reaches "
                             f"{max(args.init)}: give --steps above {max(args.init)}, or a shorter init")
        if args.init:
            try:
                validate_init(args.init, steps)
            except ValueError as e:
                raise ValueError(f"--init: {e}") from None
        if max(counts) > steps:
            asks = "--cores asks" if args.cores else f"the default core counts ({' '.join(map(str, counts))}) ask"
            raise ValueError(f"--cores: at most the steps; {runs}, and {asks} for {max(counts)}: give "
                             f"--steps of at least {max(counts)}, or fewer --cores")
    return counts


def run(args: argparse.Namespace) -> tuple[list[dict], list[dict], list[str | None]]:
    """Run every requested solver sequentially, with CHORDS and with every method; write the plots.

    Args:
        args: the parsed demo options (``build_parser``).

    Returns:
        The CHORDS rows (solver, steps, cores, init, rounds, speedup, nfe, err_seq, err_exact,
        output), the every-method rows (solver, steps, method, cores, rounds, speedup, nfe,
        ratio, err, ok; none with ``--init``), and each plot's outcome (``_written``: its path,
        ``None`` without matplotlib, ``""`` where it could not be written, reported on stderr).
    """
    cores = core_counts(args)
    make_schedule, prediction, spacing = SCHEDULES[args.schedule]
    schedule = make_schedule()
    gmm = GaussianMixture.random(args.dim, args.modes, seed=args.seed)
    model = gmm.model(schedule, prediction)
    rows: list[dict] = []
    ladders: dict = {}
    method_rows: list[dict] = []
    baselines: dict = {}
    drawn: tuple | None = None
    for solver in args.solver:
        steps = args.steps if args.steps is not None else default_steps(solver)
        grid = time_grid(schedule, steps, spacing)
        noise = np.random.default_rng(args.seed + 1).standard_normal((args.samples, args.dim))
        x_T = noise * float(schedule.sigma(grid[0]))
        exact = gmm.reference_solve(x_T, grid[0], grid[-1], schedule)
        seq = solve(model, x_T, grid, solver)
        bound = make_solver(solver, model, grid)
        seq_rounds = sum(bound.evals_per_step())
        rows.append(dict(solver=solver, steps=steps, cores=1, init="-", rounds=seq_rounds, speedup=1.0, nfe=seq_rounds,
                         err_seq=0.0, err_exact=rms(seq, exact), output="sequential"))
        for K in cores:
            init = args.init or default_init(steps, K)
            res = chords(model, x_T, grid, solver, init=init, stop=args.stop)
            rows.append(dict(solver=solver, steps=steps, cores=K, init="-".join(map(str, init)), rounds=res.rounds,
                             speedup=res.speedup, nfe=res.nfe, err_seq=rms(res.x, seq), err_exact=rms(res.x, exact),
                             output=res.stopped_by))
        K = max(cores)
        full = chords(model, x_T, grid, solver, init=args.init or default_init(steps, K), stop=None)
        if drawn is None:  # the schedule figure draws the first solver's run (its steps, init and stages)
            drawn = (full.plan, solver)
        pts = [(h.round, rms(h.x, seq), rms(h.x, exact), h.core) for h in full.hits]
        ladders[solver] = (steps, K, pts, rms(seq, exact))
        if not args.init:
            seq_err = rms(seq, exact)
            for K in [1] + [k for k in cores if k > 1]:
                for method in sorted(METHODS):
                    r = parallel(model, x_T, grid, solver, cores=K, method=method)
                    err = rms(r.x, exact)
                    method_rows.append(dict(solver=solver, steps=steps, method=method, cores=K, rounds=r.rounds,
                                            speedup=r.speedup, nfe=r.nfe, ratio=err / seq_err, err=err,
                                            ok=err <= CRITERION * seq_err))
            fewer = sorted({max(2, round(steps * f)) for f in (0.3, 0.5, 0.7, 0.85, 1.0)})
            baselines[solver] = (steps, seq_err, [(sum(make_solver(solver, model, g).evals_per_step()),
                                                   rms(solve(model, x_T, g, solver), exact))
                                                  for n in fewer for g in [time_grid(schedule, n, spacing)]])
    plots = [_written("hits_error_vs_round.png", args.out, lambda: write_plot(ladders, args.out))]
    if method_rows:
        plots.append(_written("methods_error_vs_rounds.png", args.out,
                              lambda: write_methods_figure(method_rows, baselines, args.out)))
    plots.append(_written("chords_schedule.png", args.out, lambda: write_schedule_figure(
        max(cores), args.out, plan=drawn[0] if drawn else None, solver=drawn[1] if drawn else "")))
    return rows, method_rows, plots


def _written(name: str, out: str, write: Callable[[], Any]) -> str | None:
    """``out/name`` once ``write()`` has written it; ``None`` where it wrote nothing (no matplotlib);
    ``""`` where it could not, with a line on stderr (a finished run's tables were lost to an
    ``IsADirectoryError`` traceback, a user trial)."""
    try:
        done = write()
    except OSError as e:
        print(f"could not write {os.path.join(out, name)}: {e.strerror or e}", file=sys.stderr)
        return ""
    return None if done is None else os.path.join(out, name)


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


def format_methods_table(rows: Sequence[dict]) -> str:
    """Every method at its defaults, as a Markdown table whose rows that miss the criterion are marked.

    Args:
        rows: the every-method rows of ``run``.

    Returns:
        The table.
    """
    head = ("| solver | steps | method | cores | rounds (sequential model-evaluation latency) | speedup | "
            "NFE (all evaluations) | error vs exact / sequential solver's | no degradation (<= 1.05) |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        mark = "yes" if r["ok"] else "**NO**"
        lines.append(f"| {r['solver']} | {r['steps']} | {r['method']} | {r['cores']} | {r['rounds']} | "
                     f"{r['speedup']:.2f}x | {r['nfe']} | {r['ratio']:.3f} | {mark} |")
    return "\n".join(lines)


_NOTED: list = []  # whether the note on a missing matplotlib was printed (once a process)


def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, or ``None`` (with a note, once) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        if not _NOTED:
            print("(matplotlib not installed: no plot; pip install 'chords[plots]')")
            _NOTED.append(True)
        return None
    return plt


def write_methods_figure(rows: Sequence[dict], baselines: dict, out: str) -> dict | None:
    """Error against rounds for every method at 1, 2, 4, 8 cores, one panel per solver, with the
    sequential solver at fewer steps and the no-degradation band; writes ``methods_error_vs_rounds.png``.

    Args:
        rows: the every-method rows of ``run``.
        baselines: solver -> (steps, sequential error, [(rounds, error) of the sequential solver at fewer steps]).
        out: the output folder (created).

    Returns:
        Per panel title: its axis labels and the number of lines drawn; ``None`` without matplotlib.
    """
    plt = _pyplot()
    if plt is None:
        return None
    os.makedirs(out, exist_ok=True)
    solvers = list(baselines)
    fig, axes = plt.subplots(1, len(solvers), figsize=(5.2 * len(solvers), 4.8), squeeze=False)
    summary = {}
    for ax, solver in zip(axes[0], solvers):
        steps, seq_err, base = baselines[solver]
        ax.axhspan(seq_err * 0.5, seq_err * CRITERION, color="tab:green", alpha=0.12,
                   label=f"no degradation (<= {CRITERION} x sequential)")
        ax.plot([b[0] for b in base], [b[1] for b in base], "k.--", lw=1, label="sequential, fewer steps")
        for k, method in enumerate(sorted(METHODS)):
            pts = sorted((r["rounds"], r["err"], r["cores"]) for r in rows
                         if r["solver"] == solver and r["method"] == method)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="os^vDP"[k % 6], ms=4, lw=1, label=method)
            for rr, e, c in pts:
                if c > 1:
                    ax.annotate(str(c), (rr, e), textcoords="offset points", xytext=(3, 2), fontsize=6)
        ax.set_yscale("log")
        title = f"{solver}, {steps} steps"
        ax.set(title=title, xlabel="rounds (sequential model evaluations)", ylabel="RMS error vs exact solution")
        ax.legend(fontsize=6, loc="upper right")
        summary[title] = dict(xlabel=ax.get_xlabel(), ylabel=ax.get_ylabel(), lines=len(ax.get_lines()))
    fig.text(0.5, 0.01, "Each method at its defaults (cc.parallel) on 1, 2, 4, 8 cores (numbers next to the points); "
             "lower-left is better. A point inside the green band is as accurate as the sequential solver with all "
             "its steps; the dashed line is what the sequential solver gives with fewer steps.", ha="center",
             fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(os.path.join(out, "methods_error_vs_rounds.png"), dpi=110)
    plt.close(fig)
    return summary


def write_schedule_figure(cores: int, out: str, steps: int = 50, plan: Any = None, solver: str = "") -> dict | None:
    """CHORDS' schedule from a plan (``plan``, or ``default_init(steps, cores)`` with one evaluation a
    step): which core evaluates in which round, the rectifications, the coarse hit and the outputs;
    writes ``chords_schedule.png``.

    Args:
        cores: K (without ``plan``).
        out: the output folder (created).
        steps: T (without ``plan``).
        plan: the ``Plan`` of the run to draw (the demo's: its solver, steps and init).
        solver: the solver's name, for the title.

    Returns:
        The axis labels and the numbers of evaluations, rectifications and outputs drawn; ``None``
        without matplotlib.
    """
    plt = _pyplot()
    if plt is None:
        return None
    from .plan import make_plan

    if plan is None:
        plan = make_plan(steps, default_init(steps, cores))
    steps = plan.steps
    os.makedirs(out, exist_ok=True)
    fig, ax = plt.subplots(figsize=(10.5, 0.5 * plan.cores + 2.2))
    ev = [(r.number, e.core) for r in plan.rounds for e in r.evals]
    rect = [(r.number, e.core) for r in plan.rounds for e in r.evals if e.rectify_from is not None]
    hits = [(r.number, c) for r in plan.rounds for c in r.hits]
    ax.scatter([p[0] for p in ev], [p[1] for p in ev], s=10, color="0.6", label="model evaluation")
    ax.scatter([p[0] for p in rect], [p[1] for p in rect], s=30, marker="x", color="tab:red",
               label="rectified by the slower core")
    ax.scatter([p[0] for p in hits], [p[1] for p in hits], s=90, marker="*", color="tab:blue", label="output")
    ax.axvline(plan.cores, color="tab:orange", lw=1, ls=":", label="coarse hit (all cores started)")
    xlabel, ylabel = "round", "core (0 = the sequential solver)"
    title = f"CHORDS schedule{', ' + solver if solver else ''}, T = {steps}, init {'-'.join(map(str, plan.init))}"
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.set_yticks(range(plan.cores))
    ax.invert_yaxis()
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(os.path.join(out, "chords_schedule.png"), dpi=110)
    plt.close(fig)
    return dict(xlabel=xlabel, ylabel=ylabel, title=title, evaluations=len(ev), rectifications=len(rect),
                outputs=len(hits))


def write_plot(ladders: dict, out: str) -> str | None:
    """Plot every core's output error against its arrival round, one panel per solver.

    Args:
        ladders: solver -> (steps, cores, [(round, error vs sequential, error vs exact, core)],
            sequential error vs exact).
        out: the folder for ``hits_error_vs_round.png`` (created).

    Returns:
        The PNG's path, or ``None`` without matplotlib.
    """
    plt = _pyplot()
    if plt is None:
        return None
    os.makedirs(out, exist_ok=True)
    fig, axes = plt.subplots(1, len(ladders), figsize=(5 * len(ladders), 4), squeeze=False)
    for ax, (solver, (steps, K, pts, seq_err)) in zip(axes[0], ladders.items()):
        r = [p[0] for p in pts]
        ax.semilogy(r, [max(p[1], 1e-17) for p in pts], "o-", label="vs sequential (exact 0 drawn at 1e-17)")
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
        The exit status: 0, or 1 where a plot could not be written (the tables are printed).
    """
    core_counts(args)  # (its usage error before --out's folder is made)
    try:  # before the run, not after it: a bad --out is a usage error (status 2 from the command line)
        os.makedirs(args.out, exist_ok=True)
        with tempfile.TemporaryFile(dir=args.out):  # writable (an existing read-only folder passes makedirs)
            pass
    except OSError as e:
        raise ValueError(f"--out: cannot make or use the folder {args.out!r}: {e.strerror or e}") from None
    args.solver = list(dict.fromkeys(args.solver))  # (a solver given twice ran twice)
    rows, method_rows, plots = run(args)
    print(f"Gaussian mixture: {args.dim}-D, {args.modes} modes, {args.samples} samples, schedule {args.schedule}; "
          f"CHORDS with stop {args.stop}")
    print(format_table(rows))
    if method_rows:
        print(f"\nEvery method at its defaults (cc.parallel); rows marked NO miss the no-degradation criterion "
              f"(error vs exact <= {CRITERION} x the sequential solver's):")
        print(format_methods_table(method_rows))
    written = [p for p in plots if p]
    print("plots: " + (", ".join(written) if written else "none written"))
    return 1 if "" in plots else 0  # (a plot that could not be written: reported above)
