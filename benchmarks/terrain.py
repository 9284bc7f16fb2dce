"""A real pretrained network end to end: every parallel method on the terrain UNet, wall clock on 2 CPU workers.

The network is the ONNX consistency UNet of the PyPI package ``adaptive-terrain-diffusion`` 0.4.2
(``terrain_model.py``: EDM denoiser D(x; sigma, difficulty) on 128 x 128 x 1 heightfields, about
110-150 ms per evaluation on one CPU thread, bit-for-bit batch- and thread-invariant). It is
**consistency-distilled** (endpoint distillation from a 20-step teacher): its own sampler is a single
call at sigma = 80, and the probability-flow ODE built from its denoiser is not the teacher's ODE:
multi-step ODE samples saturate (they hit the network's clip range [-1, 1]; the one-step sample
does not). So this benchmark measures **speed and agreement with the sequential solver on a real
network, not sample quality**.

Set-up: one noise sample (``--batch``), difficulty 50, the package's noise range sigma 80 -> 0.002 -> 0
on the Karras grid (rho = 7, ``cc.time_grid(cc.EDM(), steps, "karras")``), ``--steps`` 20 steps:
the step count of the model's distillation teacher (ONNX metadata ``teacher_steps = 20``), the
middle of the usual 18-35 EDM range, and what keeps a full run within about 10 minutes here.
Euler (20 evaluations) and Heun (39: two per step, one on the final step to sigma = 0).

Jobs, interleaved repeat by repeat so that every job sees the same machine load:

- ``seq``: the sequential solver ``cc.solve`` in the driver with one onnxruntime session of
  ``intra_op_num_threads = 2`` (both cores): **the baseline** a user without this library runs. It
  runs twice per repeat, once with idle intra-op threads spinning (onnxruntime's default, faster on a
  quiet machine: 77 vs 95 ms an evaluation) and once with them sleeping (faster on a loaded one:
  170 vs 360 ms at load 5), and each repeat's baseline is the faster of the two;
- ``seq 1 worker``: the same solve as one point per round on the 2-worker executor (cores = 1:
  one worker process, one thread), the baseline of the parallel efficiency;
- each method (``cc.parallel(method=...)``: cascade, chords, paradigms, parasolver, parataa, each at
  its library defaults) at ``cores = 2`` through ``chords_torch.ProcessExecutor`` with 2 worker
  processes, one onnxruntime thread each (the factory builds the session inside the worker);
- a probe of the parallel capacity (how many evaluations run at once right now: 2 x the time of
  a 1-point round / the time of a 2-point round; 2.00 on an idle 2-core machine).

Reported per method and solver: rounds, NFE, the round speedup (sequential evaluations / rounds),
the 2-worker bound (sequential evaluations / sum over rounds of ceil(n_r / 2)), the wall-clock
speedup against ``seq`` (2 threads) and against ``seq 1 worker``, each taken repeat by repeat (the
sequential time of a repeat / the method's time of the same repeat) and printed as median
[min-max]; the deviation from the sequential output (RMS of the difference / RMS of the sequential
output) and, with a fine reference (Heun with ``--ref-steps`` steps on the same grid family), the
deviation / the sequential solver's own error vs the reference, and the method's error vs the
reference / the sequential solver's (<= 1.05: no degradation).

The ceiling: 2 threads on one evaluation run 1.3-1.9x faster than one thread (1.6x on a quiet
machine), so against the 2-thread baseline a 2-worker method needs at least that round speedup
just to tie (the ``bound vs seq`` column).

    .venv/bin/python benchmarks/terrain.py            # full: ~7 min on 2 shared cores, writes results/terrain.json
    .venv/bin/python benchmarks/terrain.py --quick    # 10 steps, 2 repeats, no reference: 1-2 min, writes nothing
    .venv/bin/python benchmarks/terrain.py --report benchmarks/results/terrain.json   # re-print a run's table
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import timing  # noqa: E402
from terrain_model import (  # noqa: E402
    NUM_CLASSES,
    TerrainDenoiser,
    available,
    terrain_factory,
    terrain_model,
    terrain_noise,
)

import chords_core as cc  # noqa: E402
from chords_core.demo import int_at_least  # noqa: E402

METHODS = ("cascade", "chords", "paradigms", "parasolver", "parataa")
SOLVERS = ("euler", "heun")
RESULTS = Path(__file__).resolve().parent / "results" / "terrain.json"
NOTE = ("The terrain UNet is consistency-distilled: its multi-step ODE samples saturate (they hit the clip "
        "range [-1, 1]), so this measures speed and agreement with the sequential solver on a real network, "
        "not sample quality.")


def rms(a: np.ndarray) -> float:
    """The root mean square of ``a`` in float64 (``timing.rms``)."""
    return timing.rms(np.asarray(a, dtype=np.float64))


def as_numpy(x: Any) -> np.ndarray:
    """A state (numpy array or torch tensor) as a float64 numpy array."""
    return np.asarray(x.detach().numpy() if hasattr(x, "detach") else x, dtype=np.float64)


def spread(values: Sequence[float], fmt: str = ".2f") -> str:
    """``median [min-max]`` of ``values``, two decimals."""
    return timing.spread(values, fmt=fmt)


def per_eval_ms(fn: Callable[[Any, Any], Any], x: Any, n: int = 5) -> float:
    """The median time of one call of ``fn`` at (x, sigma = 1) after one warm-up call, in ms."""
    import torch

    return timing.per_eval_ms(fn, x, torch.ones(x.shape[0], dtype=x.dtype), n=n, warmup=1)


def run(a: argparse.Namespace) -> dict:
    """Run the benchmark (see the module docstring) and return the JSON-ready record."""
    import onnxruntime
    import torch

    from chords_torch import ProcessExecutor

    torch.set_num_threads(1)  # the driver only forms linear combinations; onnxruntime has its own threads
    # the sequential baseline on both cores, in onnxruntime's two thread-pool modes: idle threads spinning (its
    # default; faster on a quiet machine) and sleeping (faster on a loaded one); each repeat takes the faster
    model = terrain_model(threads=2, difficulty=a.difficulty, spin=True)
    model_sleep = terrain_model(threads=2, difficulty=a.difficulty, spin=False)
    x = torch.from_numpy(terrain_noise(a.batch, a.seed))
    grids = {s: cc.time_grid(cc.EDM(), a.steps, "karras") for s in a.solvers}
    one = TerrainDenoiser(threads=1, difficulty=a.difficulty)
    ms1, ms2, ms2_sleep = per_eval_ms(one, x), per_eval_ms(model.fn, x), per_eval_ms(model_sleep.fn, x)
    del one
    load0 = os.getloadavg()[0]
    print(f"terrain UNet (onnxruntime {onnxruntime.__version__}, CPU), batch {a.batch}, difficulty {a.difficulty}: "
          f"{ms1:.0f} ms per evaluation on 1 thread, {ms2:.0f} ms on 2 threads ({ms2_sleep:.0f} ms with idle threads "
          f"sleeping); Karras grid, {a.steps} steps; {os.cpu_count()} CPUs, load average {load0:.1f}", flush=True)

    ref = None
    t_ref = 0.0
    if a.ref_steps:
        t0 = time.perf_counter()
        ref = as_numpy(cc.solve(model, x, cc.time_grid(cc.EDM(), a.ref_steps, "karras"), "heun"))
        t_ref = time.perf_counter() - t0
        print(f"reference: Heun {a.ref_steps} steps, {t_ref:.0f} s", flush=True)

    t_start = time.perf_counter()
    with ProcessExecutor(terrain_factory(1, a.difficulty), workers=2, threads=1) as ex:
        jobs: dict[tuple[str, str], Callable[[], Any]] = {}
        for s in a.solvers:
            g = grids[s]
            jobs[s, "seq"] = lambda g=g, s=s: cc.solve(model, x, g, s)
            jobs[s, "seq sleep"] = lambda g=g, s=s: cc.solve(model_sleep, x, g, s)
            jobs[s, "seq 1 worker"] = lambda g=g, s=s: cc.parallel(model, x, g, s, cores=1, method="chords",
                                                                   executor=ex)
            for m in a.methods:
                jobs[s, m] = lambda g=g, s=s, m=m: cc.parallel(model, x, g, s, cores=a.cores, method=m, executor=ex)
        sigma = torch.ones(a.batch, dtype=x.dtype)
        probe = {"probe1": lambda: [ex(model, [x], [1.0]) for _ in range(3)],  # 1 point: 1 worker, 1 thread
                 "probe2": lambda: [ex(model, [x, x], [1.0, 1.0]) for _ in range(3)],  # 2 points on 2 workers
                 "probe2t": lambda: [model.fn(x, sigma) for _ in range(3)],  # 1 point, driver, 2 threads
                 "probe2t sleep": lambda: [model_sleep.fn(x, sigma) for _ in range(3)]}
        def job_done(r: int, k: Any, seconds: float) -> None:
            if a.verbose and k in jobs:
                print(f"  repeat {r + 1} {k[0]:<5} {k[1]:<12} {seconds:6.2f} s", flush=True)

        def repeat_done(r: int, secs: dict) -> None:
            print(f"repeat {r + 1}/{a.repeats} done, {time.perf_counter() - t_start:.0f} s", flush=True)

        # interleaved, in a fresh order every repeat: the same load for all, and no job always after the same one
        secs, results = timing.interleaved({**jobs, **probe}, a.repeats, shuffle=True, after_call=job_done,
                                           after_repeat=repeat_done)
    times: dict[Any, list[float]] = {k: list(v) for k, v in secs.items()}
    outs: dict[tuple[str, str], Any] = {k: results[k][0] for k in jobs}

    def sample(k: tuple[str, str], out: Any) -> Any:
        return out if k[1].startswith("seq") and k[1] != "seq 1 worker" else out.x  # a solve returns the tensor

    same = {k: all(torch.equal(sample(k, o), sample(k, outs[k])) for o in results[k][1:]) for k in jobs}
    capacity = [min(2.0, 2 * p1 / p2) for p1, p2 in zip(times["probe1"], times["probe2"])]
    threads_x = [p1 / min(p2t, p2s) for p1, p2t, p2s in zip(times["probe1"], times["probe2t"], times["probe2t sleep"])]
    for s in a.solvers:  # the baseline: the faster thread-pool mode of each repeat
        times[s, "seq spin"] = times[s, "seq"]
        times[s, "seq"] = [min(t1, t2) for t1, t2 in zip(times[s, "seq spin"], times[s, "seq sleep"])]

    rows = []
    for s in a.solvers:
        seq = as_numpy(outs[s, "seq"])
        same[s, "seq"] &= same[s, "seq sleep"] and bool(np.array_equal(seq, as_numpy(outs[s, "seq sleep"])))
        err_seq = rms(seq - ref) if ref is not None else None
        rows.append(dict(solver=s, method="seq", cores=1, rounds=outs[s, "seq 1 worker"].nfe,
                         nfe=outs[s, "seq 1 worker"].nfe, seconds=times[s, "seq"],
                         seconds_spin=times[s, "seq spin"], seconds_sleep=times[s, "seq sleep"],
                         speedup_over_1_worker=[t1 / t2 for t1, t2 in zip(times[s, "seq 1 worker"], times[s, "seq"])],
                         seq_err_rel=None if err_seq is None else err_seq / rms(ref),
                         saturated=float(np.mean(np.abs(seq) >= 0.999)), repeats_identical=same[s, "seq"]))
        for name in ("seq 1 worker", *a.methods):
            res = outs[s, name]
            y = as_numpy(res.x)
            dev = rms(y - seq)
            err = rms(y - ref) if ref is not None else None
            walls = [t_s / t_m for t_s, t_m in zip(times[s, "seq"], times[s, name])]
            walls1 = [t_s / t_m for t_s, t_m in zip(times[s, "seq 1 worker"], times[s, name])]
            rows.append(dict(
                solver=s, method=name, cores=1 if name == "seq 1 worker" else a.cores, rounds=res.rounds,
                nfe=res.nfe, width=res.width, sequential_rounds=res.sequential_rounds,
                round_speedup=res.sequential_rounds / res.rounds, worker_bound=timing.worker_bound(res, 2),
                bound_vs_seq=timing.worker_bound(res, 2) / statistics.median(threads_x),
                seconds=times[s, name], seq_seconds=times[s, "seq"], seq1_seconds=times[s, "seq 1 worker"],
                wall_speedup=walls, wall_speedup_vs_1_worker=walls1,
                dev_rel=dev / rms(seq), dev_over_seq_err=None if err_seq is None else dev / err_seq,
                err_over_seq_err=None if err is None or err_seq is None else err / err_seq,
                repeats_identical=same[s, name], stopped_by=res.stopped_by))
    return dict(
        note=NOTE,
        command=" ".join(["benchmarks/terrain.py", *a.argv]),
        config=dict(steps=a.steps, solvers=list(a.solvers), methods=list(a.methods), cores=a.cores, workers=2,
                    worker_threads=1, seq_threads=2, batch=a.batch, difficulty=a.difficulty,
                    seed=a.seed, repeats=a.repeats, ref_steps=a.ref_steps, grid="karras rho=7, sigma 80 -> 0.002 -> 0"),
        env=dict(cpus=os.cpu_count(), load_before=load0, load_after=os.getloadavg()[0],
                 python=platform.python_version(), onnxruntime=onnxruntime.__version__,
                 ms_per_eval_1_thread=ms1, ms_per_eval_2_threads=ms2,
                 ms_per_eval_2_threads_sleeping=ms2_sleep,
                 capacity=capacity, thread_speedup=threads_x, reference_seconds=t_ref,
                 total_seconds=time.perf_counter() - t_start + t_ref),
        rows=rows,
    )


def _opt(v: float | None) -> str:
    return "—" if v is None else f"{v:.3g}"


def table(rec: dict) -> str:
    """The markdown table of a run's record (``run`` / terrain.json)."""
    c, env = rec["config"], rec["env"]
    threads_x = env.get("thread_speedup")
    lines = [
        f"terrain UNet, Karras {c['steps']} steps, batch {c['batch']}, {c['repeats']} interleaved repeats, "
        f"{env['total_seconds']:.0f} s; at the start {env['ms_per_eval_1_thread']:.0f} ms / evaluation on 1 thread, "
        f"{env['ms_per_eval_2_threads']:.0f} ms on 2"
        + (f" ({env['ms_per_eval_2_threads_sleeping']:.0f} ms sleeping)" if "ms_per_eval_2_threads_sleeping" in env
           else "")
        + f"; per repeat: 2 threads vs 1 on one evaluation "
        f"{spread(threads_x) if threads_x else '—'}x, parallel capacity of the 2 workers {spread(env['capacity'])} "
        f"evaluations at once; load average {env['load_before']:.1f} -> {env['load_after']:.1f} on "
        f"{env['cpus']} CPUs",
        "",
        "| solver | method | rounds | NFE | round x | 2-worker bound | bound vs seq (2 threads) | wall s "
        "| wall x vs seq (2 threads) | wall x vs seq 1 worker | dev / RMS(seq) | dev / seq err | err / seq err |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rec["rows"]:
        if r["method"] == "seq":
            err = "—" if r["seq_err_rel"] is None else f"seq err = {r['seq_err_rel']:.3g} RMS(ref)"
            lines.append(f"| {r['solver']} | **seq, 2 threads** | {r['rounds']} | {r['nfe']} | 1.00 | — | 1.00 | "
                         f"{spread(r['seconds'])} | 1.00 | {spread(r['speedup_over_1_worker'])} | 0 | 0 | {err}; "
                         f"{100 * r['saturated']:.0f} % of pixels at ±1 |")
            continue
        lines.append(
            f"| {r['solver']} | {r['method']} | {r['rounds']} | {r['nfe']} | {r['round_speedup']:.2f} | "
            f"{r['worker_bound']:.2f} | {_opt(r.get('bound_vs_seq'))} | {spread(r['seconds'])} | "
            f"**{spread(r['wall_speedup'])}** | {spread(r['wall_speedup_vs_1_worker'])} | {r['dev_rel']:.2g} | "
            f"{_opt(r['dev_over_seq_err'])} | {_opt(r['err_over_seq_err'])} |")
    lines += ["", "round x = sequential evaluations / rounds; 2-worker bound = sequential evaluations / "
              "sum_r ceil(n_r / 2): the wall speedup over the 1-thread sequential solve with 2 free cores and no "
              "overhead; bound vs seq (2 threads) = that bound / the measured 2-thread speedup of one evaluation "
              "(median over repeats); wall x = sequential wall time / method wall time of the same repeat, median "
              "[min-max]; seq (2 threads) = cc.solve in the driver, one onnxruntime session with 2 intra-op threads "
              "(per repeat the faster of idle threads spinning / sleeping); "
              "seq 1 worker = the same solve on one worker process, 1 thread; dev = RMS(method output - sequential "
              "output); seq err = RMS(sequential "
              + (f"output - Heun {c['ref_steps']} reference); err = RMS(method output - reference)." if c["ref_steps"]
                 else "output - reference): no reference in this run."),
              "", NOTE]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description="Every parallel method on a real pretrained network (terrain UNet, "
                                            "ONNX, CPU): wall clock on 2 worker processes vs the 2-thread solve")
    p.add_argument("--steps", type=int_at_least(1), default=20, help="Karras grid steps (default 20, the teacher's)")
    p.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=SOLVERS)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=sorted(cc.METHODS))
    p.add_argument("--cores", type=int_at_least(1), default=2,
                   help="cores of each parallel method (2 workers run them)")
    p.add_argument("--repeats", type=int_at_least(1), default=5)
    p.add_argument("--batch", type=int_at_least(1), default=1, help="noise samples per solve")
    p.add_argument("--difficulty", type=int_at_least(1), default=50, help=f"1..{NUM_CLASSES} (default 50)")
    p.add_argument("--seed", type=int_at_least(0), default=0)
    p.add_argument("--ref-steps", type=int_at_least(0), default=400,
                   help="Heun steps of the fine reference (0: none; 400: Heun 100 was 0.0016 x RMS from Heun 200, "
                        "5%% of Heun 20's own error, the whole of the criterion's margin)")
    p.add_argument("--out", type=Path, default=None,
                   help=f"the JSON record (default: {RESULTS} for a full run at the default options, else none)")
    p.add_argument("--quick", action="store_true", help="10 steps, 2 repeats, no reference; writes no JSON")
    p.add_argument("--report", type=Path, help="print the table of an earlier run's JSON (no solving)")
    p.add_argument("--verbose", action="store_true", help="print every job's time")
    argv = sys.argv[1:] if argv is None else argv
    a = p.parse_args(argv)
    a.argv = argv
    if a.report:
        print(table(timing.read_report(p, a.report, ("config", "env", "rows"))))
        return
    if a.difficulty > NUM_CLASSES:
        p.error(f"argument --difficulty: must be 1..{NUM_CLASSES}, got {a.difficulty}")
    if a.cores > (10 if a.quick else a.steps):
        p.error(f"argument --cores: at most the steps ({10 if a.quick else a.steps}), got {a.cores}")
    if not available():
        p.error("needs adaptive-terrain-diffusion and onnxruntime: pip install --no-deps "
                "'adaptive-terrain-diffusion==0.4.2' and pip install 'onnxruntime>=1.18' (make test does both)")
    if a.quick:
        a.steps, a.repeats, a.ref_steps = 10, 2, 0
    # the committed record is the full run's: a run of other options (--methods cascade, say) writes it
    # only when asked (it replaced the full table with its own rows)
    full = all(getattr(a, k) == p.get_default(k) for k in ("steps", "solvers", "methods", "cores", "repeats", "batch",
                                                              "difficulty", "seed", "ref_steps"))
    out = a.out if a.out is not None else (RESULTS if full and not a.quick else None)
    rec = run(a)
    print()
    print(table(rec))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rec, indent=1))
        print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
