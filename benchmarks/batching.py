"""Does a round gain from one stacked model call on the CPU? One call of K points against K calls of one.

``BatchedExecutor``'s host default (``max_batch_bytes="auto"``) stacks a round's points into calls
of at most ``HOST_BATCH_BYTES`` (4 MiB). On a near-free model stacking only costs (a copy of the
points and a round-sized output, ``benchmarks/overhead.py``); on a real model it can save much more
than that: a dense layer on one sample is a matrix-vector product that reads every weight for one
row, and K rows read them once. This measures that trade on the models a CPU user runs, one thread,
interleaved repeat by repeat: MLPs (weight-bound), small conv nets, and the terrain UNet of
``benchmarks/terrain.py`` (onnxruntime) where its package is installed.

Printed per model: the state size per point, milliseconds of one call of one point, and the time of
one call of K points over K calls of one point, median [min-max] over the repeats (below 1: stacking
pays).
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable

import numpy as np
import torch
from terrain_model import SIZE, TerrainDenoiser, available
from timing import interleaved, spread

from chords_core.demo import int_at_least

torch.set_num_threads(1)


def _mlp(d: int, h: int) -> torch.nn.Module:
    nn = torch.nn
    return nn.Sequential(nn.Linear(d, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU(), nn.Linear(h, d))


def _conv(c: int) -> torch.nn.Module:
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(c, 64, 3, padding=1), nn.SiLU(), nn.Conv2d(64, 64, 3, padding=1), nn.SiLU(),
                         nn.Conv2d(64, c, 3, padding=1))


def models() -> list[tuple[str, tuple[int, ...], Callable]]:
    """(name, shape of one point, fn(batch of points) -> output)."""
    out: list[tuple[str, tuple[int, ...], Callable]] = []
    for d, h in ((4096, 2048), (16384, 256), (16384, 1024), (65536, 256)):
        net = _mlp(d, h)
        out.append((f"MLP {d}-{h}-{h}-{d}", (d,), net))
    for c, s in ((4, 64), (16, 32)):
        out.append((f"3-layer conv, 64 channels, {c}x{s}x{s}", (c, s, s), _conv(c)))
    for n, d in ((64, 256), (256, 256)):
        layer = torch.nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.0, batch_first=True)
        enc = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
        out.append((f"2 transformer layers, {n} tokens x {d}", (n, d), enc))
    if available():
        den = TerrainDenoiser(1)
        out.append(("terrain UNet (onnxruntime)", (1, SIZE, SIZE),
                    lambda x: den.denoise(x.numpy(), np.ones(x.shape[0], np.float32))))
    return out


def _apart(fn: Callable, one: torch.Tensor, k: int) -> list:
    return [fn(one) for _ in range(k)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int_at_least(1), nargs="+", default=[4, 8], help="points a round (K)")
    ap.add_argument("--repeats", type=int_at_least(1), default=7)
    args = ap.parse_args(argv)
    print("One thread; median [min-max] over interleaved repeats of (one call of K points) / (K calls of one point).")
    print("| model | KiB a point | ms a call of one point | " + " | ".join(f"K = {k}" for k in args.points) + " |")
    print("|---|---|---|" + "---|" * len(args.points))
    rng = np.random.default_rng(0)
    for name, shape, fn in models():
        one = torch.from_numpy(rng.standard_normal((1, *shape)).astype(np.float32))
        row = []
        with torch.no_grad():
            fn(one)  # warm up
            for k in args.points:
                many = one.repeat(k, *[1] * len(shape))
                fn(many)  # warm up this batch size (a conv library plans a new shape on its first call)
                fns = {"stacked": functools.partial(fn, many), "apart": functools.partial(_apart, fn, one, k)}
                t, _ = interleaved(fns, args.repeats, shuffle=True)
                row.append(spread(t["stacked"] / t["apart"], fmt=".2f"))
                single = float(np.median(t["apart"])) / k
        print(f"| {name} | {one.numel() * 4 >> 10} | {single * 1e3:.2f} | " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
