"""GPU self-check: the GPU paths of chords against the serial result, and a wall-clock speedup, in minutes.

    python benchmarks/gpu_check.py              # every visible GPU; skips cleanly without one
    python benchmarks/gpu_check.py --allow-cpu  # the same checks on the CPU (exercises the script)

Sections (each prints one line of JSON; the last line summarises):

1. ``device``: ``DeviceExecutor`` over every visible GPU (one thread and one replica per GPU), CHORDS
   with a seeded float64 MLP, every core's output against ``SerialExecutor`` on the first GPU
   (maximum absolute difference; one call per point, so equal up to the devices' kernels); again with
   the caller in a CUDA stream of its own and the first device named by a bare ``"cuda"``.
2. ``distributed``: ``DistributedExecutor`` under torchrun with nccl, one rank per GPU, running
   ``python -m chords_torch.demo``, which compares every output with the serial executor bit for
   bit (nccl needs a GPU per rank: with one GPU, or ``--allow-cpu``, 2 ranks on gloo).
3. ``jax``: ``chords_jax.chords`` sharded over the JAX GPU devices against the numpy core (skipped,
   with the reason, where JAX has no GPU backend).
4. ``diffusers``: ``chords_diffusers`` models on the first GPU against the CPU, for three schedulers
   (sigmas on the host, timesteps on the device, and both on the device); skipped without diffusers.
5. ``speedup``: a seeded MLP (1024-4096x8-1024) whose batch doubles until one evaluation takes
   about ``--ms`` ms on one GPU; the sequential
   solve against CHORDS (first output, ``StopAtCore(1)``) with one core per GPU (``DeviceExecutor``)
   and, on one GPU, with the round's points batched (``BatchedExecutor``: the GPU's spare capacity
   is the parallelism). Wall-clock median [min-max] of ``--repeats`` interleaved repeats (CUDA
   synchronised), the ratio taken repeat by repeat, beside the round speedup T / rounds.

Meant to finish in under 5 minutes on a GPU machine (``--quick`` for a shorter run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import chords_core as cc
from chords_torch import DeviceExecutor
from chords_torch.testing import MLP

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import interleaved, positive_float, spread  # noqa: E402

BACKENDS = Path(__file__).resolve().parents[1] / "backends"


def emit(section: str, **fields) -> dict:
    """Print one JSON line for a section and return it."""
    rec = {"section": section, **fields}
    print(json.dumps(rec), flush=True)
    return rec


def sync(devices) -> None:
    for d in devices:
        if d.type == "cuda":
            torch.cuda.synchronize(d)


def check_devices(devices, steps: int) -> dict:
    """CHORDS over every device with DeviceExecutor against SerialExecutor on the first one."""
    net = MLP(64, 256, 3, seed=0, dtype=torch.float64).eval().to(devices[0])
    model = cc.DiffusionModel(net, cc.RectifiedFlow(), "flow")
    x = torch.randn(4, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).to(devices[0])
    grid = cc.time_grid(model.schedule, steps)
    cores = max(2, len(devices))
    cuda = devices[0].type == "cuda"
    with torch.no_grad():
        ref = cc.chords(model, x, grid, "euler", cores=cores, stop=None, executor=cc.SerialExecutor())
        with DeviceExecutor(devices) as ex:
            res = cc.chords(model, x, grid, "euler", cores=cores, stop=None, executor=ex)
        # the caller in a CUDA stream of its own (the device threads wait for it), devices named by a bare
        # "cuda" (the current device, resolved once, not per thread)
        stream = torch.cuda.Stream(devices[0]) if cuda else None
        named = ["cuda"] + devices[1:] if cuda else devices
        with DeviceExecutor(named) as ex, (torch.cuda.stream(stream) if cuda else contextlib.nullcontext()):
            own = cc.chords(model, x * 1.0, grid, "euler", cores=cores, stop=None, executor=ex)
        sync(devices)
    diff = max(float((a.x - b.x).abs().max()) for a, b in zip(res.hits, ref.hits))
    diff_own = max(float((a.x - b.x).abs().max()) for a, b in zip(own.hits, ref.hits))
    seq = cc.solve(model, x, grid, "euler")
    return emit("device", devices=[str(d) for d in devices], cores=cores, max_abs_diff=diff,
                max_abs_diff_own_stream=diff_own, core0_equals_solve=bool(torch.equal(res.hits[-1].x, seq)),
                ok=max(diff, diff_own) <= 1e-10)


def check_diffusers(device: torch.device, steps: int) -> dict:
    """``chords_diffusers`` on the device against the same model on the CPU, for schedulers that keep
    their sigmas on the CPU and their timesteps on the device (Euler, DPM-Solver++) and one that keeps
    both on the device (FlowMatchEuler); a tiny network, no weights to download."""
    try:
        import diffusers

        import chords_diffusers as cd
    except ImportError as e:
        return emit("diffusers", skipped=f"diffusers is not installed ({e})", ok=True)

    def net(x, tau):
        scale = (tau.to(torch.float64) / 1000.0).to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        return torch.tanh(x) * 0.3 + scale * x

    worst, names = 0.0, []
    for make in (diffusers.EulerDiscreteScheduler, diffusers.DPMSolverMultistepScheduler,
                 diffusers.FlowMatchEulerDiscreteScheduler):
        x = torch.randn(2, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        outs = []
        for dev in (torch.device("cpu"), device):
            smap = cd.map_scheduler(make(), steps, device=dev)
            model = cd.make_model(smap, net)
            with torch.no_grad():
                outs.append(cc.chords(model, x.to(dev) * float(smap.init_noise_sigma), smap.grid, smap.solver,
                                      cores=4, stop=None).x.cpu())
        worst = max(worst, float((outs[0] - outs[1]).abs().max()))
        names.append(make.__name__)
    return emit("diffusers", device=str(device), schedulers=names, max_abs_diff=worst, ok=worst <= 1e-9)


def stop_torchrun(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """End a torchrun that outlived its timeout, with its ranks: SIGTERM to torchrun, which passes it to
    each rank (every rank runs in a session of its own, so neither killing torchrun nor its process
    group reaches them: they went on waiting in nccl, holding the GPUs through the next section),
    then SIGKILL to what is left of torchrun's group; the pipes are given up after ``grace`` seconds
    (a rank that ignores both would keep them open)."""
    proc.terminate()
    try:
        proc.communicate(timeout=grace)
        return
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.communicate(timeout=grace)


def check_distributed(ranks: int, backend: str, timeout: float) -> dict:
    """torchrun with ``ranks`` processes running the chords_torch demo (it compares with serial)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BACKENDS), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
           "-m", "chords_torch.demo", "--steps", "16", "--cores", str(max(2, ranks - 1)), "--backend", backend]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_torchrun(proc)
        return emit("distributed", backend=backend, ranks=ranks, ok=False, error=f"no answer within {timeout:g} s")
    p = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    rep = json.loads(lines[-1]) if lines else {}
    return emit("distributed", backend=backend, ranks=ranks, seconds=round(time.monotonic() - t0, 1),
                equal=rep.get("equal"), ok=p.returncode == 0 and rep.get("equal") is True,
                **({} if p.returncode == 0 else {"error": (p.stdout + p.stderr)[-2000:]}))


