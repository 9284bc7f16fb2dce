"""Benchmark workloads (benchmarks/workloads.py): exact empirical denoiser, committed net, Frechet distance."""

from __future__ import annotations

import shutil
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from workloads import (  # noqa: E402
    WEIGHTS,
    DigitsMLP,
    EmpiricalDenoiser,
    digits_exact_workload,
    digits_net_workload,
    frechet_distance,
    gmm_workload,
    load_digits,
    load_digits_split,
    sha256,
)

import chords_core as cc  # noqa: E402
from chords_core.problems import GaussianMixture  # noqa: E402


def test_digits_data():
    x = load_digits()
    assert x.shape == (1797, 64) and x.min() == -1.0 and x.max() == 1.0
    tr, te = load_digits_split()
    assert tr.shape == (1400, 64) and te.shape == (397, 64)
    assert len(np.unique(np.vstack([tr, te]), axis=0)) == len(np.unique(x, axis=0))


@pytest.mark.parametrize("sched", [cc.RectifiedFlow(), cc.VP.linear()])
def test_empirical_denoiser_is_the_small_variance_mixture_posterior(sched):
    """The empirical posterior mean = a mixture with equal weights and vanishing variances."""
    rng = np.random.default_rng(0)
    data = rng.standard_normal((30, 5))
    den = EmpiricalDenoiser(data, sched)
    gmm = GaussianMixture(np.ones(30), data, np.full((30, 5), 1e-14))
    t = rng.uniform(0.3, 0.9, size=20)
    x = rng.standard_normal((20, 5))
    x0, _ = gmm.posterior(x, t, sched)
    assert np.allclose(den(x, t), x0, rtol=0, atol=1e-9)


def test_empirical_denoiser_at_zero_noise_returns_the_nearest_point():
    data = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    den = EmpiricalDenoiser(data, cc.RectifiedFlow())
    x = np.array([[0.9, 0.2], [0.1, 1.4], [0.6, 0.1]])
    out = den(x, np.array([0.0, 0.0, 1e-3]))
    assert np.array_equal(out[:2], data[[1, 2]])
    assert np.allclose(out[2], data[1], atol=1e-12)  # t small: the softmax is one-hot numerically
    with pytest.raises(ValueError, match="data"):
        EmpiricalDenoiser(np.zeros(3), cc.RectifiedFlow())


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((500, 4))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    shift = np.array([1.0, 2.0, 0.0, 0.0])
    assert frechet_distance(a, a + shift) == pytest.approx(5.0, rel=1e-9)
    # Gaussians N(0, I) vs N(0, 4 I) in 4-D: tr(I + 4I - 2 * 2I) = 4, up to sampling error
    assert frechet_distance(a, 2 * rng.standard_normal((20000, 4))) == pytest.approx(4.0, rel=0.15)
    with pytest.raises(ValueError, match="a and b"):
        frechet_distance(a, a[:, :3])


def test_committed_net_loads_offline_and_is_checked(tmp_path):
    net = DigitsMLP()
    x = np.random.default_rng(0).standard_normal((5, 64))
    v = net(x, np.full(5, 0.5))
    assert v.shape == (5, 64) and np.all(np.isfinite(v)) and np.array_equal(v, net(x, 0.5))
    assert WEIGHTS.stat().st_size < 5e6
    bad = tmp_path / WEIGHTS.name
    shutil.copy(WEIGHTS, bad)
    shutil.copy(WEIGHTS.with_suffix(".sha256"), bad.with_suffix(".sha256"))
    raw = bytearray(bad.read_bytes())
    raw[-100] ^= 1
    bad.write_bytes(bytes(raw))
    assert sha256(bad) != sha256(WEIGHTS)
    with pytest.raises(ValueError, match="SHA-256"):
        DigitsMLP(bad)


def test_net_samples_look_like_digits():
    """20 Euler steps from noise land much nearer the digits than noise does (Frechet on pixels)."""
    net = DigitsMLP()
    model = cc.DiffusionModel(net, cc.RectifiedFlow(), "flow")
    x = np.random.default_rng(3).standard_normal((300, 64))
    samples = cc.solve(model, x, cc.time_grid(cc.RectifiedFlow(), 20), "euler")
    digits = load_digits()
    assert frechet_distance(samples, digits) < 0.1 * frechet_distance(x, digits)


@pytest.mark.parametrize("name", ["rf", "vp"])
def test_gmm_reference_is_the_limit_of_the_solvers(name):
    w = gmm_workload(name, batch=4, dim=16, modes=3)
    ref = w.reference()
    errs = [np.sqrt(np.mean((cc.solve(w.model, w.x, w.grid("dpmpp_2m", n), "dpmpp_2m") - ref) ** 2)) for n in (10, 40)]
    assert errs[1] < errs[0] / 4


