"""The conditional GAN family (cgan, acgan/adcgan) and InfoGAN: what the contract test cannot see."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from click.testing import CliRunner

from genbench.cli import main
from genbench.core.errors import UsageError
from genbench.evaluation import METRICS
from genbench.evaluation.context import EvalContext
from genbench.evaluation.registry import NotApplicable
from genbench.evaluation.settings import EvalSettings
from genbench.models import StepContext, get_model_class
from genbench.models.infogan import write_code_figure
from tests.conftest import tiny_config
from tests.test_cli import TINY_RUN

CPU = StepContext(torch.device("cpu"))
SHAPE = (1, 28, 28)


def make(name: str, image_shape=SHAPE, **overrides):
    torch.manual_seed(0)
    config = tiny_config(name).with_overrides(overrides)
    model = get_model_class(name)(config, image_shape)
    model.build_optimizers()
    return model


def toy_two_classes(n=16, seed=0):
    """Class 0: bright top half; class 1: bright bottom half; plus noise. ``[n, 1, 28, 28]``."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = torch.full((n, *SHAPE), -0.8)
    images[labels == 0, :, :14] = 0.8
    images[labels == 1, :, 14:] = 0.8
    images += 0.1 * torch.randn(images.shape, generator=generator)
    return images.clamp(-1, 1), labels


@pytest.mark.parametrize("name", ["cgan", "acgan"])
def test_labels_reach_the_generator(name):
    model = make(name)
    batch, labels = toy_two_classes()
    model.train_step(batch, 0, CPU, labels=labels)
    z = torch.randn(4, model.config.latent_dim, generator=torch.Generator().manual_seed(1))
    zeros, ones = torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)
    # Same z, different class: different images; same z and class: the same images.
    assert (model.generate(z, zeros) - model.generate(z, ones)).abs().max() > 1e-3
    assert torch.equal(model.generate(z, zeros), model.generate(z, zeros))
    # sample(): one seed gives one z whatever the labels, so only the class changes the images.
    first = model.sample(4, torch.Generator().manual_seed(2), labels=zeros)
    second = model.sample(4, torch.Generator().manual_seed(2), labels=ones)
    assert (first - second).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["cgan", "acgan"])
def test_sample_by_class_checks_labels(name):
    model = make(name)
    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 3, 9])
    assert model.sample(3, generator, labels=labels).shape == (3, *SHAPE)
    assert model.sample(3, generator).shape == (3, *SHAPE)  # uniform labels
    with pytest.raises(UsageError, match="one entry per image"):
        model.sample(3, generator, labels=torch.tensor([0, 1]))
    with pytest.raises(UsageError, match=r"labels must be in 0\.\.9.*num_classes"):
        model.sample(2, generator, labels=torch.tensor([0, 10]))
    per_class = model.per_class_samples(2, generator)
    assert sorted(per_class) == list(range(10))
    assert all(images.shape == (2, *SHAPE) for images in per_class.values())
    # A batch whose labels exceed num_classes fails with a message naming the fix.
    batch, _ = toy_two_classes(4)
    with pytest.raises(UsageError, match="num_classes"):
        model.train_step(batch, 0, CPU, labels=torch.tensor([0, 1, 2, 12]))


@pytest.mark.parametrize("loss", ["acgan", "adcgan"])
def test_acgan_class_head_learns_the_classes(loss):
    model = make("acgan", num_classes=2, loss=loss, learning_rate=1e-3)
    assert model.heads(torch.zeros(2, *SHAPE))[1].shape == (2, 2 if loss == "acgan" else 4)
    batch, labels = toy_two_classes()
    history = [model.train_step(batch, step, CPU, labels=labels) for step in range(12)]
    assert all(math.isfinite(v) for row in history for v in row.values())
    first, last = history[0]["class_real"], history[-1]["class_real"]
    # Chance is ln 2 (acgan) or ln 4 (adcgan, before the head separates real from fake); the
    # two classes differ in half of the pixels, so a dozen steps cut the loss several-fold.
    assert first > 0.5 and last < 0.5 * first, (first, last)
    assert history[-1]["class_accuracy"] == 1.0
    assert (model.classify(batch).argmax(dim=1) == labels).all()


def infogan_info_losses(info_weight: float, steps: int = 48):
    model = make("infogan", learning_rate=1e-3, info_weight=info_weight)
    batch, _ = toy_two_classes()
    return model, [model.train_step(batch, step, CPU)["info_loss"] for step in range(steps)]


