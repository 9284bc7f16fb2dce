"""Every parallel method at 2, 4 and 8 cores: rounds, NFE, error and quality on offline workloads.

For every workload (``workloads.WORKLOADS``), solver (Euler 50 steps, DPM-Solver++(2M) 20 steps;
on the mixtures also Euler 100 and DPM++ 50) and core count K, each method runs over a grid of its
own configurations; every output it can return is a point (rounds, NFE, error vs the exact /
reference endpoint, error vs the sequential solver with the same steps). A configuration has the
same name on every row, so it can be chosen once and reused:

- ``cascade`` (this library): tolerance on the local-error scale (``scale="error"``, its default for
  plain ODEs), ``ERROR_TOLS``, and on the noise-level scale (``scale="level"``, its default for a
  diffusion model, as every workload here; configurations "level tol ..."), ``LEVEL_TOLS``;
- ``chords``: init families (``default_init``, uniform, "uniform to f (T - 1)", the calibrated
  optimiser's) x output n (``StopAtCore(n)``), and ``StopWhenConverged(rel)``;
- ``paradigms``: window K, noise-relative tolerance ``NOISE_TOLS`` (this library's conventions:
  variance of the step into a point; multistep history chained through the window, an extension
  of the official code, which restarts at first order at each window start);
- ``parasolver``: ParaDiGMS with x0-prediction seeds, ``NOISE_TOLS``;
- ``parataa``: triangular Anderson (memory 3), ``LEVEL_TOLS`` (RMS change vs max(1, sigma));
- ``srds``: blocks B = K or K/2, iteration k; and its shipped default, blocks K with its default
  stop ``SRDS_STOP`` (``StopOnResidual(1e-3)``).

Tables ("no degradation" = error vs reference <= 1.05 x the sequential solver's with the same steps):

1. **Oracle** (an upper bound, not a usable setting): per row, each method's best speedup in rounds
   (T_rounds / rounds) over all its configurations that meet the criterion; the cascade sampler
   over both its scales' grids (column "cascade": about twice each peer's configurations, so more
   freedom) and over each alone (columns "cascade, level scale", its default here, and "cascade,
   error scale"), each tallied against the best peer per row.
2. **Calibrate once**: each method's configuration is chosen on ``workloads.calibration_workload``
   (a 32-D mixture that is not a workload; Euler 50 and DPM++ 20 at 2, 4, 8 cores): the one with the
   fewest rows there whose output deviates from the sequential one by more than 0.05 x the sequential
   solver's error (``CAL_DEVIATION``: no degradation without relying on cancellation), then the fewest
   rounds. It is then applied unchanged to every row: failures and median speedup per method (and
   for the cascade sampler at each of its scales alone, the rows "cascade, error scale" and "cascade,
   level scale").
3. **Shipped defaults**: each method at its library default, no tuning at all.

Writes ``OUT/results.json`` and ``OUT/<workload>_<solver><steps>.png`` and prints markdown.

    .venv/bin/python benchmarks/suite.py            # full, ~20-30 min on 2 shared cores
    .venv/bin/python benchmarks/suite.py --quick    # the two mixtures, fewer configurations
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # threaded BLAS on small matrices is slower here

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import chords_core as cc  # noqa: E402
from chords_core.methods.cascade import LEVEL_TOL, resolve_scale  # noqa: E402
from chords_core.methods.srds import SRDS_STOP  # noqa: E402
from chords_core.tuning import optimize_init  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from timing import read_report, rms  # noqa: E402
from workloads import WORKLOADS, Workload, calibration_workload  # noqa: E402

CORES = (2, 4, 8)
SOLVERS = (("euler", 50), ("dpmpp_2m", 20))
MORE_SOLVERS = (("euler", 100), ("dpmpp_2m", 50))  # full run, mixtures only


def tol_grid(hi: float, lo: float, per_decade: int = 6) -> tuple[float, ...]:
    """The tolerances 10^(k / per_decade) from ``hi`` down to ``lo``, two significant digits: evenly
    spaced in log, the powers of ten (and with them each method's default) on the grid."""
    top, bottom = math.floor(math.log10(hi) * per_decade + 1e-9), math.ceil(math.log10(lo) * per_decade - 1e-9)
    return tuple(float(f"{10 ** (k / per_decade):.2g}") for k in range(top, bottom - 1, -1))


# Every tolerance-driven method gets the same density (6 a decade) over a range running from
# "accept almost everything" down to "nearly sequential" on its own scale.
NOISE_TOLS = tol_grid(10.0, 1e-4)
#: the cascade sampler's level default two releases ago (kept: the docs compare with it; the cascade's
#: "level tol" configurations are floored at 0.1, ``LEVEL_FLOOR``, ParaTAA's at 1)
EARLIER_LEVEL_TOL = 5e-4
LEVEL_TOLS = tuple(sorted({*tol_grid(1.0, 1e-5), LEVEL_TOL, EARLIER_LEVEL_TOL}, reverse=True))  # grid and defaults
ERROR_TOLS = tol_grid(3200.0, 0.1)
CHORDS_SPANS = (0.3, 0.45, 0.6, 0.75, 0.9, 1.0)
CONVERGED = (0.03, 0.1, 0.3)
FACTOR = 1.05
METHODS = ("cascade", "chords", "paradigms", "parasolver", "parataa", "srds")
PEERS = tuple(m for m in METHODS if m != "cascade")



@functools.cache
def optimised_init(solver: str, steps: int, K: int) -> tuple[int, ...]:
    """The init optimiser's choice on its default calibration mixture (independent of the workloads)."""
    return optimize_init(steps, K, solver, budget=FACTOR).init


def chords_inits(solver: str, steps: int, K: int, spans) -> list[tuple[str, tuple[int, ...]]]:
    out = [("default", cc.default_init(steps, K)), ("uniform", cc.uniform_init(steps, K)),
           ("optimised", optimised_init(solver, steps, K))]
    out += [(f"uniform to {f:g}(T-1)", tuple(round(c * round(f * (steps - 1)) / max(1, K - 1)) for c in range(K)))
            for f in spans]
    return [(n, i) for n, i in out if len(set(i)) == K]


def chords_runs(w: Workload, solver: str, steps: int, K: int, spans):
    warnings.simplefilter("ignore", cc.stopping.StopNotMet)  # an unmet rule is recorded in its point
    grid = w.grid(solver, steps)
    for name, init in chords_inits(solver, steps, K, spans):
        r = cc.chords(w.model, w.x, grid, solver, init=init, stop=cc.StopAtCore(max(1, K - 1)))
        for n, h in enumerate(r.hits, 1):
            if h.core:
                yield (f"{name}, output {n}", dict(rounds=h.round, nfe=h.nfe, width=K, init="-".join(map(str, init))),
                       h.x)
    for rel in CONVERGED:
        r = cc.chords(w.model, w.x, grid, solver, cores=K, stop=cc.StopWhenConverged(rel))
        yield f"default, converged {rel:g}", dict(rounds=r.rounds, nfe=r.nfe, width=r.width), r.x


def window_runs(fn, lanes: str, tols, label: str = "tol", **fixed):
    def runs(w: Workload, solver: str, steps: int, K: int, spans):
        for tol in tols:
            r = fn(w.model, w.x, w.grid(solver, steps), solver, **{lanes: K}, tol=tol, **fixed)
            yield f"{label} {tol:g}", dict(rounds=r.rounds, nfe=r.nfe, width=r.width), r.x
    return runs


#: The cascade sampler's configurations with the noise-level scale (``scale="level"``) are named
#: with this prefix; the tables also show each of its scales alone, as the rows / columns
#: ``LEVEL_SCALE`` (its default for a diffusion model: one grid, as each peer has) and ``ERROR_SCALE``.
LEVEL_LABEL = "level tol"
ERROR_SCALE = "cascade, error scale"
LEVEL_SCALE = "cascade, level scale"
#: The oracle's columns: every method ("cascade": the best of both its scales' grids, about twice a
#: peer's configurations), and the cascade sampler at each scale alone.
ORACLE_COLUMNS = ("cascade", LEVEL_SCALE, ERROR_SCALE) + PEERS
#: The rows of the calibrate-once table: every method, and the cascade sampler at each scale alone.
TABLE_METHODS = ("cascade", ERROR_SCALE, LEVEL_SCALE) + PEERS


def member(p: dict, m: str) -> bool:
    """Whether point ``p`` is one of method ``m``'s (``ERROR_SCALE`` / ``LEVEL_SCALE``: the cascade's
    configurations on that scale)."""
    if m in (ERROR_SCALE, LEVEL_SCALE):
        return p["method"] == "cascade" and p["config"].startswith(LEVEL_LABEL) == (m == LEVEL_SCALE)
    return p["method"] == m


def cascade_runs(w: Workload, solver: str, steps: int, K: int, spans):
    """The cascade sampler at every tolerance of both its scales: the solver's local error
    (``scale="error"``) and the noise level (``scale="level"``, its default here, on ParaTAA's grid)."""
    yield from window_runs(cc.cascade, "cores", ERROR_TOLS, scale="error")(w, solver, steps, K, spans)
    yield from window_runs(cc.cascade, "cores", LEVEL_TOLS, LEVEL_LABEL, scale="level")(w, solver, steps, K, spans)


#: the configuration name of SRDS's shipped default: blocks K (``parallel``'s), its default stop
SRDS_DEFAULT = f"blocks K, default (residual {SRDS_STOP.tol:g})"


def srds_runs(w: Workload, solver: str, steps: int, K: int, spans):
    with warnings.catch_warnings():  # (StopNotMet where it runs to the last iteration: that is its output)
        warnings.simplefilter("ignore")
        r = cc.srds(w.model, w.x, w.grid(solver, steps), solver, blocks=K)  # its default stop, SRDS_STOP
    yield SRDS_DEFAULT, dict(rounds=r.rounds, nfe=r.nfe, width=r.width), r.x
    for label, nb in (("K", K), ("K/2", max(2, K // 2))):
        if label == "K/2" and nb == K:
            continue
        r = cc.srds(w.model, w.x, w.grid(solver, steps), solver, blocks=nb, tol=0.0)
        assert r.width <= nb <= K, (r.width, nb, K)
        for h in r.hits:
            yield f"blocks {label}, iteration {h.core}", dict(rounds=h.round, nfe=h.nfe, width=r.width), h.x


RUNS = {
    "cascade": cascade_runs,
    "chords": chords_runs,
    "paradigms": window_runs(cc.paradigms, "window", NOISE_TOLS),
    "parasolver": window_runs(cc.parasolver, "window", NOISE_TOLS),
    "parataa": window_runs(cc.parataa, "window", LEVEL_TOLS, memory=3),
    "srds": srds_runs,
}


def bench_case(w: Workload, solver: str, steps: int, cores, spans, log, methods=METHODS) -> dict:
    t0 = time.time()
    if resolve_scale("auto", w.model) != "level":  # DEFAULTS names the cascade's default for diffusion models
        raise ValueError(f"workload {w.name!r}: the suite's workloads are diffusion models")
    ref = w.reference()
    grid = w.grid(solver, steps)
    seq_x = cc.solve(w.model, w.x, grid, solver)
    seq_rounds = sum(cc.make_solver(solver, w.model, grid).evals_per_step())
    seq_err = rms(seq_x - ref)
    baseline = []
    for s in sorted({max(2, round(steps * f)) for f in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)}):
        g = w.grid(solver, s)
        xs = cc.solve(w.model, w.x, g, solver)
        baseline.append(dict(steps=s, rounds=sum(cc.make_solver(solver, w.model, g).evals_per_step()),
                             err_ref=rms(xs - ref)))
    case = dict(workload=w.name, solver=solver, steps=steps, seq_rounds=seq_rounds, seq_err_ref=seq_err,
                batch=int(w.x.shape[0]), baseline=baseline, points=[], headline={})
    if w.quality:
        case["seq_fd"], case["ref_fd"] = w.quality(seq_x), w.quality(ref)
    for K in cores:
        for method in methods:
            first, outs = len(case["points"]), {}  # this method's points on the row, and their outputs by id
            for config, p, x in RUNS[method](w, solver, steps, K, spans):
                p.update(method=method, cores=K, config=config, err_ref=rms(x - ref), err_seq=rms(x - seq_x),
                         speedup=seq_rounds / p["rounds"])
                p["ok"] = p["err_ref"] <= FACTOR * seq_err
                case["points"].append(p)
                outs[id(p)] = x
            best = best_point(case["points"][first:])
            if best is not None:
                h = dict(best)
                if w.quality:
                    h["fd"] = w.quality(outs[id(best)])
                case["headline"].setdefault(method, {})[str(K)] = h
    log(f"{w.name} {solver}-{steps}: {len(case['points'])} outputs in {time.time() - t0:.1f} s")
    return case


# ------------------------------------------------------------------------------------ calibrate once
#: On the calibration problem a configuration must keep its output within this fraction of the
#: sequential solver's error *from the sequential output*: the no-degradation criterion with the
#: luck taken out (an output can meet 1.05 x by deviating in a direction that happens to cancel
#: error on one problem; a deviation of at most 0.05 x meets it on every problem).
CAL_DEVIATION = 0.05


def calibrate(cal_cases: list[dict]) -> dict[str, str]:
    """Per method, the configuration with the fewest calibration rows whose output deviates from the
    sequential one by more than ``CAL_DEVIATION`` x the sequential error, then the fewest rounds in
    all (a configuration absent from a row counts as failing it). The same rule for every method."""
    chosen = {}
    rows = [(c, K) for c in cal_cases for K in sorted({p["cores"] for p in c["points"]})]
    for m in TABLE_METHODS:
        configs = sorted({p["config"] for c in cal_cases for p in c["points"] if member(p, m)})
        best = None
        for cfg in configs:
            fails, total = 0, 0
            for c, K in rows:
                p = next((p for p in c["points"] if member(p, m) and p["cores"] == K and p["config"] == cfg), None)
                if p is None or p["err_seq"] > CAL_DEVIATION * c["seq_err_ref"]:
                    fails += 1
                    total += c["seq_rounds"]
                else:
                    total += p["rounds"]
            key = (fails, total, cfg)
            if best is None or key < best:
                best = key
        if best is not None:
            chosen[m] = best[2]
    return chosen


def applied(cases: list[dict], chosen: dict[str, str], methods=TABLE_METHODS) -> dict[str, list]:
    """Per method of ``methods``, per row: the chosen configuration's point (or None where it does not
    exist, or no configuration was chosen)."""
    out: dict[str, list] = {m: [] for m in methods}
    for c in cases:
        for K in sorted({p["cores"] for p in c["points"]}):
            for m in methods:
                p = next((p for p in c["points"] if member(p, m) and p["cores"] == K
                          and p["config"] == chosen.get(m)), None)
                out[m].append((c, K, p))
    return out


# ---------------------------------------------------------------------------------------- reporting
def pareto(points: list[dict]) -> list[dict]:
    """Points not dominated in (rounds, err_ref), sorted by rounds."""
    front, best = [], np.inf
    for p in sorted(points, key=lambda p: (p["rounds"], p["err_ref"])):
        if p["err_ref"] < best:
            front.append(p)
            best = p["err_ref"]
    return front


COLORS = {"cascade": "C3", "chords": "C1", "paradigms": "C0", "parasolver": "C4", "parataa": "C5", "srds": "C2"}


def plot_case(case: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    cores = sorted({p["cores"] for p in case["points"]})
    fig, axes = plt.subplots(1, len(cores), figsize=(4.4 * len(cores), 3.8), sharey=True, squeeze=False)
    for ax, K in zip(axes[0], cores):
        b = case["baseline"]
        ax.plot([p["rounds"] for p in b], [p["err_ref"] for p in b], "k.-",
                label=f"sequential {case['solver']}, fewer steps")
        for m in METHODS:
            pts = [p for p in case["points"] if p["method"] == m and p["cores"] == K]
            if not pts:
                continue
            ax.scatter([p["rounds"] for p in pts], [p["err_ref"] for p in pts], s=8, alpha=0.3, color=COLORS[m])
            f = pareto(pts)
            ax.step([p["rounds"] for p in f], [p["err_ref"] for p in f], where="post", color=COLORS[m], label=m)
        ax.axhline(FACTOR * case["seq_err_ref"], color="gray", ls="--", lw=0.8, label="1.05 x sequential error")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks([v for v in (2, 5, 10, 20, 50, 100, 200) if v <= 1.2 * case["steps"] * 2])
        ax.set_xlabel("rounds (sequential model evaluations)")
        ax.set_title(f"{K} cores")
    axes[0][0].set_ylabel("RMS error vs reference")
    axes[0][0].legend(fontsize=6)
    fig.suptitle(f"{case['workload']}, {case['solver']} {case['steps']} steps: each method's Pareto front", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def best_point(points) -> dict | None:
    """The point meeting the criterion with the fewest rounds, then the fewest evaluations (or ``None``)."""
    return min((p for p in points if p["ok"]), key=lambda p: (p["rounds"], p["nfe"]), default=None)


def scale_best(case: dict, K: int, scale: str) -> dict | None:
    """The cascade sampler's best point on a row among one scale's configurations only (``scale``:
    ``LEVEL_SCALE`` or ``ERROR_SCALE``)."""
    return best_point(p for p in case["points"] if member(p, scale) and p["cores"] == K)


def oracle_markdown(cases: list[dict]) -> tuple[str, dict]:
    cols = ORACLE_COLUMNS
    head = "| workload | solver | cores | " + " | ".join(cols) + " | floor ⌈T/K⌉ |"
    rows = [head, "|" + "---|" * (len(cols) + 4)]
    tally = {name: dict(rows=0, wins=0, ties=0, losses=0, lost=[]) for name in (LEVEL_SCALE, ERROR_SCALE, "cascade")}
    for c in cases:
        for K in sorted({p["cores"] for p in c["points"]}):
            hs = {m: c["headline"].get(m, {}).get(str(K)) for m in METHODS}
            hs[LEVEL_SCALE], hs[ERROR_SCALE] = scale_best(c, K, LEVEL_SCALE), scale_best(c, K, ERROR_SCALE)
            top = max((hs[m]["speedup"] for m in cols if hs[m]), default=None)
            cells = [("—" if hs[m] is None
                      else (f"**{hs[m]['speedup']:.2f}×**" if hs[m]["speedup"] == top else f"{hs[m]['speedup']:.2f}×"))
                     for m in cols]
            floor = c["seq_rounds"] / -(-c["seq_rounds"] // K)
            rows.append(f"| {c['workload']} | {c['solver']} {c['steps']} | {K} | " + " | ".join(cells)
                        + f" | {floor:.2f}× |")
            peer = min((hs[m]["rounds"] for m in PEERS if hs[m]), default=None)
            for name, t in tally.items():
                ours = hs[name]["rounds"] if hs[name] else None
                t["rows"] += 1
                if ours is not None and (peer is None or ours < peer):
                    t["wins"] += 1
                elif ours is not None and ours == peer:
                    t["ties"] += 1
                else:
                    t["losses"] += 1
                    t["lost"].append(f"{c['workload']} {c['solver']} {c['steps']} K={K}")
    return "\n".join(rows), tally


def calibrated_markdown(cases: list[dict], chosen: dict[str, str], methods=TABLE_METHODS) -> tuple[str, dict]:
    app = applied(cases, chosen, methods)
    rows = ["| method | configuration chosen on the calibration problem | rows meeting the criterion | failures | "
            "median speedup (all rows, a failing row 1×) | median speedup (rows met) |", "|---|---|---|---|---|---|"]
    summary = {}
    for m in app:
        pts = app[m]
        ok = [p for _, _, p in pts if p is not None and p["ok"]]
        fails = [f"{c['workload']} {c['solver']} {c['steps']} K={K}" for c, K, p in pts if p is None or not p["ok"]]
        # (a row that misses the criterion counts as no speedup, as a missing one: its output is not the one asked for)
        sp_all = [(p["speedup"] if p is not None and p["ok"] else 1.0) for _, _, p in pts]
        med_all = statistics.median(sp_all) if sp_all else float("nan")
        med_ok = statistics.median([p["speedup"] for p in ok]) if ok else float("nan")
        summary[m] = dict(config=chosen.get(m), failures=fails, median=med_all, median_ok=med_ok, rows=len(pts))
        rows.append(f"| {m} | {chosen.get(m, '—')} | {len(ok)} / {len(pts)} | {len(fails)} | "
                    f"{med_all:.2f}× | {med_ok:.2f}× |")
    return "\n".join(rows), summary


#: Each method's shipped default, as a configuration name of this suite (the cascade's default for a
#: diffusion model, which every workload is (``bench_case`` checks): the noise-level scale at
#: ``LEVEL_TOL``, which ``cc.cascade`` scales with the steps as the "level tol" configurations are).
DEFAULTS = {"cascade": f"{LEVEL_LABEL} {LEVEL_TOL:g}",
            "chords": "default, converged 0.1", "paradigms": "tol 0.1", "parasolver": "tol 0.1", "parataa": "tol 0.001",
            "srds": SRDS_DEFAULT}


def quality_markdown(cases: list[dict]) -> str:
    q = [c for c in cases if "seq_fd" in c]
    if not q:
        return ""
    out = ("| workload | solver | sequential | cores | " + " | ".join(METHODS) + " |\n|"
           + "---|" * (len(METHODS) + 4) + "\n")
    for c in q:
        for K in sorted({p["cores"] for p in c["points"]}):
            fd = [c["headline"].get(m, {}).get(str(K), {}).get("fd") for m in METHODS]
            out += f"| {c['workload']} | {c['solver']} {c['steps']} | {c['seq_fd']:.3f} | {K} | " + " | ".join(
                "—" if v is None else f"{v:.3f}" for v in fd) + " |\n"
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="mixtures only, fewer configurations")
    ap.add_argument("--workloads", nargs="+", default=None, help=f"subset of {sorted(WORKLOADS)}")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default benchmarks/results[/quick])")
    ap.add_argument("--report", type=Path, default=None, metavar="RESULTS_JSON",
                    help="print the tables of an earlier run's results.json (no solving)")
    a = ap.parse_args(argv)
    if a.report is not None:
        stored = read_report(ap, a.report, ("cases", "calibration"))
        report(stored["cases"], calibrate(stored["calibration"]))
        return
    names = a.workloads or (["gmm_rf", "gmm_vp"] if a.quick else list(WORKLOADS))
    bad = set(names) - set(WORKLOADS)
    if bad:
        ap.error(f"unknown workloads {sorted(bad)}; choose from {sorted(WORKLOADS)}")
    out = a.out or Path(__file__).parent / "results" / ("quick" if a.quick else "")
    out.mkdir(parents=True, exist_ok=True)
    spans = (0.45, 0.75, 1.0) if a.quick else CHORDS_SPANS
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.time()
    cal = calibration_workload()
    cal_cases = [bench_case(cal, solver, steps, CORES, spans, log) for solver, steps in SOLVERS]
    chosen = calibrate(cal_cases)
    log(f"calibrated: {chosen}")
    cases = []
    for name in names:
        w = WORKLOADS[name]()
        extra = MORE_SOLVERS if name in ("gmm_rf", "gmm_vp") and not a.quick else ()
        for solver, steps in SOLVERS + extra:
            case = bench_case(w, solver, steps, CORES, spans, log)
            plot_case(case, out / f"{name}_{solver}{steps}.png")
            cases.append(case)
    report(cases, chosen)
    # (the run's settings only, not its tallies: ``--report`` forms them anew from the cases, and stored ones went
    # stale as the report grew, a review: calibrated medians 1.73 / 1.87 / 1.70 against the report's 1.60 / 1.82 /
    # 1.64, and no level-scale tally)
    meta = dict(factor=FACTOR, cores=CORES, noise_tols=NOISE_TOLS, level_tols=LEVEL_TOLS, error_tols=ERROR_TOLS,
                chords_spans=spans, quick=a.quick, seconds=round(time.time() - t0, 1), chords_version=cc.__version__,
                numpy=np.__version__, chosen=chosen)
    (out / "results.json").write_text(json.dumps(dict(meta=meta, cases=cases, calibration=cal_cases), indent=1))
    log(f"{len(cases)} cases in {time.time() - t0:.0f} s; wrote {out}/results.json and PNGs")


def report(cases: list[dict], chosen: dict[str, str]) -> None:
    """Print the oracle, calibrate-once and shipped-defaults tables (with the tallies and the summary)."""
    oracle, tally = oracle_markdown(cases)
    calib, summary = calibrated_markdown(cases, chosen)
    print("## Oracle: each method at its best configuration per row (an upper bound)\n")
    print(oracle)
    for name, t in tally.items():
        what = name if name != "cascade" else "cascade (the best of both scales: twice a peer's configurations)"
        print(f"\n{what} vs the best peer per row: {t['wins']} wins, {t['ties']} ties, {t['losses']} losses "
              f"of {t['rows']} rows" + (f" (losses: {'; '.join(t['lost'])})" if t["lost"] else ""))
    print("\n## Calibrate once: one configuration per method, chosen on the calibration problem\n")
    print(calib)
    for m, s in summary.items():
        if s["failures"]:
            print(f"- {m} misses the criterion on: {'; '.join(s['failures'])}")
    print("\n## Shipped defaults (no tuning at all)\n")
    table = calibrated_markdown(cases, DEFAULTS, tuple(DEFAULTS))[0]
    print(table.replace("configuration chosen on the calibration problem", "default configuration"))
    q = quality_markdown(cases)
    if q:
        print("\nFrechet distance (raw pixels, vs all digits) of the oracle outputs (the cascade sampler's at "
              "either scale, as its oracle column); lower is better:\n")
        print(q)


if __name__ == "__main__":
    main()
