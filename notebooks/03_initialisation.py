# %% [markdown]
# # 3. Initialisation: the speed/accuracy ladder and the Pareto front
#
# An init sequence fixes every output's round (R_c = T - t_c + c); its accuracy has to be measured.
# Here, on a Gaussian-mixture calibration problem (exact denoiser, rectified flow, Euler, T = 50),
# we compare for 2, 4 and 8 cores:
#
# * the paper's sequences (0-8-16-32 and 0-2-4-8-16-24-32-40; none is published for 2 cores),
# * the recipe that reproduces them (`recipe_init`, reference §4.2, reconstructed),
# * uniform spacing,
# * the optimiser (`optimize_init`): fewest rounds for an output whose error against the exact
#   solution is at most 1.05x the sequential solver's.
#
# Every output of every sequence the optimiser measured is a point (rounds, error vs exact); the lower-left
# envelope of these points is the Pareto front.

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import chords_core as cc
from chords_core.inits import recipe_init
from chords_core.tuning import calibration, optimize_init, pareto_front
from theory import chords_theory as th

# figures go to $CHORDS_NB_OUT if set (the test suite sets a temp dir), else notebooks/figures of this checkout
OUT = Path(os.environ.get("CHORDS_NB_OUT", Path(cc.__file__).resolve().parents[1] / "notebooks" / "figures"))
OUT.mkdir(parents=True, exist_ok=True)
T, BUDGET = 50, 1.05
cal = calibration(T, "euler", dim=6, modes=3, samples=6, seed=0)
print(cal.description, f"; sequential error {cal.seq_error:.3e}")

# %% [markdown]
# ## The optimiser for 2, 4 and 8 cores
# Exhaustive for 2 cores (49 sequences); local search from the recipe seeds for 4 and 8 cores, capped
# at 70 measured sequences to keep this notebook fast (`python -m chords_core optimize` searches longer).

# %%
results = {K: optimize_init(None, K, cal=cal, budget=BUDGET, exhaustive_limit=60, max_evals=70) for K in (2, 4, 8)}
for K, res in results.items():
    print(f"--- {K} cores")
    print(res.summary())

# %% [markdown]
# ## The speed/accuracy ladder of each sequence
# Error against the exact solution, relative to the sequential solver's, for every output in arrival order.

# %%
fig, axes = plt.subplots(1, 3, figsize=(14, 4), sharey=True)
for ax, (K, res) in zip(axes, results.items()):
    named = dict(res.baselines)
    named["optimiser"] = res.best
    for name, cand in named.items():
        order = sorted(range(K), key=lambda c: cand.finish[c])
        ax.semilogy([cand.finish[c] for c in order], [cand.ratios[c] for c in order], "o-",
                    label=f"{name}: {'-'.join(map(str, cand.init))}")
    ax.axhline(BUDGET, color="k", ls=":", label=f"budget {BUDGET}")
    ax.set_title(f"{K} cores")
    ax.set_xlabel("output round")
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
axes[0].set_ylabel("error / sequential error")
fig.tight_layout()
fig.savefig(OUT / "03_ladder.png", dpi=90)

# %% [markdown]
# ## The Pareto front: rounds against error
# Grey: every output of every measured sequence. Line: the front. Stars: the optimiser's choice.

# %%
fronts = {}
fig, axes = plt.subplots(1, 3, figsize=(14, 4), sharey=True)
for ax, (K, res) in zip(axes, results.items()):
    pts = [(c.finish[k], c.errors[k]) for c in res.candidates for k in range(K)]
    fronts[K] = pareto_front(pts)
    ax.semilogy(*zip(*pts), ".", color="0.7", ms=3)
    ax.step(*zip(*fronts[K]), where="post", color="C0", label="Pareto front")
    ax.plot([res.rounds], [res.best.error], "*", color="C3", ms=14, label="optimiser")
    for name, cand in res.baselines.items():
        ax.plot([cand.rounds], [cand.error], "s", ms=6, label=f"{name} (first output within budget)")
    ax.axhline(cal.seq_error * BUDGET, color="k", ls=":", label="budget")
    ax.set_title(f"{K} cores")
    ax.set_xlabel("output round")
    ax.legend(fontsize=6)
axes[0].set_ylabel("error vs exact (rms)")
fig.tight_layout()
fig.savefig(OUT / "03_pareto.png", dpi=90)
for K, f in fronts.items():
    within = [r for r, e in f if e <= BUDGET * cal.seq_error]
    print(f"{K} cores: front has {len(f)} points; fewest rounds within budget {min(within):.0f}")

# %% [markdown]
# ## Checks
# The optimiser is never worse than the paper's, the recipe's or the uniform sequence, stays within
# budget and its front is monotone: these follow from how the search and the front are built (the
# baselines are its seeds), so they are printed above, not asserted. What could fail is asserted: its
# choice is what CHORDS itself does with it (`cc.chords` with the chosen init and `StopAtCore(stop_n)`
# returns the same round and error), its rounds are the ladder formula's, more cores never need more
# rounds, and the recipe reproduces the paper.

# %%
for K, res in results.items():
    run = cc.chords(cal.model, cal.x, cal.grid, "euler", init=res.init, stop=cc.StopAtCore(res.stop_n))
    assert run.rounds == res.rounds, (K, run.rounds, res.rounds)
    assert abs(float(((run.x - cal.ref) ** 2).mean()) ** 0.5 - res.best.error) <= 1e-12 * res.best.error
    assert res.best.finish == th.output_rounds(T, res.init)
assert results[8].rounds <= results[4].rounds <= results[2].rounds < T
assert recipe_init(T, 8) == (0, 2, 4, 8, 16, 24, 32, 40) and recipe_init(T, 4) == (0, 8, 16, 32)
assert results[2].method.startswith("exhaustive")
print("notebook 3: all checks passed;", {K: (r.init, r.rounds, round(r.speedup, 2)) for K, r in results.items()})
