"""MS-SSIM against pytorch-msssim, known answers, and MS-SSIM diversity."""

from __future__ import annotations

import math

import pytest
import pytorch_msssim
import torch
import torch.nn.functional as F

from genbench.core.errors import UsageError
from genbench.metrics import ssim as ssim_module
from genbench.metrics.ssim import STANDARD_WEIGHTS, ms_ssim, ms_ssim_diversity, ms_ssim_setting


def _smooth_images(n: int, channels: int, size: int, seed: int, detail: int = 6) -> torch.Tensor:
    """Structured images in [-1, 1]: low-resolution noise upsampled to ``size`` (blobs and edges)."""
    generator = torch.Generator().manual_seed(seed)
    low = torch.rand(n, channels, detail, detail, generator=generator)
    return F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1) * 2 - 1


def _noisy(images: torch.Tensor, level: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (images + level * torch.randn(images.shape, generator=generator)).clamp(-1, 1)


def test_ms_ssim_equals_pytorch_msssim_above_160_pixels():
    # Four pairs of 3x176x176: noise vs noisier noise, structured vs noisy, shifted and contrast-changed.
    generator = torch.Generator().manual_seed(0)
    noise = torch.rand(1, 3, 176, 176, generator=generator) * 2 - 1
    smooth = _smooth_images(1, 3, 176, seed=1, detail=12)
    x = torch.cat([noise, smooth, smooth, smooth])
    y = torch.cat([_noisy(noise, 0.3, seed=2), _noisy(smooth, 0.2, seed=3),
                   torch.roll(smooth, shifts=3, dims=3), smooth * 0.5])
    ours = ms_ssim(x, y)
    reference = pytorch_msssim.ms_ssim((x + 1) / 2, (y + 1) / 2, data_range=1, size_average=False)
    # Same float32 operations in the same order; 1e-5 allows for a different convolution algorithm
    # (float32 rounding, ~1e-7 per value, through 5 scales of products and means).
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
    assert ours.shape == (4,) and ours.dtype == torch.float32
    assert len(set(ours.tolist())) == 4 and all(0.05 < v < 0.99 for v in ours.tolist())  # not degenerate


def test_ms_ssim_equals_pytorch_msssim_for_odd_non_square_sizes():
    # 161 x 175: both sides odd, so every downsampling pads; exercises the padding of the scale loop.
    x = _smooth_images(2, 1, 175, seed=4, detail=10)[:, :, :161]
    y = _noisy(x, 0.1, seed=5)
    reference = pytorch_msssim.ms_ssim((x + 1) / 2, (y + 1) / 2, data_range=1, size_average=False)
    torch.testing.assert_close(ms_ssim(x, y), reference, atol=1e-5, rtol=0)  # as above


def test_banded_matrix_filter_equals_the_convolution_used_for_large_images(monkeypatch):
    # Images up to _MATMUL_MAX_SIDE px are filtered by banded-matrix products, larger ones by conv2d;
    # forcing the convolution on small images checks that the two compute the same MS-SSIM.
    x = torch.cat([_smooth_images(2, 3, 28, seed=15), _smooth_images(2, 3, 28, seed=16, detail=14)])
    y = _noisy(x, 0.2, seed=17)
    pairs = [(x, y), (x[:, :, :27, :25], y[:, :, :27, :25])]  # and odd, non-square sides
    products = [ms_ssim(a, b) for a, b in pairs]
    monkeypatch.setattr(ssim_module, "_MATMUL_MAX_SIDE", 0)
    for (a, b), expected in zip(pairs, products):
        # Same float32 sums in another order: ~1e-7 per filtered value, through 3 scales of products.
        torch.testing.assert_close(ms_ssim(a, b), expected, atol=1e-6, rtol=0)
        assert len(set(expected.tolist())) == 4  # four different pairs, not a degenerate constant


def test_small_image_setting_matches_a_loop_over_pytorch_msssim_ssim_terms():
    # Independent assembly of the 28-px setting from pytorch-msssim's own per-scale SSIM and window.
    from pytorch_msssim.ssim import _fspecial_gauss_1d, _ssim

    x = _smooth_images(3, 1, 28, seed=6)
    y = _noisy(x, 0.15, seed=7)
    setting = ms_ssim_setting(28, 28)
    assert (setting["scales"], setting["window"], setting["sigma"]) == (3, 7, 1.5)
    assert setting["weights"] == pytest.approx([w / sum(STANDARD_WEIGHTS[:3]) for w in STANDARD_WEIGHTS[:3]])
    win = _fspecial_gauss_1d(7, 1.5).repeat(1, 1, 1, 1)
    a, b, factors = (x + 1) / 2, (y + 1) / 2, []
    for scale in range(3):  # 28, 14, 7 px
        ssim, cs = _ssim(a, b, data_range=1, win=win, size_average=False)
        factors.append(torch.relu(cs if scale < 2 else ssim))
        a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
    expected = torch.prod(torch.stack(factors) ** torch.tensor(setting["weights"]).view(-1, 1, 1), 0).mean(1)
    torch.testing.assert_close(ms_ssim(x, y), expected, atol=1e-5, rtol=0)  # float32, as above


@pytest.mark.parametrize("size, scales, window", [(28, 3, 7), (14, 2, 7), (64, 4, 7), (160, 5, 7),
                                                  (161, 5, 11), (5, 1, 5), (6, 1, 5)])
def test_setting_scales_and_window_follow_the_image_size(size, scales, window):
    setting = ms_ssim_setting(size, size + 40)  # the smaller side decides
    assert (setting["scales"], setting["window"]) == (scales, window)
    assert len(setting["weights"]) == scales
    # Renormalised weights sum to 1; the standard ones as published (1.0001).
    assert sum(setting["weights"]) == pytest.approx(1.0001 if size > 160 else 1.0, abs=1e-12)


@pytest.mark.parametrize("size", [28, 64])
def test_identical_images_give_one(size):
    x = _smooth_images(3, 3, size, seed=8)
    # cs and the luminance term are (2a + c) / (a + a + c) for identical inputs: exactly 1 in IEEE
    # arithmetic, so only the final power/product/mean may round (float32 ulp).
    torch.testing.assert_close(ms_ssim(x, x.clone()), torch.ones(3), atol=1e-6, rtol=0)


def test_28px_values_in_unit_interval_and_decrease_with_noise():
    x = _smooth_images(8, 1, 28, seed=9)
    values = [ms_ssim(x, _noisy(x, level, seed=10)) for level in (0.05, 0.2, 0.5)]
    for v in values:
        assert bool(((v > 0) & (v <= 1)).all())
    # More noise, less similar, for every image: MS-SSIM must rank the corruptions.
    assert bool((values[0] > values[1]).all() and (values[1] > values[2]).all())
    assert ms_ssim(x.double(), x.double()).dtype == torch.float64


@pytest.mark.parametrize("x, y, message", [
    (torch.full((2, 1, 28, 28), 1.5), torch.zeros(2, 1, 28, 28), r"\[-1, 1\]"),
    (torch.zeros(2, 1, 28, 28), torch.full((2, 1, 28, 28), -1.01), r"\[-1, 1\]"),
    (torch.zeros(1, 28, 28), torch.zeros(1, 28, 28), "4-D"),
    (torch.zeros(2, 1, 28, 28), torch.zeros(2, 1, 28, 27), "same shape"),
    (torch.full((2, 1, 28, 28), float("nan")), torch.zeros(2, 1, 28, 28), "NaN"),
])
def test_ms_ssim_rejects_bad_input_with_one_line(x, y, message):
    with pytest.raises(UsageError, match=message) as error:
        ms_ssim(x, y)
    assert "\n" not in str(error.value)


def test_diversity_of_identical_images_is_one_with_per_class_keys():
    image = _smooth_images(1, 1, 28, seed=11)
    images = image.repeat(12, 1, 1, 1)
    labels = torch.tensor([0] * 5 + [1] * 6 + [7])
    result = ms_ssim_diversity(images, num_pairs=50, seed=0, labels=labels)
    assert result.value == pytest.approx(1.0, abs=1e-6)  # identical pairs, float32 ulp as above
    assert result.std == pytest.approx(0.0, abs=1e-6)
    assert result.num_samples == 50
    assert set(result.settings["per_class"]) == {0, 1}  # class 7 has one image: no pair
    assert result.settings["per_class_skipped"] == [7]
    assert all(v == pytest.approx(1.0, abs=1e-6) for v in result.settings["per_class"].values())
    assert result.settings["ms_ssim"] == ms_ssim_setting(28, 28)


def test_diversity_pairs_distinct_images_within_classes():
    # Class 0: copies of one image (no diversity); class 1: independent images (diverse).
    copies = _smooth_images(1, 1, 28, seed=12).repeat(6, 1, 1, 1)
    distinct = _smooth_images(6, 1, 28, seed=13)
    images = torch.cat([copies, distinct])
    labels = [0] * 6 + [1] * 6
    result = ms_ssim_diversity(images, num_pairs=200, seed=1, labels=labels)
    per_class = result.settings["per_class"]
    assert per_class[0] == pytest.approx(1.0, abs=1e-6)
    assert per_class[1] < 0.9
    # The whole sample lies between its classes; the CI is the 95% normal interval of the mean.
    assert per_class[1] < result.value < per_class[0]
    half = 1.96 * result.std / math.sqrt(200)
    assert (result.ci_low, result.ci_high) == pytest.approx((result.value - half, result.value + half))
    # Same seed, same pairs; another seed, other pairs.
    assert ms_ssim_diversity(images, num_pairs=200, seed=1).value == result.value
    assert ms_ssim_diversity(images, num_pairs=200, seed=2).value != result.value


def test_diversity_never_pairs_an_image_with_itself():
    # Two distinct images: every pair is (a, b) or (b, a), never (a, a), so the value is MS-SSIM(a, b).
    images = _smooth_images(2, 1, 28, seed=14)
    expected = float(ms_ssim(images[:1], images[1:]))
    result = ms_ssim_diversity(images, num_pairs=20, seed=0)
    assert result.value == pytest.approx(expected, abs=1e-6)  # MS-SSIM is symmetric up to float32 rounding


def test_diversity_rejects_bad_input():
    with pytest.raises(UsageError, match="at least 2 images"):
        ms_ssim_diversity(torch.zeros(1, 1, 28, 28))
    with pytest.raises(UsageError, match="labels"):
        ms_ssim_diversity(torch.zeros(4, 1, 28, 28), num_pairs=4, labels=[0, 1])
