"""Train the small flow-matching network on scikit-learn's digits and write its weights.

Model (``workloads.DigitsMLP`` is the numpy twin used for sampling): x in R^64 (pixels scaled to
[-1, 1]) and t in [0, 1] -> velocity v in R^64, rectified flow x_t = (1 - t) x0 + t eps with target
v = eps - x0 ("flow" prediction). Architecture: [x, sin/cos(2 pi f_k t)] -> Linear(64 + 32, W)
-> ``depth`` residual blocks h += Linear(SiLU(h)) -> SiLU -> Linear(W, 64).

Training: the first 1400 digits of a seed-0 permutation (the other 397 are held out), Adam with
cosine decay, batch 256, float32, one torch thread. Writes ``benchmarks/data/digits_mlp.npz``
(float32) and ``digits_mlp.sha256`` beside it. About 3 minutes on one core::

    .venv/bin/python benchmarks/train_digits.py [--steps 8000] [--width 256] [--depth 3]
"""

from __future__ import annotations

import argparse
import hashlib
import math
import time
from pathlib import Path

import numpy as np
from timing import positive_float
from workloads import FREQS, load_digits_split

from chords_core.demo import int_at_least

OUT = Path(__file__).parent / "data" / "digits_mlp.npz"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int_at_least(1), default=8000)
    p.add_argument("--width", type=int_at_least(1), default=256)
    p.add_argument("--depth", type=int_at_least(1), default=3)
    p.add_argument("--batch", type=int_at_least(1), default=256)
    p.add_argument("--lr", type=positive_float, default=2e-3)
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)  # (before any work: a bad value must not write an untrained network)
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    train, _ = load_digits_split()
    data = torch.tensor(train, dtype=torch.float32)
    freqs = torch.tensor(FREQS, dtype=torch.float32)

    W, D = a.width, data.shape[1]
    layers = torch.nn.ModuleDict(
        {"inp": torch.nn.Linear(D + 2 * len(FREQS), W), "out": torch.nn.Linear(W, D)}
        | {f"res{k}": torch.nn.Linear(W, W) for k in range(a.depth)}
    )
    torch.nn.init.zeros_(layers["out"].weight)
    torch.nn.init.zeros_(layers["out"].bias)

    def net(x, t):
        ang = 2 * math.pi * t[:, None] * freqs
        h = layers["inp"](torch.cat([x, torch.sin(ang), torch.cos(ang)], 1))
        for k in range(a.depth):
            h = h + layers[f"res{k}"](torch.nn.functional.silu(h))
        return layers["out"](torch.nn.functional.silu(h))

    opt = torch.optim.Adam(layers.parameters(), lr=a.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, a.steps)
    t0, avg = time.time(), None
    for it in range(a.steps):
        x0 = data[torch.randint(0, len(data), (a.batch,))]
        eps = torch.randn_like(x0)
        t = torch.rand(a.batch)
        xt = (1 - t[:, None]) * x0 + t[:, None] * eps
        loss = ((net(xt, t) - (eps - x0)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        avg = loss.item() if avg is None else 0.99 * avg + 0.01 * loss.item()
        if it % 1000 == 0 or it == a.steps - 1:
            print(f"step {it:5d}  loss {avg:.4f}  {time.time() - t0:6.1f} s", flush=True)

    arrays = {f"{name}.{p}": getattr(layers[name], p).detach().numpy().astype(np.float32)
              for name in layers for p in ("weight", "bias")}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(a.out, depth=np.array(a.depth), **arrays)
    digest = hashlib.sha256(a.out.read_bytes()).hexdigest()
    a.out.with_suffix(".sha256").write_text(f"{digest}  {a.out.name}\n")
    print(f"wrote {a.out} ({a.out.stat().st_size / 1e6:.2f} MB) sha256 {digest}")


if __name__ == "__main__":
    main()