def test_infogan_info_loss_decreases_and_codes_vary(tmp_path):
    model, info = infogan_info_losses(1.0)
    # Start: ln 10 (categorical) + 2 x (E[u^2]/2 + ln(2 pi)/2) = 2.30 + 2.17 nats for unit std.
    assert info[0] == pytest.approx(math.log(10) + 2 * (1 / 6 + 0.5 * math.log(2 * math.pi)), abs=0.5)
    # The information term is what makes the codes recoverable: with it the loss falls (by
    # 0.3-0.45 nats over seeds 0-4 in 48 steps), without it (same seed) it rises.
    first, last = sum(info[:8]) / 8, sum(info[-8:]) / 8
    _, without = infogan_info_losses(0.0)
    assert last < first - 0.2 and last < sum(without[-8:]) / 8 - 0.2, (first, last, without[-8:])
    assert model.code_names() == ["categorical", "continuous_0", "continuous_1"]
    generator = torch.Generator().manual_seed(0)
    categorical = model.vary_code("categorical", 4, generator, rows=3)
    assert categorical.shape == (3 * 10, *SHAPE)
    continuous = model.vary_code("continuous_1", 4, generator, rows=3)
    assert continuous.shape == (3 * 4, *SHAPE)
    # Along a row only the code changes: neighbours differ; rows use different noise.
    assert (continuous[0] - continuous[1]).abs().max() > 0
    assert (continuous[0] - continuous[4]).abs().max() > 0
    with pytest.raises(UsageError, match="unknown code"):
        model.vary_code("continuous_2", 4)
    paths = write_code_figure(model, tmp_path, steps=4)
    assert [p.name for p in paths] == ["infogan_categorical.png", "infogan_continuous_0.png",
                                       "infogan_continuous_1.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)


def test_infogan_learned_std_trains():
    model = make("infogan", continuous_std="learned")
    losses = model.train_step(toy_two_classes()[0], 0, CPU)
    assert math.isfinite(losses["info_loss"]) and losses["info_continuous"] != 0


SETTINGS = EvalSettings(num_generated=20, ms_ssim_pairs=8, is_samples=2, is_examples=2,
                        ais_examples=2, ais_chains=2, ais_steps=2, sigma_examples=2)


def context(model):
    return EvalContext("mnist", SETTINGS, "test", torch.device("cpu"), model=model,
                       image_size=28, allow_download=False)


class TwoClassStub(torch.nn.Module):
    """A 'conditional model' whose class 0 is one image repeated and class 1 is noise."""

    conditional = True
    image_shape = SHAPE

    class config:  # noqa: N801 - mimics a model config
        num_classes = 2

    def per_class_samples(self, n, generator):
        same = torch.rand(1, *SHAPE, generator=generator).expand(n, -1, -1, -1) * 2 - 1
        return {0: same, 1: torch.rand(n, *SHAPE, generator=generator) * 2 - 1}


def test_ms_ssim_per_class_metric():
    compute = METRICS.get("ms_ssim_per_class").compute
    # Known answers: identical images have MS-SSIM 1; independent uniform noise is near 0.
    stub = compute(context(TwoClassStub()))
    assert stub["settings"]["per_class"]["0"] == pytest.approx(1.0, abs=1e-5)
    assert abs(stub["settings"]["per_class"]["1"]) < 0.1
    assert stub["value"] == pytest.approx((1 + stub["settings"]["per_class"]["1"]) / 2)
    assert stub["num_samples"] == 20 and stub["settings"]["num_per_class"] == 10

    model = make("acgan")
    result = compute(context(model))
    per_class = result["settings"]["per_class"]
    assert sorted(per_class, key=int) == [str(k) for k in range(10)]
    assert result["value"] == pytest.approx(sum(per_class.values()) / 10)
    assert -1 <= result["value"] <= 1 and result["settings"]["real_reference"] is not None
    with pytest.raises(NotApplicable, match="not a class-conditional model"):
        compute(context(make("gan")))


def test_run_trains_each_model_through_the_harness(tmp_path):
    result = CliRunner().invoke(main, ["run", "--models", "cgan,acgan,infogan", "--out", str(tmp_path),
                                       "--no-eval", *TINY_RUN], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for name, column in (("cgan", "d_fake"), ("acgan", "class_accuracy"), ("infogan", "info_loss")):
        (losses,) = tmp_path.glob(f"mnist/{name}/*/losses.csv")
        rows = list(csv.DictReader(losses.open()))
        assert [row["step"] for row in rows] == ["2", "4"] and math.isfinite(float(rows[-1][column]))
    # InfoGAN's code figures land in its run folder when training ends, for the report.
    (figures,) = tmp_path.glob("mnist/infogan/*/figures")
    assert sorted(p.name for p in figures.iterdir()) == [
        "infogan_categorical.png", "infogan_continuous_0.png", "infogan_continuous_1.png"]
    assert not list(tmp_path.glob("mnist/cgan/*/figures"))
