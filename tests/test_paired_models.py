"""Paired models (srgan, pix2pix), their degradations and the PSNR / SSIM metrics: what the model
contract test (test_models.py, which covers both models) cannot see."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from genbench.cli import main
from genbench.core.errors import GenbenchError, UsageError
from genbench.data import load_images, to_model_range
from genbench.evaluation import METRICS
from genbench.evaluation.context import EvalContext
from genbench.evaluation.registry import NotApplicable
from genbench.evaluation.settings import eval_settings_for
from genbench.metrics.paired import psnr, ssim, ssim_window
from genbench.models import StepContext, get_model_class
from genbench.models.paired import (
    EDGE_THRESHOLD,
    PairedModel,
    downsample,
    edge_map,
    sobel_magnitude,
)
from tests.conftest import tiny_config

CPU = StepContext(torch.device("cpu"))
SHAPE = (1, 28, 28)
PAIRED = ["srgan", "pix2pix"]


def make(name: str, image_shape=SHAPE, **overrides):
    torch.manual_seed(0)
    model = get_model_class(name)(tiny_config(name).with_overrides(overrides), image_shape)
    model.build_optimizers()
    return model


def digits(n=16):
    """The first ``n`` shipped MNIST training images, ``[n, 1, 28, 28]`` in ``[-1, 1]``."""
    return to_model_range(load_images("mnist", "train", limit=n, allow_download=False).images)


# --- degradations --------------------------------------------------------------------------------

def test_downsample_averages_blocks():
    constant = torch.full((2, 3, 28, 28), 0.3)
    assert torch.allclose(downsample(constant), torch.full((2, 3, 7, 7), 0.3))
    # A pixel checkerboard of +-1 averages to 0 in every 4x4 block.
    rows, cols = torch.meshgrid(torch.arange(28), torch.arange(28), indexing="ij")
    checker = (((rows + cols) % 2) * 2 - 1).float()[None, None]
    assert torch.equal(downsample(checker), torch.zeros(1, 1, 7, 7))
    # Constant 4x4 blocks come back, one value per block (dyadic values: the sums are exact).
    blocks = ((torch.arange(49) - 24) / 32).view(1, 1, 7, 7)
    assert torch.equal(downsample(blocks.repeat_interleave(4, 2).repeat_interleave(4, 3)), blocks)
    # Other factors and sides that are not multiples of the factor.
    assert downsample(torch.zeros(1, 1, 32, 32)).shape == (1, 1, 8, 8)
    assert downsample(torch.zeros(1, 1, 30, 30)).shape == (1, 1, 7, 7)
    assert torch.equal(downsample(checker, factor=2), torch.zeros(1, 1, 14, 14))


def square(size=28, top=10, left=8, height=8, width=12):
    """A white rectangle (1) on black (-1), ``[1, 1, size, size]``, and its inside mask."""
    inside = torch.zeros(size, size, dtype=torch.bool)
    inside[top : top + height, left : left + width] = True
    return (inside.float() * 2 - 1)[None, None], inside


def test_sobel_magnitude_of_a_square_matches_hand_computed_values():
    image, _ = square()
    magnitude = sobel_magnitude(image)[0, 0]
    # Derivative per pixel on the [0, 1] scale (see SOBEL_X): the middle of a side is half a
    # full step on both sides of the border; corners worked out by hand from the 3x3 kernels.
    assert magnitude[10, 14] == pytest.approx(0.5)  # inside, top side
    assert magnitude[9, 14] == pytest.approx(0.5)  # outside, top side
    assert magnitude[10, 8] == pytest.approx(3 * math.sqrt(2) / 8)  # inner corner
    assert magnitude[9, 8] == pytest.approx(math.sqrt(10) / 8)  # outside, next to the corner
    assert magnitude[9, 7] == pytest.approx(math.sqrt(2) / 8)  # outer diagonal corner
    assert magnitude[14, 14] == 0 and magnitude[0, 0] == 0  # flat inside and outside


def test_edge_map_of_a_square_is_its_border():
    image, inside = square()
    edges = edge_map(image)
    assert edges.shape == image.shape and set(edges.unique().tolist()) == {-1.0, 1.0}
    # Expected: pixels whose 3x3 neighbourhood holds both inside and outside pixels (one ring
    # inside the border, one outside), except the 4 outer diagonal corners (sqrt(2)/8 < 0.25).
    near_inside = F.max_pool2d(inside.float()[None, None], 3, 1, 1)[0, 0] > 0
    near_outside = F.max_pool2d((~inside).float()[None, None], 3, 1, 1)[0, 0] > 0
    expected = near_inside & near_outside
    for row, col in [(9, 7), (9, 20), (18, 7), (18, 20)]:
        expected[row, col] = False
    assert EDGE_THRESHOLD == 0.25
    assert torch.equal(edges[0, 0] > 0, expected)
    assert int(expected.sum()) == (10 * 14 - 6 * 10) - 4  # two rings minus the corners


def test_edge_map_has_no_edges_on_flat_images_and_repeats_over_channels():
    assert torch.equal(edge_map(torch.full((2, 1, 28, 28), 0.7)), -torch.ones(2, 1, 28, 28))
    gray, _ = square(32)
    colour = gray.repeat(1, 3, 1, 1)
    edges = edge_map(colour)
    assert edges.shape == (1, 3, 32, 32)
    assert torch.equal(edges[:, 0], edges[:, 1]) and torch.equal(edges[:, 0], edge_map(gray)[:, 0])


# --- metric functions ----------------------------------------------------------------------------

def test_psnr_closed_form():
    x = torch.zeros(2, 1, 28, 28)
    # 0.2 in [-1, 1] is 0.1 in [0, 1]: MSE 0.01, PSNR = 10 log10(1 / 0.01) = 20 dB exactly.
    assert psnr(x, x + 0.2).tolist() == pytest.approx([20.0, 20.0], abs=1e-6)  # 0.2 in float32
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(4, 3, 8, 8, generator=generator) * 2 - 1
    b = torch.rand(4, 3, 8, 8, generator=generator) * 2 - 1
    mse = (((a.numpy().astype(np.float64) - b.numpy()) / 2) ** 2).reshape(4, -1).mean(1)
    np.testing.assert_allclose(psnr(a, b).numpy(), 10 * np.log10(1 / mse), rtol=1e-12)
    assert psnr(a, a).tolist() == pytest.approx([100.0] * 4)  # the MSE floor, 1e-10
    with pytest.raises(UsageError, match="same shape"):
        psnr(a, b[:, :1])


def brute_force_ssim(x: np.ndarray, y: np.ndarray, window: int, sigma: float = 1.5) -> float:
    """SSIM of two single-channel images in [0, 1] by a loop over every valid window position."""
    coords = np.arange(window) - window // 2
    g = np.exp(-(coords**2) / (2 * sigma**2))
    weights = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for i in range(x.shape[0] - window + 1):
        for j in range(x.shape[1] - window + 1):
            a, b = x[i : i + window, j : j + window], y[i : i + window, j : j + window]
            mu_a, mu_b = (weights * a).sum(), (weights * b).sum()
            var_a = (weights * (a - mu_a) ** 2).sum()
            var_b = (weights * (b - mu_b) ** 2).sum()
            cov = (weights * (a - mu_a) * (b - mu_b)).sum()
            values.append((2 * mu_a * mu_b + c1) * (2 * cov + c2)
                          / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)))
    return float(np.mean(values))


def test_ssim_is_one_on_identical_images_and_matches_a_brute_force_loop():
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(3, 1, 12, 12, generator=generator) * 2 - 1
    y = (x + 0.3 * torch.randn(x.shape, generator=generator)).clamp(-1, 1)
    torch.testing.assert_close(ssim(x, x), torch.ones(3), atol=1e-5, rtol=0)  # float32 filtering
    expected = [brute_force_ssim((x[i, 0].double().numpy() + 1) / 2,
                                 (y[i, 0].double().numpy() + 1) / 2, window=7) for i in range(3)]
    # float32 convolutions against a float64 loop: agreement to ~1e-6, asserted at 1e-5.
    np.testing.assert_allclose(ssim(x, y).numpy(), expected, atol=1e-5)
    assert ssim(x, -x).max() < 0.5  # inverted images are structurally unlike


def test_ssim_window_fits_small_images():
    assert ssim_window(28, 28) == 7 and ssim_window(32, 32) == 7
    assert ssim_window(176, 176) == 11 and ssim_window(5, 5) == 5


# --- models --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, source_shape", [("srgan", (1, 7, 7)), ("pix2pix", (1, 28, 28))])
def test_paired_protocol_shapes(name, source_shape):
    model = make(name)
    assert isinstance(model, PairedModel)
    x = digits(6)
    source = model.degrade(x)
    assert source.shape == (6, *source_shape)
    for output in (model.translate(source, generator=torch.Generator().manual_seed(0)),
                   model.baseline(source)):
        assert output.shape == x.shape and output.min() >= -1 and output.max() <= 1
    if name == "srgan":
        torch.testing.assert_close(model.baseline(source), F.interpolate(
            source, size=(28, 28), mode="bicubic", align_corners=False).clamp(-1, 1))
    else:
        assert torch.equal(model.baseline(source), edge_map(x))


@pytest.mark.parametrize("name, loss, overrides", [
    ("srgan", "content", {"learning_rate": 1e-3}),  # the paper's 1e-4 needs more than 30 steps
    ("pix2pix", "l1", {"learning_rate": 2e-3}),  # likewise 2e-4
])
def test_training_on_one_batch_lowers_the_pixel_loss(name, loss, overrides):
    model = make(name, **overrides)
    model.train()
    batch = digits(16)
    history = [model.train_step(batch, step, CPU) for step in range(30)]
    assert all(math.isfinite(v) for losses in history for v in losses.values())
    first = np.mean([h[loss] for h in history[:3]])
    last = np.mean([h[loss] for h in history[-3:]])
    assert last < 0.5 * first, (first, last)


@pytest.mark.parametrize("name", PAIRED)
def test_sample_translates_remembered_training_images(name):
    model = make(name)
    with pytest.raises(GenbenchError, match="train at least one step"):
        model.sample(2)
    batch = digits(4)
    model.train_step(batch, 0, CPU)
    # The bank holds the batch, quantised to the 8-bit grid the images came from.
    torch.testing.assert_close(model.remembered(), batch, atol=1e-6, rtol=0)
    drawn = model.sample(6, generator=torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)
    order = torch.randperm(4, generator=generator)
    order = torch.cat([order, torch.randperm(4, generator=generator)])[:6]
    expected = model.translate(model.degrade(batch[order]), generator=generator)
    torch.testing.assert_close(drawn, expected)
    assert not model.can_sample  # sample-based metrics report n/a for paired models


def test_pix2pix_dropout_noise_follows_the_generator():
    model = make("pix2pix")
    model.train_step(digits(8), 0, CPU)
    source = model.degrade(digits(4))

    def translate(seed):
        return model.translate(source, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(translate(1), translate(1))
    assert (translate(1) - translate(2)).abs().max() > 1e-4
    quiet = make("pix2pix", test_time_dropout=False)
    quiet.load_state_dict(model.state_dict())
    assert torch.equal(quiet.translate(source, torch.Generator().manual_seed(1)),
                       quiet.translate(source, torch.Generator().manual_seed(2)))


def test_srgan_feature_content_loss_uses_the_shipped_classifier():
    model = make("srgan", content_loss="features")
    losses = model.train_step(digits(8), 0, CPU)
    assert all(math.isfinite(v) for v in losses.values())
    # The frozen classifier is not part of the model: not trained, not in checkpoints.
    assert not any("feature" in key for key in model.state_dict())
    assert model._features(digits(2)).shape == (2, 64, 14, 14)
    with pytest.raises(UsageError, match="content_loss=features uses the mnist classifier"):
        make("srgan", (3, 32, 32), content_loss="features")


# --- metrics through the evaluation layer ---------------------------------------------------------

def eval_context(model, n=8):
    settings = dataclasses.replace(eval_settings_for("smoke"), reconstruction_examples=n)
    return EvalContext("mnist", settings, "test", torch.device("cpu"), model=model,
                       allow_download=False)


@pytest.mark.parametrize("name", PAIRED)
def test_psnr_and_ssim_metrics_score_translations_of_the_test_split(name):
    model = make(name)
    model.train_step(digits(8), 0, CPU)
    model.eval()
    ctx = eval_context(model)
    result = METRICS.get("psnr").compute(ctx)
    structural = METRICS.get("ssim").compute(ctx)
    targets = to_model_range(load_images("mnist", "test", allow_download=False).images[:8])
    pairs = ctx.cache["paired"]
    assert torch.equal(pairs["target"], targets)
    assert torch.equal(pairs["source"], model.degrade(targets))
    # Translations are drawn with the evaluation seed's generator (offset 13).
    again = model.translate(model.degrade(targets), generator=ctx.generator(13))
    torch.testing.assert_close(pairs["output"], again)
    assert result["value"] == pytest.approx(float(psnr(again, targets).mean()), rel=1e-9)
    assert structural["value"] == pytest.approx(float(ssim(again, targets).double().mean()), rel=1e-6)
    baseline = model.baseline(model.degrade(targets))
    assert result["settings"]["baseline"] == pytest.approx(float(psnr(baseline, targets).mean()))
    assert result["num_samples"] == 8 and structural["settings"]["ssim"]["window"] == 7


def test_paired_metrics_are_not_applicable_to_other_models():
    ctx = eval_context(make("gan"))
    for metric in ("psnr", "ssim"):
        with pytest.raises(NotApplicable, match="not a paired image-to-image model"):
            METRICS.get(metric).compute(ctx)


def test_cli_run_writes_psnr_and_ssim(tmp_path):
    args = ["run", "--models", "srgan,pix2pix", "--dataset", "mnist", "--out", str(tmp_path),
            "--set", "steps=4", "--set", "log_every=2", "--set", "checkpoint_every=2",
            "--set", "sample_every=4", "--set", "batch_size=8", "--set", "base_width=4",
            "--limit", "32", "--no-progress", "--device", "cpu", "--no-report", "--no-download",
            "--metrics", "psnr,ssim,mmd"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for name in PAIRED:
        (run,) = tmp_path.glob(f"mnist/{name}/*/")
        metrics = json.loads((run / "metrics.json").read_text())["metrics"]
        for metric, unit in (("psnr", "dB"), ("ssim", "SSIM")):
            assert metrics[metric]["status"] == "ok" and metrics[metric]["unit"] == unit
            assert math.isfinite(metrics[metric]["value"])
            assert math.isfinite(metrics[metric]["settings"]["baseline"])
        assert metrics["mmd"]["status"] == "n/a"
        assert metrics["mmd"]["reason"] == "the model does not sample from a prior"
        assert (run / "translations.png").is_file() and (run / "samples.png").is_file()
