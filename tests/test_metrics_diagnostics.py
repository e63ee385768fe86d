"""Diagnostics against hand-computed truths."""

from __future__ import annotations

import math

import pytest
import torch

from genbench.core.errors import UsageError
from genbench.metrics.diagnostics import (
    active_units,
    label_entropy,
    memorisation_ratio,
    nearest_neighbours,
)


def test_label_entropy_of_one_class_is_zero_and_of_uniform_is_log_10():
    assert label_entropy(torch.full((50,), 3), 10).value == 0.0
    uniform = label_entropy(torch.arange(1000) % 10, 10)
    assert uniform.value == pytest.approx(math.log(10), abs=1e-12)
    assert uniform.settings["histogram"] == [100] * 10


def test_label_entropy_matches_hand_computation():
    # p = (1/2, 1/4, 1/4): H = ln 2 / 2 + 2 * ln 4 / 4 = 1.5 ln 2
    assert label_entropy(torch.tensor([0, 0, 1, 2]), 10).value == pytest.approx(1.5 * math.log(2))
    with pytest.raises(UsageError):
        label_entropy(torch.tensor([10]), 10)


def test_active_units_counts_the_used_half_of_the_latents():
    generator = torch.Generator().manual_seed(0)
    used = torch.randn(2000, 8, generator=generator)  # variance 1: active
    unused = 0.01 * torch.randn(2000, 8, generator=generator)  # variance 1e-4: inactive
    result = active_units(torch.cat([used, unused], dim=1))
    assert result.value == 8
    assert result.settings["fraction_active"] == 0.5


def test_nearest_neighbours_equal_brute_force():
    generator = torch.Generator().manual_seed(1)
    q, r = torch.randn(37, 5, generator=generator), torch.randn(53, 5, generator=generator)
    distances, indices = nearest_neighbours(q, r, block_size=8)
    brute = torch.tensor([[float((a - b).norm()) for b in r.double()] for a in q.double()],
                         dtype=torch.float64)
    assert torch.equal(indices, brute.argmin(1))
    # Both in float64; cdist may expand |a|^2 + |b|^2 - 2ab, which loses ~1e-15 relative.
    torch.testing.assert_close(distances, brute.min(1).values, rtol=1e-10, atol=1e-10)


def test_memorisation_ratio_is_small_for_copies_and_near_one_for_fresh_draws():
    generator = torch.Generator().manual_seed(2)
    train = torch.randn(500, 4, generator=generator)
    test = torch.randn(200, 4, generator=generator)
    copies = train[:200] + 1e-6
    fresh = torch.randn(200, 4, generator=generator)
    assert memorisation_ratio(copies, train, test).value < 1e-4
    # Fresh draws from the same distribution sit as far from the training set as test data:
    # the ratio is 1 up to sampling noise of two 200-point means (a few percent).
    assert memorisation_ratio(fresh, train, test).value == pytest.approx(1.0, abs=0.15)
