# %% [markdown]
# # 4. The cascade sampler: exactness, the error recursion, seeds and rounds
#
# Checks of `theory/cascade.md`:
#
# 1. **Exact at tolerance 0** for every solver (bit for bit).
# 2. **The error recursion** δ^{k+1}_{b+p} = Σ_{l<b+p} h A δ^k_l holds exactly for Euler on a linear ODE.
# 3. **Seed orders**: the seed error grows like d^{q+1} with the distance d ahead of the window, for
#    copies (q = 0), the first-order jump (q = 1) and the second-order jump (q = 2) (the cascade's seeds
#    extrapolate the same way and are stepped by the solver itself: `theory/cascade.md` section 3).
# 4. **Rounds**: rounds · W ≥ T · n̄ (an identity: shown, not asserted), and n̄ and the rounds fall with the seed order.
# 5. **Acceptance within the solver's error**: on the local-error scale (`scale="error"`, the default
#    for a plain ODE) at tolerance 1 the output stays within 5% of the sequential solver's own error
#    on mixtures the tolerance was not chosen on.
# 6. **Where the allowance goes**: with DPM-Solver++(2M) the local-error scale accepts only the exact
#    point in the first sweep and the noise-level scale (`scale="level"`) more, and at the best
#    tolerance of each on a small grid the level scale reaches the sequential answer in fewer rounds.

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import chords_core as cc
from chords_core.methods.window import sliding_window
from chords_core.problems import GaussianMixture, LinearODE

OUT = Path(os.environ.get("CHORDS_NB_OUT", Path(cc.__file__).resolve().parents[1] / "notebooks" / "figures"))
OUT.mkdir(parents=True, exist_ok=True)
rms = lambda a: float(np.sqrt(np.mean(np.square(a))))  # noqa: E731


class Spy(cc.BatchedExecutor):
    """Records the points each round evaluates (the iterates the theory talks about)."""

    def __init__(self):
        self.rounds = []

    def __call__(self, model, xs, ts):
        self.rounds.append([np.array(x) for x in xs])
        return super().__call__(model, xs, ts)


# %% [markdown]
# ## 1. Exact at tolerance 0

# %%
gmm = GaussianMixture.random(6, 3, seed=8)
x0 = np.random.default_rng(9).standard_normal((4, 6))
for solver in sorted(cc.SOLVERS):
    model = gmm.model(cc.VP.linear(), "eps")
    grid = cc.time_grid(model.schedule, 12, "logsnr")
    ref = cc.solve(model, x0, grid, solver)
    for W in (2, 5):
        assert np.array_equal(cc.cascade(model, x0, grid, solver, cores=W, tol=0.0).x, ref), (solver, W)
print("exact at tol 0 for", sorted(cc.SOLVERS))

# %% [markdown]
# ## 2. The error recursion on a linear ODE (Euler, window 6, nothing accepted early)
# The iterate after sweep k is what sweep k+1 evaluates; the prediction applies the sweep's
# lower-triangular operator to the deviations from the sequential solution.

# %%
ode = LinearODE.random(4, seed=3)
A = ode.A
y0 = np.random.default_rng(4).standard_normal(4)
ts = np.linspace(0.0, 1.0, 31)
h = ts[1] - ts[0]
seq = [y0]
for _ in range(30):
    seq.append(seq[-1] + h * (A @ seq[-1]))
spy = Spy()
sliding_window(ode.vector_field(), y0, ts, "euler", window=6, tol=0.0, seed="copy", correction="picard", executor=spy)
# sweep 1 evaluates points 0..5 (copies of y0); at tol 0 the window slides by one point per sweep
worst = 0.0
for k in range(1, 6):
    before, after = spy.rounds[k - 1], spy.rounds[k]  # windows [k-1, k+5) and [k, k+6)
    b = k - 1
    dev0 = [before[p] - seq[b + p] for p in range(6)]
    for p in range(1, 6):  # point b+p after the sweep: sum over j < b+p of h A dev_j (dev_b = 0: accepted)
        pred = sum(h * (A @ dev0[j]) for j in range(1, p)) if p > 1 else np.zeros(4)
        got = after[p - 1] - seq[b + p]  # after[p-1] is point (b+1)+(p-1) = b+p
        worst = max(worst, float(np.max(np.abs(got - pred))))
