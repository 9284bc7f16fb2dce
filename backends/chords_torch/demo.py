"""CHORDS over torch.distributed on an exact GMM denoiser; also the launch check used by the tests.

    torchrun --nproc_per_node=3 -m chords_torch.demo --steps 50 --cores 4
    # across machines: torchrun --nnodes=2 --nproc_per_node=4 --rdzv_backend=c10d \
    #     --rdzv_endpoint=HOST:29500 -m chords_torch.demo

Rank 0 runs ``cc.chords`` with a ``DistributedExecutor`` and compares every output with the serial
executor's (bit for bit); the other ranks ``serve``. Rank 0 prints one JSON line and, with
``--out``, saves the outputs. ``--fault MODE --fault-rank R`` makes rank R's network misbehave
(``chords_torch.testing.Faulty``) to exercise the error paths.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

import torch
import torch.distributed as dist

import chords_core as cc
from chords_core.demo import int_at_least, positive_float

from . import DistributedExecutor, serve
from .testing import Faulty, TorchGMM, gmm_problem


def main(argv: list[str] | None = None) -> int:
    """Run the demo on this rank (see the module docstring; launch with torchrun).

    Args:
        argv: the options (default ``sys.argv[1:]``).

    Returns:
        The exit status: 0, or 1 on rank 0 when the CHORDS run failed (the error is in the JSON line).
    """
    p = argparse.ArgumentParser(prog="chords_torch.demo", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int_at_least(1), default=20)
    p.add_argument("--cores", type=int_at_least(1), default=4)
    p.add_argument("--solver", default="euler", choices=sorted(cc.SOLVERS))
    p.add_argument("--batch", type=int_at_least(1), default=3)
    p.add_argument("--timeout", type=positive_float, default=30.0, help="seconds a round may take (> 0)")
    p.add_argument("--backend", default=None, help="gloo or nccl (default: nccl if CUDA is available)")
    p.add_argument("--rank0-evaluates", action="store_true",
                   help="rank 0 evaluates a share too (DistributedExecutor(local=...))")
    p.add_argument("--out", default=None, help="rank 0 saves the outputs here (torch.save)")
    p.add_argument("--fault", choices=Faulty.MODES, default=None)
    p.add_argument("--fault-rank", type=int_at_least(0), default=1)
    p.add_argument("--fault-after", type=int_at_least(0), default=3)
    a = p.parse_args(argv)
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:  # (init_process_group's raw traceback otherwise)
        print(f"{p.prog}: error: RANK and WORLD_SIZE are not set: launch it with torchrun, e.g. "
              "torchrun --standalone --nproc_per_node=3 -m chords_torch.demo", file=sys.stderr)
        return 2
    backend = a.backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend)
    rank = dist.get_rank()
    try:
        if rank != 0:
            net: Callable = TorchGMM()
            if a.fault and rank == a.fault_rank:
                net = Faulty(lambda: net, a.fault, a.fault_after)()
            serve(net)
            return 0
        model, _ = gmm_problem()
        dev = torch.device("cuda") if backend == "nccl" else torch.device("cpu")
        x = torch.randn(a.batch, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).to(dev)
        grid = cc.time_grid(model.schedule, a.steps)
        report = {"world": dist.get_world_size(), "backend": backend}
        with DistributedExecutor(round_timeout=a.timeout, local=TorchGMM() if a.rank0_evaluates else None) as ex:
            try:
                res = cc.chords(model, x, grid, a.solver, cores=a.cores, stop=None, executor=ex)
            except Exception as e:
                report["error"] = f"{type(e).__name__}: {e}".splitlines()[0]
                if isinstance(e, cc.ModelOutputError):
                    report["nonfinite"] = e.is_nonfinite  # the kind, carried from the worker rank
                print(json.dumps(report), flush=True)
                return 1
        ref = cc.chords(model, x, grid, a.solver, cores=a.cores, stop=None, executor=cc.SerialExecutor())
        fastest = res.hits[0]
        report.update(rounds=res.rounds, nfe=res.nfe, speedup=res.speedup,
                      first_output_round=fastest.round, first_output_speedup=res.sequential_rounds / fastest.round,
                      equal=all(torch.equal(h.x, {g.core: g.x for g in ref.hits}[h.core]) for h in res.hits),
                      stopped_by=res.stopped_by,
                      note=("a self-check: every core runs to the end (stop=None), so 'rounds' is the sequential "
                            "solver's and 'speedup' 1.0 by design; 'first_output_*' is where the fastest core "
                            "arrived; 'equal': every core's output equals the serial executor's bit for bit"))
        if a.out:
            torch.save([h.x.cpu() for h in res.hits], a.out)
        print(json.dumps(report), flush=True)
        return 0
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