def test_the_digits_net_reference_is_far_more_accurate_than_the_solvers_it_judges():
    """A review: the reference (DPM++ on 400 steps) was 1.1e-4 RMS from DOP853 at 1e-12, 4% of DPM++
    50's error, inside the criterion's 5% margin; against a twice finer solve it is now within 1% of
    that error (0.1% measured)."""
    w = digits_net_workload(batch=4)
    ref = w.reference()
    fine = cc.solve(w.model, w.x, cc.time_grid(w.model.schedule, 6400), "dpmpp_2m")
    seq = cc.solve(w.model, w.x, w.grid("dpmpp_2m", 50), "dpmpp_2m")
    rms = lambda a: float(np.sqrt(np.mean(a * a)))  # noqa: E731
    assert rms(ref - fine) < 0.01 * rms(seq - fine)


def test_digits_exact_workload_samples_are_training_digits():
    w = digits_exact_workload(batch=8)
    out = cc.solve(w.model, w.x, w.grid("dpmpp_2m", 30), "dpmpp_2m")
    d = ((out[:, None, :] - w.model.fn.data[None]) ** 2).sum(-1).min(1)
    assert np.all(d < 1e-6)
    with pytest.raises(ValueError, match="schedule_name"):
        gmm_workload("edm")


def test_suite_case_headline_meets_the_criterion():
    import suite

    w = gmm_workload("rf", batch=4, dim=4, modes=2)
    case = suite.bench_case(w, "euler", 12, (2, 4), (0.6, 1.0), lambda s: None)
    assert {p["method"] for p in case["points"]} == set(suite.METHODS)
    assert all(p["width"] <= p["cores"] for p in case["points"])
    for method, by_k in case["headline"].items():
        for K, h in by_k.items():
            assert h["err_ref"] <= suite.FACTOR * case["seq_err_ref"] and h["speedup"] == 12 / h["rounds"]
            better = [p for p in case["points"] if p["method"] == method and p["cores"] == int(K) and p["rounds"] < h["rounds"]]
            assert all(p["err_ref"] > suite.FACTOR * case["seq_err_ref"] for p in better)
    # the oracle counts the cascade sampler over both scales' grids, and over each alone (one grid, as
    # each peer has: the union alone had twice a peer's configurations, a trial), each tallied
    assert any(p["config"].startswith(suite.LEVEL_LABEL) for p in case["points"] if p["method"] == "cascade")
    table, tally = suite.oracle_markdown([case])
    assert set(tally) == {"cascade", suite.LEVEL_SCALE, suite.ERROR_SCALE}
    assert suite.ERROR_SCALE in table.splitlines()[0] and suite.LEVEL_SCALE in table.splitlines()[0]
    for t in tally.values():
        assert t["wins"] + t["ties"] + t["losses"] == t["rows"] == 2
    for K in (2, 4):
        for scale in (suite.LEVEL_SCALE, suite.ERROR_SCALE):
            alone = suite.scale_best(case, K, scale)
            assert alone is not None and alone["config"].startswith(suite.LEVEL_LABEL) == (scale == suite.LEVEL_SCALE)
            assert case["headline"]["cascade"][str(K)]["rounds"] <= alone["rounds"]
    front = suite.pareto(case["points"])
    assert all(a["rounds"] <= b["rounds"] and a["err_ref"] > b["err_ref"] for a, b in zip(front, front[1:]))
    # calibrate once: per method the configuration with the fewest rows over the deviation bound, then
    # the fewest rounds; applied, it is the same point on the same row
    chosen = suite.calibrate([case])
    assert set(chosen) == set(suite.TABLE_METHODS) and not chosen[suite.ERROR_SCALE].startswith(suite.LEVEL_LABEL)
    assert chosen[suite.LEVEL_SCALE].startswith(suite.LEVEL_LABEL) and chosen["cascade"] in (
        chosen[suite.ERROR_SCALE], chosen[suite.LEVEL_SCALE])
    for m, cfg in chosen.items():
        def key(c, m=m):
            pts = [p for p in case["points"] if suite.member(p, m) and p["config"] == c]
            bad = sum(p["err_seq"] > suite.CAL_DEVIATION * case["seq_err_ref"] for p in pts) + 2 - len(pts)
            return bad, sum(p["rounds"] for p in pts) + (2 - len(pts)) * case["seq_rounds"]
        configs = {p["config"] for p in case["points"] if suite.member(p, m)}
        assert key(cfg) == min(key(c) for c in configs), m
    app = suite.applied([case], chosen)
    assert all(p is not None and p["config"] == chosen[m] for m, rows in app.items() for _, _, p in rows)
    # a row that misses the criterion counts as 1x in the all-rows median (it counted its speedup: a
    # setting failing 36 of 42 rows showed a higher median than one failing none, a trial)
    fast = max((p for p in case["points"] if not p["ok"] and p["speedup"] > 1), key=lambda p: p["speedup"])
    m, cfg = fast["method"], fast["config"]
    rows = [p for _, _, p in suite.applied([case], {m: cfg}, (m,))[m]]
    median = suite.calibrated_markdown([case], {m: cfg}, (m,))[1][m]["median"]
    assert median == statistics.median([p["speedup"] if p is not None and p["ok"] else 1.0 for p in rows])
    assert median < statistics.median([p["speedup"] if p is not None else 1.0 for p in rows])
    assert dict(suite.chords_inits("euler", 50, 4, (0.6,)))["uniform to 0.6(T-1)"] == (0, 10, 19, 29)