print(f"largest deviation from the predicted recursion: {worst:.2e}")
assert worst < 1e-12

# %% [markdown]
# ## 3. Seed orders
# Seeds made from points on the exact trajectory, as in the steady state of the window: x_j from x_e
# with the data prediction at point e-1 (and e-2 for the second order), against the exact solution
# at j, for distances d = j - e (a single Gaussian under rectified flow, whose trajectory is closed
# form; 400 steps, window end e = 200, 8 samples, fitted over d = 4..24). The errors grow like d^{q+1}
# asymptotically in d: a q-th order seed's error is h^{q+1} times a polynomial in d whose lower terms
# matter at small d, whatever the step count (the ratio of h to d h is 1/d), so the fitted exponents are
# below q + 1 here and depend on the range of d and on e (a researcher's trial: the second order's 2.67
# was 2.46-2.90 for e = 20..360 and 2.42-2.79 over d from 1 or 8; with 1,600 steps and d = 16..96,
# 0.98 / 1.97 / 2.95).

# %%
from chords_core.methods.window import Seeder  # noqa: E402

g1 = GaussianMixture.single(np.array([0.8, -0.4, 0.3]), np.array([0.3, 0.6, 0.4]))
m1 = g1.model(cc.RectifiedFlow(), "flow")
T1 = 400
grid1 = cc.time_grid(m1.schedule, T1)
xa = np.random.default_rng(2).standard_normal((8, 3))
s1 = cc.make_solver("euler", m1, grid1)
exact = [g1.exact_trajectory(xa, grid1[0], float(t), m1.schedule) for t in grid1]
e, d = 200, np.arange(1, 25)
exponents, seed_err = {}, {}
for name, order in (("copy", 0), ("jump", 1), ("jump2", 2)):
    sd = Seeder(s1, m1, max(order, 1))
    qs = {i: s1.quantity_of(exact[i], m1.evaluate([exact[i]], [grid1[i]])[0], i) for i in (e - 2, e - 1)}
    d1 = sd.prediction(exact[e - 1], qs[e - 1], e - 1)
    d2 = sd.prediction(exact[e - 2], qs[e - 2], e - 2)
    seeds = [exact[e] if order == 0 else sd.seed(exact[e], d1, e, e - 1, e + k, d2 if order == 2 else None, e - 2)
             for k in d]
    err = np.array([rms(seeds[k - 1] - exact[e + k]) for k in d])
    seed_err[name] = (d, err)
    exponents[name] = float(np.polyfit(np.log(d[d >= 4]), np.log(err[d >= 4]), 1)[0])
print("seed error ~ d^p, fitted p:", {k: round(v, 2) for k, v in exponents.items()})
assert 0.8 < exponents["copy"] < 1.3 and 1.6 < exponents["jump"] < 2.4 and 2.5 < exponents["jump2"] < 3.5
assert all(seed_err["jump2"][1][3:] < seed_err["jump"][1][3:]) and all(seed_err["jump"][1] < seed_err["copy"][1])

# The cascade's own seed (``seed="solver"``) aims at the solver's trajectory from x_e, the sweeps' fixed
# point, not the exact one: against that, the solver-following seed's distance is O(d^3 h^3) (the
# extrapolation error of D carried by d steps), the exact second-order integral's O(d h^2) (Euler's
# own deviation over d steps, which it pays in full).
sd = Seeder(s1, m1, 2)
d1 = sd.prediction(exact[e - 1], qs[e - 1], e - 1)
d2 = sd.prediction(exact[e - 2], qs[e - 2], e - 2)
chained = sd.chain(s1.begin(exact[e]), d1, e - 1, d2, e - 2, e + int(d[-1]))
fixed_point = [cc.solve(m1, exact[e], grid1[e:e + k + 1], "euler") for k in d]
to_fixed = {"solver": np.array([rms(chained[k - 1] - fixed_point[k - 1]) for k in d]),
            "jump2": np.array([rms(sd.seed(exact[e], d1, e, e - 1, e + k, d2, e - 2) - fixed_point[k - 1]) for k in d])}
