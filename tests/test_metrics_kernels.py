"""MMD^2_u and KID against independent implementations and known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist, pdist

from genbench.core.errors import UsageError
from genbench.metrics import kernels
from genbench.metrics.kernels import kid, median_pairwise_distance, mmd


def _sample(n: int, d: int, seed: int, shift: float = 0.0, dtype=torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=generator, dtype=torch.float64) + shift).to(dtype)


def _brute_force_mmd(x: np.ndarray, y: np.ndarray, k) -> float:
    """Gretton et al. 2012, Eq. 3, as a literal double loop in float64."""
    n, m = len(x), len(y)
    s_xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j)
    s_yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    s_xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m))
    return s_xx / (n * (n - 1)) + s_yy / (m * (m - 1)) - 2 * s_xy / (n * m)


def _gaussian(bandwidths):
    return lambda a, b: sum(math.exp(-np.sum((a - b) ** 2) / (2 * s**2)) for s in bandwidths)


def _polynomial(a, b):
    return (a @ b / len(a) + 1) ** 3


@pytest.mark.parametrize("block_size", [3, 2048])
@pytest.mark.parametrize("case", ["gaussian", "gaussian-list", "median", "polynomial"])
def test_mmd_matches_brute_force_double_loop(case, block_size):
    # N != M, block_size 3 splits both samples across blocks and the x/y boundary (7 = 2*3 + 1).
    x, y = _sample(7, 5, seed=0), _sample(11, 5, seed=1, shift=0.4)
    if case == "gaussian":
        result, k = mmd(x, y, bandwidth=1.7, block_size=block_size), _gaussian([1.7])
    elif case == "gaussian-list":
        result = mmd(x, y, bandwidth=[0.5, 1.0, 4.0], block_size=block_size)
        k = _gaussian([0.5, 1.0, 4.0])
    elif case == "median":
        result = mmd(x, y, block_size=block_size)
        # Independent median heuristic: scipy's pairwise distances of the pooled sample (18 < 2000 points).
        bandwidth = float(np.median(pdist(np.concatenate([x.numpy(), y.numpy()]))))
        assert result.settings["bandwidth"] == pytest.approx(bandwidth, rel=1e-12)
        k = _gaussian([bandwidth])
    else:
        result, k = mmd(x, y, kernel="polynomial", block_size=block_size), _polynomial
    expected = _brute_force_mmd(x.numpy(), y.numpy(), k)
    # Float64 everywhere; only the summation order differs, so agreement to ~1e-15 relative.
    assert result.value == pytest.approx(expected, rel=1e-10, abs=1e-13)
    assert result.num_samples == 18 and result.settings["num_x"] == 7 and result.settings["num_y"] == 11


def test_mmd_flattens_examples_and_accepts_any_finite_tensor():
    x, y = _sample(6, 12, seed=0), _sample(5, 12, seed=1)
    flat = mmd(x, y, bandwidth=2.0).value
    # [N, 3, 2, 2] images are the same 12 features per example.
    assert mmd(x.view(6, 3, 2, 2), y.view(5, 3, 2, 2), bandwidth=2.0).value == pytest.approx(flat, rel=1e-12)
    # Integer tensors are accepted (computed in float32): float32 kernel rounding, ~1e-7 relative.
    xi, yi = (x * 10).round().to(torch.int64), (y * 10).round().to(torch.int64)
    expected = mmd(xi.double(), yi.double(), bandwidth=20.0).value
    assert mmd(xi, yi, bandwidth=20.0).value == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_float32_mmd_keeps_its_precision_far_from_the_origin():
    # Features with a large common offset (like non-negative network features): |z|^2 ~ 5e5 while
    # distances^2 ~ 100, so |a|^2 + |b|^2 - 2 a.b in float32 would lose ~3 digits (8e-4 relative here
    # before the pooled sample was centred); centring keeps float32 within ~2e-6 of float64.
    x, y = _sample(300, 50, seed=8) + 100, _sample(300, 50, seed=9) * 1.1 + 100
    exact = mmd(x, y, bandwidth=10.0).value
    assert mmd(x.float(), y.float(), bandwidth=10.0).value == pytest.approx(exact, rel=1e-4)


def test_median_pairwise_distance_matches_scipy_and_subsets_deterministically():
    x, y = _sample(150, 5, seed=2), _sample(150, 5, seed=3, shift=0.5)
    pooled = np.concatenate([x.numpy(), y.numpy()])
    # 300 points < max_points: every pair is used, so it is exactly numpy's median of scipy's pdist.
    assert median_pairwise_distance(x, y) == pytest.approx(float(np.median(pdist(pooled))), rel=1e-12)
    assert median_pairwise_distance(torch.cat([x, y])) == pytest.approx(median_pairwise_distance(x, y))
    # A 60-point subset: same seed, same value; different seeds, different subsets.
    values = [median_pairwise_distance(x, y, max_points=60, seed=s) for s in range(8)]
    assert median_pairwise_distance(x, y, max_points=60, seed=0) == values[0]
    assert len(set(values)) == 8
    # The subset median has a sampling spread of ~3% here (measured over 20 seeds); 12% is 4 spreads.
    assert values[0] == pytest.approx(float(np.median(pdist(pooled))), rel=0.12)


def test_mmd_is_unbiased_under_identical_distributions():
    n, d, bandwidth, seeds = 40, 3, 2.0, 40
    unbiased, biased = [], []
    for seed in range(seeds):
        x, y = _sample(n, d, seed=2 * seed), _sample(n, d, seed=2 * seed + 1)
        unbiased.append(mmd(x, y, bandwidth=bandwidth).value)
        # The biased V-statistic (i = j terms kept) for contrast: it is positive, by about 2 (1 - E k) / n.
        z = np.concatenate([x.numpy(), y.numpy()])
        k = np.exp(-cdist(z, z, "sqeuclidean") / (2 * bandwidth**2))
        biased.append(k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean())
    unbiased, biased = np.array(unbiased), np.array(biased)
    se = unbiased.std(ddof=1) / math.sqrt(seeds)
    # E[MMD^2_u] = 0 exactly; 4 standard errors of the mean over seeds leaves a 6e-5 chance of failing.
    assert abs(unbiased.mean()) < 4 * se
    # ... while the same test rejects the biased estimator, so it can fail.
    assert biased.mean() > 4 * biased.std(ddof=1) / math.sqrt(seeds)


def test_mmd_matches_gaussian_closed_form_and_bootstrap_spread():
    # x ~ N(0, I), y ~ N(mu, I) in d dims, Gaussian kernel of bandwidth s:
    # MMD^2 = 2 c (1 - exp(-|mu|^2 / (2 (s^2 + 2)))), c = (s^2 / (s^2 + 2))^(d / 2).
    n, d, s, shift = 200, 2, 1.5, 0.6
    c = (s**2 / (s**2 + 2)) ** (d / 2)
    truth = 2 * c * (1 - math.exp(-d * shift**2 / (2 * (s**2 + 2))))
    repeats = [mmd(_sample(n, d, seed=100 + r), _sample(n, d, seed=200 + r, shift=shift), bandwidth=s).value
               for r in range(16)]
    spread = float(np.std(repeats, ddof=1))
    # The mean of 16 unbiased estimates is within 4 standard errors of the closed form.
    assert abs(np.mean(repeats) - truth) < 4 * spread / math.sqrt(16)
    result = mmd(_sample(n, d, seed=100), _sample(n, d, seed=200, shift=shift), bandwidth=s, bootstrap=200)
    # The resamples do not change the estimate (float64; more weight columns only reorder BLAS sums).
    assert result.value == pytest.approx(repeats[0], rel=1e-12)
    assert result.ci_low < result.value < result.ci_high
    # The bootstrap std estimates the spread over fresh samples; a std from 16 repeats is itself
    # uncertain by ~18%, and the bootstrap by a few %, so a factor 1.6 either way.
    assert spread / 1.6 < result.std < spread * 1.6
    assert result.settings["bootstrap_usable"] == 200


def test_blocked_path_equals_unblocked_and_never_builds_a_larger_block(monkeypatch):
    x = _sample(230, 20, seed=4, dtype=torch.float32)
    y = _sample(170, 20, seed=5, shift=0.1, dtype=torch.float32)
    full = mmd(x, y, block_size=4096, permutations=20, bootstrap=20, seed=3)
    shapes = []
    original = kernels._kernel_block
    monkeypatch.setattr(kernels, "_kernel_block", lambda a, b, *rest: shapes.append((len(a), len(b)))
                        or original(a, b, *rest))
    blocked = mmd(x, y, block_size=64, permutations=20, bootstrap=20, seed=3)
    assert max(max(s) for s in shapes) == 64
    assert len(shapes) == 7 * 8 // 2  # 400 points: 7 block rows, upper triangle only
    # float32 kernel blocks can differ in the last bit between block shapes (BLAS tiling); the sums
    # are float64, so agreement is ~1e-7 of the kernel scale (1).
    for field in ("value", "ci_low", "ci_high", "std"):
        assert getattr(blocked, field) == pytest.approx(getattr(full, field), abs=1e-6)
    assert blocked.settings == full.settings


def test_permutation_p_value_large_under_null_and_minimal_when_shifted():
    permutations = 100
    p_null = [mmd(_sample(40, 4, seed=2 * s), _sample(50, 4, seed=2 * s + 1), permutations=permutations,
                  seed=s).settings["p_value"] for s in range(10)]
    # Under p = q the p-value is uniform on {1/101, ..., 1}: the mean of 10 has sd 0.09 around 0.5,
    # so (0.2, 0.8) is more than 3 sd on each side.
    assert 0.2 < np.mean(p_null) < 0.8
    shifted = mmd(_sample(40, 4, seed=0), _sample(50, 4, seed=1, shift=1.0), permutations=permutations)
    # A shift of 1 sd in every dimension: no permutation comes close, so p is its minimum 1 / (K + 1).
    assert shifted.settings["p_value"] == pytest.approx(1 / (permutations + 1))
    assert mmd(_sample(40, 4, seed=0), _sample(50, 4, seed=1)).settings.get("p_value") is None


def test_mmd_rejects_bad_input():
    x, y = _sample(5, 3, seed=0), _sample(5, 3, seed=1)
    bad = [
        dict(x=x, y=_sample(5, 4, seed=1)),  # feature sizes differ
        dict(x=torch.cat([x[:4], torch.full((1, 3), float("nan"))]), y=y),
        dict(x=x, y=torch.cat([y[:4], torch.full((1, 3), float("inf"))])),
        dict(x=x[:1], y=y),  # one example: no pair i != j
        dict(x=x, y=y, kernel="laplace"),
        dict(x=x, y=y, kernel="polynomial", bandwidth=1.0),
        dict(x=x, y=y, bandwidth=-1.0),
        dict(x=x, y=y, bandwidth=[]),
        dict(x=x, y=y, block_size=0),
        dict(x=x, y=y, permutations=-1),
        dict(x=torch.zeros(4, 3), y=torch.zeros(4, 3)),  # median distance 0: no usable bandwidth
    ]
    for kwargs in bad:
        with pytest.raises(UsageError) as error:
            mmd(**kwargs)
        assert "\n" not in str(error.value)


@pytest.mark.parametrize("dtype, rel", [
    (torch.float64, 1e-10),  # both sides in float64: only summation order differs
    (torch.float32, 1e-4),  # torch-fidelity sums float32 kernel matrices in float32 (~1e-6 relative here)
])
def test_kid_equals_torch_fidelity_on_the_same_features_and_subsets(dtype, rel):
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    # Non-centred features of different sizes, like Inception pool features of two samples.
    fx = (_sample(300, 64, seed=6) * 0.5 + 0.2).to(dtype)
    fy = (_sample(260, 64, seed=7) * 0.5 + 0.1).to(dtype)
    ours = kid(fx, fy, subsets=10, subset_size=100, seed=11)
    theirs = kid_features_to_metric(fx, fy, kid_subsets=10, kid_subset_size=100, rng_seed=11, verbose=False)
    assert ours.value == pytest.approx(theirs[KEY_METRIC_KID_MEAN], rel=rel)
    assert ours.std == pytest.approx(theirs[KEY_METRIC_KID_STD], rel=rel)
    assert ours.num_samples == 10
    # The subsets matter: another seed gives another number (so the match above is not by chance).
    assert kid(fx, fy, subsets=10, subset_size=100, seed=12).value != pytest.approx(ours.value, rel=1e-3)


def test_kid_rejects_subsets_larger_than_the_sample():
    with pytest.raises(UsageError, match="subset_size"):
        kid(_sample(50, 8, seed=0), _sample(80, 8, seed=1), subset_size=60)