def check_jax(allow_cpu: bool, steps: int) -> dict:
    """chords_jax sharded over the JAX devices of the GPU platform (CPU with ``allow_cpu``)."""
    try:
        import jax
    except ImportError as e:
        return emit("jax", skipped=f"jax is not installed ({e})", ok=True)
    platform = "gpu"
    try:
        devs = jax.devices("gpu")
    except RuntimeError as e:
        if not allow_cpu:
            return emit("jax", skipped=f"JAX has no GPU backend here ({str(e).splitlines()[0]})", ok=True)
        devs, platform = jax.devices("cpu"), "cpu"
    import jax.numpy as jnp

    import chords_jax

    w = np.random.default_rng(1).standard_normal((16, 16)).astype(np.float32) / 4

    def fn(x, t):  # traceable by jax, and plain numpy for the core
        xp = jnp if isinstance(x, jax.Array) else np
        return xp.tanh(x @ w + t[:, None]) * 0.5 + 0.2 * x

    model = cc.DiffusionModel(fn, cc.RectifiedFlow(), "flow")
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    grid = cc.time_grid(model.schedule, steps)
    cores = max(2, len(devs))
    ref = cc.chords(model, x, grid, "euler", cores=cores, stop=None)
    # (full float32 products: JAX's default on A100 / H100 is TF32, about 2e-4 off numpy's here)
    with jax.default_matmul_precision("highest"):
        res = chords_jax.chords(model, x, grid, "euler", cores=cores, stop=None, devices=devs)
    diff = max(float(np.abs(np.asarray(a.x) - b.x).max()) for a, b in zip(res.hits, ref.hits))
    return emit("jax", platform=platform, devices=len(devs), cores=cores, max_abs_diff=diff, ok=diff <= 1e-4)