slopes = {k: float(np.polyfit(np.log(d[d >= 4]), np.log(v[d >= 4]), 1)[0]) for k, v in to_fixed.items()}
print("distance from the solver's trajectory ~ d^p, fitted p:", {k: round(v, 2) for k, v in slopes.items()},
      "; at d = 24:", {k: f"{v[-1]:.2e}" for k, v in to_fixed.items()})
assert 2.4 < slopes["solver"] < 3.4 and 0.8 < slopes["jump2"] < 1.5
assert all(to_fixed["solver"] < to_fixed["jump2"])

fig, ax = plt.subplots(figsize=(4.6, 3.4))
for seed, (d, err) in seed_err.items():
    ax.loglog(d, err, "o-", ms=3, label=f"{seed} (slope {exponents[seed]:.2f})")
ax.set(xlabel="distance d ahead of the window's newest point", ylabel="RMS seed error",
       title="seed error vs distance (Euler, 400 steps)")
ax.legend(fontsize=7)
fig.tight_layout()
fig.savefig(OUT / "04_seed_orders.png", dpi=90)
plt.close(fig)

# %% [markdown]
# ## 4. Rounds: the identity and the effect of the seed
# On a 32-D mixture (Euler, 50 steps, noise-relative tolerance 0.05 so that only the seed differs).

# %%
gm = GaussianMixture.random(32, 5, seed=21)
mm = gm.model(cc.RectifiedFlow(), "flow")
gridm = cc.time_grid(mm.schedule, 50)
xm = np.random.default_rng(22).standard_normal((16, 32))
table = {}
for seed in ("copy", "jump", "jump2"):
    for W in (2, 4, 8, 12, 16):
        r = sliding_window(mm, xm, gridm, "euler", window=W, tol=0.05, seed=seed, correction="picard")
        visits = np.zeros(51)
        for sw in r.log:
            visits[sw.start:sw.end] += 1
        nbar = float(visits[:50].mean())
        table[(seed, W)] = (r.rounds, nbar)  # (rounds x W >= 50 n̄ holds by construction: not asserted)
for W in (2, 4, 8, 12, 16):
    print(f"W={W:2d}: " + ", ".join(f"{s} {table[(s, W)][0]} rounds (n̄ {table[(s, W)][1]:.2f})"
                                    for s in ("copy", "jump", "jump2")))
    assert table[("jump2", W)][0] <= table[("jump", W)][0] <= table[("copy", W)][0]
    assert table[("jump2", W)][1] <= table[("jump", W)][1] <= table[("copy", W)][1]  # n̄ does not rise with the seed
for seed in ("copy", "jump", "jump2"):  # and n̄ grows with the window
    assert all(table[(seed, a)][1] <= table[(seed, b)][1] for a, b in zip((2, 4, 8, 12), (4, 8, 12, 16))), seed

fig, ax = plt.subplots(figsize=(4.6, 3.4))
for seed in ("copy", "jump", "jump2"):
    ax.plot([2, 4, 8, 12, 16], [50 / table[(seed, W)][0] for W in (2, 4, 8, 12, 16)], "o-", label=seed)
ax.plot([2, 16], [2, 16], "k:", lw=0.8, label="W (floor: T / W rounds)")
ax.set(xlabel="window W (cores)", ylabel="speedup in rounds", title="rounds vs window, by seed")
ax.legend(fontsize=7)
fig.tight_layout()
fig.savefig(OUT / "04_rounds_vs_window.png", dpi=90)
plt.close(fig)

# %% [markdown]
# ## 5. Acceptance within the solver's own error
# The local-error scale at its default for a diffusion model (`scale="error"`, tolerance 1; the
# cascade sampler's default takes the noise level for a diffusion model, section 6, and this scale
# for a plain ODE) on mixtures it was not chosen on:
# the deviation from the sequential output and the error against the exact solution, as fractions of
# the sequential solver's own error.

# %%
from chords_core.methods.cascade import DEFAULT_TOL  # noqa: E402

