"""Coverage of the seed-paired interval, measured on simulated experiments with a true difference of 0.

Each simulated experiment has two arms of 3 seeds evaluated on the same 300 images. A run's metric is
the mean over images of: the image's difficulty (shared by every run), the arm's systematic difference
on that image (shared by the arm's seeds; mean 0 over the image population), the run's own noise on
that image, and the run's training noise (seed). "Image noise" is the standard deviation a run's
metric gets from its images, "seed noise" the one it gets from training. The interval must contain 0
in 92–98 % of the experiments at a nominal 95 %, in every setting; the test prints the coverage of
the interval :func:`seed_paired_interval` uses and of two alternatives it was chosen over.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from scipy import stats as sps

from harmonic.experiments.stats import seed_paired_interval

SEEDS, IMAGES, RESAMPLES, EXPERIMENTS = 3, 300, 200, 1500
IMG = 0.01  # a run's metric's standard deviation from its images

# (label, seed noise, share of the image noise shared by an arm's seeds, seed pairing correlation)
SETTINGS = [
    ("seed noise 1/2 of image noise", 0.5 * IMG, 0.5, 0.0),
    ("seed noise = image noise", IMG, 0.5, 0.0),
    ("seed noise dominates (4x)", 4 * IMG, 0.5, 0.0),
    ("seed noise = image noise, seeds paired (r 0.5)", IMG, 0.5, 0.5),
    ("image noise all per run", 0.5 * IMG, 0.0, 0.0),
    ("image noise mostly shared by the arm", 0.5 * IMG, 0.9, 0.0),
    ("no seed noise", 0.0, 0.9, 0.0),
]


def _experiments(rng: np.random.Generator, seed_sd: float, shared: float, pairing: float, count: int):
    """``count`` simulated experiments: point values [count, S] per arm and their image resamples [count, S, B]."""
    per_image = IMG * np.sqrt(IMAGES)
    difficulty = rng.normal(0, per_image, (count, 1, IMAGES))
    systematic = rng.normal(0, per_image * np.sqrt(shared), (count, 1, IMAGES))
    common = rng.normal(0, 1, (count, SEEDS, 1))

    def arm(extra: np.ndarray) -> np.ndarray:
        seed = seed_sd * (np.sqrt(pairing) * common + np.sqrt(1 - pairing) * rng.normal(0, 1, (count, SEEDS, 1)))
        return seed + difficulty + extra + rng.normal(0, per_image * np.sqrt(1 - shared), (count, SEEDS, IMAGES))

    xa, xb = arm(systematic), arm(np.zeros_like(systematic))
    # image multiplicities of each resample (multinomial, as the analysis draws them), shared by all runs
    draws = rng.integers(0, IMAGES, (count * RESAMPLES, IMAGES)) + IMAGES * np.arange(count * RESAMPLES)[:, None]
    w = np.bincount(draws.ravel(), minlength=count * RESAMPLES * IMAGES).reshape(count, RESAMPLES, IMAGES) / IMAGES
    boot = lambda x: np.einsum("csn,cbn->csb", x, w)  # noqa: E731
    return xa.mean(2), xb.mean(2), boot(xa), boot(xb)


def _alternative_covers(a: np.ndarray, b: np.ndarray, ba: np.ndarray, bb: np.ndarray) -> dict[str, bool]:
    """The two rejected alternatives, for the printout: Satterthwaite's df, and the seeds alone (t, S−1)."""
    d = a - b
    seed_var = d.var(ddof=1) / d.size
    cov = np.cov(ba - bb)
    shared = max(0.0, (cov.sum() - np.trace(cov)) / (d.size * (d.size - 1)))
    var = seed_var + shared
    satt = sps.t.ppf(0.975, (d.size - 1) * (var / seed_var) ** 2) * np.sqrt(var)
    seeds_only = sps.t.ppf(0.975, d.size - 1) * np.sqrt(seed_var)
    return {"Satterthwaite df": abs(d.mean()) <= satt, "seeds only, t(S-1)": abs(d.mean()) <= seeds_only}


@pytest.mark.parametrize("label, seed_sd, shared, pairing", SETTINGS, ids=[s[0] for s in SETTINGS])
def test_interval_keeps_its_95_percent_with_three_seeds(label, seed_sd, shared, pairing):
    rng = np.random.default_rng(zlib.crc32(label.encode()))
    hits, others = 0, {"Satterthwaite df": 0, "seeds only, t(S-1)": 0}
    for start in range(0, EXPERIMENTS, 100):
        a, b, ba, bb = _experiments(rng, seed_sd, shared, pairing, min(100, EXPERIMENTS - start))
        for k in range(a.shape[0]):
            iv = seed_paired_interval(a[k], b[k], ba[k], bb[k])
            assert iv.noise == "seeds+images" and iv.seeds == SEEDS
            hits += iv.lo <= 0 <= iv.hi
            for name, ok in _alternative_covers(a[k], b[k], ba[k], bb[k]).items():
                others[name] += ok
    coverage = hits / EXPERIMENTS
    print(f"\n{label}: coverage {100 * coverage:.1f} % (alternatives: "
          + ", ".join(f"{name} {100 * n / EXPERIMENTS:.1f} %" for name, n in others.items()) + ")")
    assert 0.92 <= coverage <= 0.98, f"{label}: coverage {coverage:.3f}"


def test_one_seed_gets_an_image_only_interval_and_no_p_value():
    rng = np.random.default_rng(3)
    a, b, ba, bb = _experiments(rng, IMG, 0.5, 0.0, 1)
    iv = seed_paired_interval(a[0, :1], b[0, :1], ba[0, :1], bb[0, :1])
    assert iv.noise == "images only" and iv.p is None and iv.seeds == 1
    d = ba[0, 0] - bb[0, 0]
    assert iv.lo == pytest.approx(np.quantile(d, 0.025)) and iv.hi == pytest.approx(np.quantile(d, 0.975))
    assert iv.delta == pytest.approx(a[0, 0] - b[0, 0])


def test_identical_arms_give_a_zero_width_interval():
    a = np.array([0.7, 0.72, 0.69])
    boot = np.tile(a[:, None], (1, 50)) + np.random.default_rng(0).normal(0, 0.01, (3, 50))
    iv = seed_paired_interval(a, a, boot, boot)
    assert iv.delta == 0.0 and iv.lo == 0.0 and iv.hi == 0.0 and iv.p == 1.0


def test_a_consistent_gain_across_seeds_is_found():
    """Paired differences 0.045, 0.055, 0.050 with little image noise: p well below 0.05, interval above 0."""
    b = np.array([0.70, 0.73, 0.71])
    a = b + np.array([0.045, 0.055, 0.050])
    rng = np.random.default_rng(1)
    bb = b[:, None] + rng.normal(0, 0.005, (3, 400))
    ba = a[:, None] + (bb - b[:, None]) + rng.normal(0, 0.002, (3, 400))
    iv = seed_paired_interval(a, b, ba, bb)
    assert iv.delta == pytest.approx(0.05)
    assert 0 < iv.lo < 0.05 < iv.hi and iv.p < 0.01
    assert 2.0 <= iv.df < 10