def sized_mlp(device, ms: float, dim: int, width: int, depth: int) -> tuple[MLP, float, int]:
    """A seeded MLP and the batch (rows of the state) at which one evaluation takes about ``ms`` ms on
    ``device``: the batch doubles until it does (a GPU is only busy for ``ms`` with enough rows)."""
    net = MLP(dim, width, depth).eval().to(device)

    def timed(batch: int) -> float:
        x = torch.randn(batch, dim, device=device)
        t = torch.full((batch,), 0.5, device=device)
        with torch.no_grad():
            for _ in range(2):
                net(x, t)
            sync([device])
            t0 = time.perf_counter()
            for _ in range(5):
                net(x, t)
            sync([device])
        return (time.perf_counter() - t0) / 5 * 1e3

    batch = 8
    per = timed(batch)
    while per < 0.8 * ms and batch < 1 << 17:
        batch *= 2
        per = timed(batch)
    return net, per, batch


def speedup(devices, ms: float, steps: int, repeats: int, dim: int, width: int, depth: int) -> dict:
    """Wall clock of the sequential solve against CHORDS (first output), interleaved repeats."""
    net, per, batch = sized_mlp(devices[0], ms, dim, width, depth)
    model = cc.DiffusionModel(net, cc.RectifiedFlow(), "flow")
    x = torch.randn(batch, dim, generator=torch.Generator().manual_seed(0)).to(devices[0])
    grid = cc.time_grid(model.schedule, steps)
    runs = {"sequential": lambda: cc.solve(model, x, grid, "euler")}
    cores_batched = 4
    runs["batched x4 (one GPU)"] = lambda: cc.chords(model, x, grid, "euler", cores=cores_batched,
                                                      stop=cc.StopAtCore(1), executor=cc.BatchedExecutor())
    ex = DeviceExecutor(devices) if len(devices) > 1 else None
    if ex is not None:
        runs[f"DeviceExecutor x{len(devices)}"] = lambda: cc.chords(model, x, grid, "euler", cores=len(devices),
                                                                    stop=cc.StopAtCore(1), executor=ex)
    try:
        with torch.no_grad():
            for fn in runs.values():  # warm-up
                fn()
            rounds_of = {name: (lambda fn=fn: getattr(fn(), "rounds", steps)) for name, fn in runs.items()}
            # (keeps rounds, not outputs)
            times, counts = interleaved(rounds_of, repeats, shuffle=True, sync=lambda: sync(devices))
            rounds = {name: counts[name][-1] for name in runs}
    finally:
        if ex is not None:
            ex.close()
    seq = np.array(times["sequential"])
    table = {}
    for name, ts in times.items():
        if name == "sequential":
            continue
        ratio = seq / np.array(ts)
        table[name] = {"rounds": rounds[name], "round_speedup": round(steps / rounds[name], 2),
                       "wall_speedup": spread(ratio, fmt=".2f"),
                       "wall_ms": round(float(np.median(ts)) * 1e3, 1)}
    seq_ms = float(np.median(seq)) * 1e3
    return emit("speedup", ms_per_eval=round(per, 1), ms_per_eval_in_solve=round(seq_ms / steps, 1), steps=steps,
                batch=batch, dim=dim,
                sequential_ms=round(seq_ms, 1), methods=table, ok=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--allow-cpu", action="store_true", help="run on the CPU where there is no GPU")
    ap.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    ap.add_argument("--ms", type=positive_float, default=50.0, help="target milliseconds per model evaluation")
    args = ap.parse_args(argv)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not gpus and not args.allow_cpu:
        print("gpu_check: skipped: no CUDA GPU is visible here (torch.cuda.is_available() is False), so nothing "
              "was checked (exit status 0). Run it on a machine with GPUs, or with --allow-cpu to exercise the "
              "checks on the CPU.")
        return 0
    devices = [torch.device("cuda", i) for i in range(gpus)] or [torch.device("cpu")] * 2
    steps, repeats = (12, 2) if args.quick else (50, 5)
    t0 = time.monotonic()
    results = [check_devices(devices, steps)]
    # nccl needs one GPU per rank: with fewer than 2 GPUs the protocol is checked on gloo
    results.append(check_distributed(max(2, gpus), "nccl" if gpus >= 2 else "gloo", timeout=240))
    results.append(check_jax(args.allow_cpu, steps))
    results.append(check_diffusers(devices[0], min(steps, 12)))
    ms = args.ms if gpus else min(args.ms, 5.0)
    dim, width, depth = (1024, 4096, 8) if gpus else (128, 128, 2)
    results.append(speedup(devices, ms, steps, repeats, dim, width, depth))
    ok = all(r.get("ok") for r in results)
    emit("summary", gpus=gpus, torch=torch.__version__,
         cuda=torch.version.cuda, names=[torch.cuda.get_device_name(i) for i in range(gpus)],
         seconds=round(time.monotonic() - t0, 1), ok=ok)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