ratios = []
for seed_mix, sched, pred in ((31, cc.RectifiedFlow(), "flow"), (32, cc.VP.linear(), "eps"), (33, cc.VP.cosine(), "v")):
    g = GaussianMixture.random(16, 4, seed=seed_mix)
    model = g.model(sched, pred)
    xq = np.random.default_rng(seed_mix).standard_normal((8, 16))
    for solver, steps in (("euler", 40), ("dpmpp_2m", 20)):
        grid = cc.time_grid(sched, steps, "uniform" if isinstance(sched, cc.RectifiedFlow) else "logsnr")
        ref = g.reference_solve(xq, grid[0], grid[-1], sched)
        seqx = cc.solve(model, xq, grid, solver)
        for W in (4, 8):
            r = cc.cascade(model, xq, grid, solver, cores=W, scale="error")
            e_seq = rms(seqx - ref)
            ratios.append((f"{type(sched).__name__}/{pred}", solver, W, rms(r.x - seqx) / e_seq, rms(r.x - ref) / e_seq,
                           r.speedup))
for row in ratios:
    print(f"{row[0]:>18} {row[1]:>8} W={row[2]}: deviation {row[3]:.3f} x sequential error, "
          f"error {row[4]:.3f} x sequential, speedup {row[5]:.2f}x")
# the criterion (error <= 1.05 x sequential) holds on these three mixtures; the deviation itself is a
# few percent of the sequential error (tau rho / (1 - rho) with tau = 1 and rho of a few percent);
# tau = 3 gave up to 0.078 here and an error of 1.067 x on VP/eps Euler W=8, which is why the default
# is 1. Not a guarantee: on another mixture (seed 45, VP cosine / v, W=4; a review) tau = 1 left
# 0.082 x (Euler 40) and an error of 1.066 x (DPM++ 20)
assert DEFAULT_TOL == 1.0 and all(r[4] <= 1.05 for r in ratios) and all(r[3] <= 0.05 for r in ratios)
assert all(r[5] > 1 for r in ratios)

# %% [markdown]
# ## 6. Where the allowance goes: the local-error scale against the noise level
# VP / eps mixtures (seeds 34-36, not used elsewhere), DPM-Solver++(2M) 20 log-SNR steps, 4 and 8
# lanes. For each scale, the fewest rounds over a small tolerance grid with the output within 0.05 x
# the sequential error of the sequential output, and how far its first sweep accepted.

# %%
scales = {"error": (0.3, 1.0, 3.0, 10.0, 30.0, 100.0), "level": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)}
alloc = []
for seed_mix in (34, 35, 36):
    sched = cc.VP.linear()
    g = GaussianMixture.random(16, 4, seed=seed_mix)
    model = g.model(sched, "eps")
    xq = np.random.default_rng(seed_mix).standard_normal((16, 16))
    grid = cc.time_grid(sched, 20, "logsnr")
    seqx = cc.solve(model, xq, grid, "dpmpp_2m")
    bound = 0.05 * rms(seqx - g.reference_solve(xq, grid[0], grid[-1], sched))
    for W in (4, 8):
        best = {}
        for scale, tols in scales.items():
            runs = [cc.cascade(model, xq, grid, "dpmpp_2m", cores=W, tol=tol, scale=scale) for tol in tols]
            best[scale] = min((r for r in runs if rms(r.x - seqx) <= bound), key=lambda r: r.rounds)
        alloc.append((seed_mix, W, best["error"].rounds, best["level"].rounds, best["error"].log[0].accepted_to,
                      best["level"].log[0].accepted_to))
        print(f"mixture {seed_mix}, W={W}: rounds error scale {alloc[-1][2]}, level {alloc[-1][3]}; first sweep "
              f"accepted up to point {alloc[-1][4]} / {alloc[-1][5]}")
# the first sweep evaluates copies of x_0: a point's change is then a whole step, far above the
# solver's local error at high noise, but small in data units; the level scale accepts past the exact
# point here (not on every mixture: on two of eight others at W=8 it accepted only the exact point, a
# review), and needs no more rounds in any row, fewer in all but one (its tolerance is not scale-free, so
# it is the default for diffusion models only: theory/cascade.md, 6; with ParaTAA's floor of 1 instead of
# the cascade's 0.1 it was fewer in all six, the floor costing a round on the last)
assert all(r[4] == 1 and r[5] > 1 and r[3] <= r[2] for r in alloc) and sum(r[3] < r[2] for r in alloc) >= 5
print("all checks passed")
