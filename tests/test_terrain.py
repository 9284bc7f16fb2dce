"""A real pretrained network end to end: the terrain UNet (ONNX, benchmarks/terrain_model.py).

``make test`` installs ``adaptive-terrain-diffusion`` (the weights) and ``onnxruntime``, so these run
in CI; they skip only where the package is not installed. The network is batch- and
thread-count invariant on the CPU (checked below), so the parallel methods must reproduce the
sequential solver bit for bit wherever they do in exact arithmetic. About 10 s on 2 shared cores.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from terrain_model import SIZE, TerrainDenoiser, available, terrain_factory, terrain_model, terrain_noise  # noqa: E402

import chords_core as cc  # noqa: E402

if not available():
    pytest.skip("adaptive-terrain-diffusion / onnxruntime not installed (make test installs both: pip install "
                "--no-deps 'adaptive-terrain-diffusion==0.4.2' 'onnxruntime>=1.18')", allow_module_level=True)

STEPS = 5


@pytest.fixture(scope="module")
def model() -> cc.DiffusionModel:
    return terrain_model(threads=1)


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return terrain_noise(batch=1, seed=0)


@pytest.fixture(scope="module")
def grid() -> np.ndarray:
    return cc.time_grid(cc.EDM(), STEPS, "karras")


@pytest.fixture(scope="module")
def x_seq(model, x, grid) -> np.ndarray:
    return cc.solve(model, x, grid, "euler")


def test_network_is_a_denoiser_and_batch_and_thread_invariant(model, x):
    """D(x; sigma_min) = x (consistency boundary), a 2-row call equals two 1-row calls and a 2-thread session,
    bit for bit: the property every exact-equality test below rests on."""
    xs = np.concatenate([x, 0.05 * x])
    sigma = np.array([80.0, 1.0], np.float32)
    both = model.fn(xs, sigma)
    rows = np.concatenate([model.fn(xs[k:k + 1], sigma[k:k + 1]) for k in range(2)])
    assert both.shape == xs.shape and both.dtype == np.float32 and np.isfinite(both).all()
    assert np.array_equal(both, rows)
    assert np.array_equal(TerrainDenoiser(threads=2)(xs, sigma), both)
    assert 0.05 < float(np.std(both[0])) < 1.0  # a heightfield in the model's [-1, 1] range, not the noise
    edge = 0.002 * x
    assert np.array_equal(model.fn(edge, np.array([0.002], np.float32)), edge)


@pytest.mark.parametrize("method", ["cascade", "chords", "paradigms"])
def test_one_core_equals_solve_bit_for_bit(model, x, grid, x_seq, method):
    res = cc.parallel(model, x, grid, "euler", cores=1, method=method)
    assert res.rounds == res.nfe == STEPS
    assert res.x.dtype == np.float32 and np.array_equal(res.x, x_seq)


def test_two_core_chords_slowest_core_equals_solve_on_worker_processes(model, x, grid, x_seq):
    """CHORDS on 2 worker processes (1 onnxruntime thread each), all cores run: core 0 is the sequential
    solver (on torch states, as the workers need), bit for bit; the fast core arrives first, fewer rounds
    in, and lands near it."""
    import torch

    from chords_torch import ProcessExecutor

    x_t = torch.from_numpy(x)
    seq_t = cc.solve(model, x_t, grid, "euler").numpy()
    # torch and numpy states round their float32 linear combinations differently (last bits only)
    assert np.abs(seq_t - x_seq).max() < 1e-5 * np.abs(x_seq).max()
    with ProcessExecutor(terrain_factory(1), workers=2, threads=1) as ex:
        res = cc.chords(model, x_t, grid, "euler", cores=2, stop=None, executor=ex)
    hits = {h.core: h for h in res.hits}
    assert set(hits) == {0, 1} and res.hits[0].core == 1 and hits[1].round < hits[0].round
    assert res.width == 2 and res.rounds == STEPS
    slowest = hits[0].x.numpy()
    assert slowest.dtype == np.float32 and np.array_equal(slowest, seq_t) and np.array_equal(res.x.numpy(), seq_t)
    rel = np.sqrt(np.mean((hits[1].x.numpy() - seq_t) ** 2.0)) / np.sqrt(np.mean(seq_t ** 2.0))
    assert 0 < rel < 0.5


def test_bad_shape_is_rejected_with_a_clear_error(model, grid):
    bad = np.zeros((1, 1, 64, 64), np.float32)
    with pytest.raises(ValueError, match=rf"shape \(N, 1, {SIZE}, {SIZE}\).*got \(1, 1, 64, 64\)"):
        cc.solve(model, bad, grid, "euler")
    with pytest.raises(ValueError, match=r"got \(1, 128, 128\)"):
        model.fn(np.zeros((1, SIZE, SIZE), np.float32), np.ones(1, np.float32))
    with pytest.raises(ValueError, match=r"sigma must have shape \(2,\)"):
        model.fn(np.zeros((2, 1, SIZE, SIZE), np.float32), np.ones(1, np.float32))
    with pytest.raises(ValueError, match="difficulty must lie in 1..100"):
        TerrainDenoiser(difficulty=0)
    with pytest.raises(ValueError, match="threads must be an integer >= 1"):
        TerrainDenoiser(threads=0)


def test_the_recommended_default_stays_with_the_sequential_answer_at_few_steps(model, x):
    """10 Euler steps, 4 lanes: the cascade's acceptance once trusted a local error estimated from
    a wild iterate and returned an output 309x the output's RMS away from the sequential one."""
    grid = cc.time_grid(cc.EDM(), 10, "karras")
    seq = cc.solve(model, x, grid, "euler")
    res = cc.parallel(model, x, grid, "euler", cores=4)
    dev = float(np.sqrt(np.mean((res.x - seq) ** 2)) / np.sqrt(np.mean(seq**2)))
    assert res.method == "cascade" and dev < 1e-3, dev
    # the option scale="level" (an absolute tolerance: this network's heightfields lie in [-1, 1])
    lvl = cc.parallel(model, x, grid, "euler", cores=4, scale="level")
    dev = float(np.sqrt(np.mean((lvl.x - seq) ** 2)) / np.sqrt(np.mean(seq**2)))
    assert lvl.rounds <= lvl.sequential_rounds and dev < 1e-3, dev
