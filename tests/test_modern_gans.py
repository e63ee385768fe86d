"""SAGAN, BigGAN, LOGAN and U-Net GAN: their parts against known answers, and a tiny CLI run."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.nn.utils import parametrize

from genbench.cli import main
from genbench.core.errors import UsageError
from genbench.models import StepContext, get_model_class
from genbench.models.latent_optimisation import optimise_latents
from genbench.models.sagan import (
    SelfAttention,
    hinge_d_loss,
    hinge_g_loss,
    orthogonal_penalty,
    truncated_normal,
)
from genbench.models.unet_gan import cutmix_masks
from tests.conftest import tiny_config

CPU = StepContext(torch.device("cpu"))
NEW_MODELS = ["sagan", "biggan", "logan", "unet-gan"]
# As in tests/test_cli.py.
TINY_RUN = ["--set", "steps=4", "--set", "log_every=2", "--set", "checkpoint_every=2",
            "--set", "sample_every=4", "--set", "batch_size=8", "--set", "base_width=4",
            "--set", "latent_dim=4", "--limit", "32", "--no-progress", "--device", "cpu"]


def make(name, image_shape=(1, 28, 28), **overrides):
    torch.manual_seed(0)
    config = tiny_config(name).with_overrides(overrides)
    model = get_model_class(name)(config, image_shape)
    model.build_optimizers()
    return model


# --- SAGAN ------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", [4, 7, 8])
def test_self_attention_starts_as_the_identity_and_then_sees_every_position(side):
    torch.manual_seed(0)
    block = SelfAttention(16)
    x = torch.randn(2, 16, side, side)
    assert block.gamma.item() == 0
    assert torch.equal(block(x), x)
    with torch.no_grad():
        block.gamma.fill_(1.0)
    # Non-local: changing the top-left pixel changes the output at the bottom-right one.
    y = x.clone()
    y[:, :, 0, 0] += 5
    assert not torch.allclose(block(x)[:, :, -1, -1], block(y)[:, :, -1, -1])


@pytest.mark.parametrize("name", NEW_MODELS)
def test_spectral_norm_on_every_conv_and_linear_weight(name):
    model = make(name)
    for network in (model.generator, model.discriminator):
        layers = [m for m in network.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
        assert layers
        for layer in layers:
            assert parametrize.is_parametrized(layer, "weight"), layer
            assert type(layer.parametrizations.weight[0]).__name__ == "_SpectralNorm"


def test_hinge_losses_on_known_logits():
    real = torch.tensor([2.0, 0.5, -1.0])  # max(0, 1 - x): 0, 0.5, 2
    fake = torch.tensor([-2.0, 0.0, 1.0])  # max(0, 1 + x): 0, 1, 2
    assert hinge_d_loss(real, fake).item() == pytest.approx(2.5 / 3 + 1.0)
    assert hinge_g_loss(fake).item() == pytest.approx(1 / 3)


def test_orthogonal_penalty_is_zero_for_orthogonal_weights_and_exact_otherwise():
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    assert orthogonal_penalty(q.float()).item() < 1e-10  # float32 rounding of a 6x6 Gram matrix
    # Distinct filters' norms are free: a scaled orthogonal conv weight is still penalty-free.
    assert orthogonal_penalty((3 * q).float().view(6, 6, 1, 1)).item() < 1e-8
    # W W^T = [[2, 1], [1, 1]]: off-diagonal 1 and 1 -> 2.
    assert orthogonal_penalty(torch.tensor([[1.0, 1.0], [0.0, 1.0]])).item() == pytest.approx(2.0)
    # Tall weights use ||W^T W||^2 - sum ||w_i||^4; it equals the direct Gram computation.
    tall = torch.randn(50, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    gram = tall @ tall.T
    direct = (gram - torch.diag(torch.diagonal(gram))).pow(2).sum().item()
    assert orthogonal_penalty(tall.float()).item() == pytest.approx(direct, rel=1e-4)  # float32 sums


def test_orthogonal_regulariser_enters_the_generator_loss():
    model = make("biggan")
    losses = model.train_step(torch.rand(8, 1, 28, 28) * 2 - 1, 0, CPU)
    assert losses["orthogonal"] > 0
    assert "orthogonal" not in make("sagan").train_step(torch.rand(8, 1, 28, 28) * 2 - 1, 0, CPU)


def test_truncation_resamples_inside_the_threshold():
    z = truncated_normal((4000, 8), 0.5, torch.Generator().manual_seed(0))
    assert z.abs().max() <= 0.5
    # Resampling (not clamping) gives N(0, 1) conditioned on |z| <= t: variance
    # 1 - 2 t phi(t) / (2 Phi(t) - 1) = 0.0806 for t = 0.5; standard error of the std ~0.001.
    t = 0.5
    phi, mass = math.exp(-t * t / 2) / math.sqrt(2 * math.pi), math.erf(t / math.sqrt(2))
    assert z.std().item() == pytest.approx(math.sqrt(1 - 2 * t * phi / mass), abs=0.01)
    model = make("sagan", truncation=0.5)
    assert model.latents(64, torch.Generator().manual_seed(1)).abs().max() <= 0.5
    first = model.sample(3, torch.Generator().manual_seed(2))
    assert torch.equal(first, model.sample(3, torch.Generator().manual_seed(2)))
    with pytest.raises(UsageError, match="truncation must be >= 0.01"):
        make("sagan", truncation=0.001)


# --- BigGAN -----------------------------------------------------------------------------------


def test_biggan_samples_depend_on_labels():
    model = make("biggan")
    model.train_step(torch.rand(8, 1, 28, 28) * 2 - 1, 0, CPU, labels=torch.arange(8) % 10)
    zeros, ones = torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)
    a = model.sample(4, torch.Generator().manual_seed(3), labels=zeros)
    b = model.sample(4, torch.Generator().manual_seed(3), labels=ones)
    assert not torch.allclose(a, b)
    assert torch.equal(a, model.sample(4, torch.Generator().manual_seed(3), labels=zeros))
    # The projection discriminator's score depends on the label too.
    with torch.no_grad():
        assert not torch.allclose(model.discriminator(a, zeros), model.discriminator(a, ones))
    with pytest.raises(UsageError, match="labels must be in 0..9"):
        model.sample(2, labels=torch.tensor([0, 10]))
    per_class = model.per_class_samples(2, torch.Generator().manual_seed(3))
    assert sorted(per_class) == list(range(10)) and per_class[0].shape == (2, 1, 28, 28)
    torch.testing.assert_close(per_class[0], a[:2])  # same seed, same z, class 0


def test_conditional_bn_belongs_to_biggan():
    with pytest.raises(UsageError, match="use the model 'biggan'"):
        make("sagan", conditional_bn=True)
    with pytest.raises(UsageError, match="conditional_bn must be true"):
        make("biggan", conditional_bn=False)


# --- LOGAN ------------------------------------------------------------------------------------


def quadratic_score(c):
    return lambda z: -(z - c).pow(2).sum(1)  # [B]; gradient -2 (z - c)


def test_optimise_latents_steps_on_known_numbers():
    c = torch.tensor([1.0, 0.0])
    z = torch.tensor([[0.0, 0.0], [1.0, 2.0]])  # gradients (2, 0) and (0, -4)
    gd = optimise_latents(z, quadratic_score(c), step_size=0.1, method="gd")
    torch.testing.assert_close(gd, torch.tensor([[0.2, 0.0], [1.0, 1.6]]))
    # ngd: alpha g / (beta + ||g||^2) per row: 0.9 (2, 0) / 9 and 0.9 (0, -4) / 21.
    ngd = optimise_latents(z, quadratic_score(c), step_size=0.9, method="ngd", beta=5.0)
    torch.testing.assert_close(ngd, torch.tensor([[0.2, 0.0], [1.0, 2 - 3.6 / 21]]))
    score = quadratic_score(c)
    assert (score(ngd) > score(z)).all() and (score(gd) > score(z)).all()
    assert optimise_latents(z, quadratic_score(c), 1.0, "gd", clip=0.5).abs().max() <= 0.5
    with pytest.raises(UsageError, match="'gd' or 'ngd'"):
        optimise_latents(z, quadratic_score(c), 0.1, method="adam")


def test_optimise_latents_second_order_terms_reach_the_parameters():
    c = nn.Parameter(torch.tensor([1.0, 0.0]))
    z = torch.zeros(3, 2)
    first = optimise_latents(z, quadratic_score(c), step_size=0.1, method="gd")
    assert not first.requires_grad and c.grad is None  # no parameter gradients touched
    second = optimise_latents(z, quadratic_score(c), step_size=0.1, method="gd", second_order=True)
    second.sum().backward()
    # z' = z + 2 alpha (c - z): dz'/dc = 2 alpha I per row; summed over 3 rows: 0.6 each.
    torch.testing.assert_close(c.grad, torch.tensor([0.6, 0.6]))


@pytest.mark.parametrize("method, second_order", [("gd", False), ("ngd", True)])
def test_logan_moves_latents_each_step(method, second_order):
    model = make("logan", latent_method=method, latent_second_order=second_order)
    losses = model.train_step(torch.rand(8, 1, 28, 28) * 2 - 1, 0, CPU)
    assert losses["latent_step"] > 0 and all(math.isfinite(v) for v in losses.values())
    with pytest.raises(UsageError, match="latent_beta must be > 0"):
        make("logan", latent_beta=0.0)


# The score each model's latent step raises, on a copy of the model (labels: int64 [8]).
LATENT_SCORES = {
    "gan": lambda m, labels: lambda z: m.discriminator(m.generator(z)),
    "wgan": lambda m, labels: lambda z: m.critic(m.generator(z)),
    "sagan": lambda m, labels: lambda z: m.discriminator(m.generator(z)),
    "unet-gan": lambda m, labels: lambda z: (  # image logit + mean pixel logit
        lambda image, pixels: image.flatten(1).sum(1) + pixels.flatten(1).mean(1))(
            *m.discriminator(m.generator(z))),
    "biggan": lambda m, labels: lambda z: m.discriminator(m.generator(z, labels), labels),
    "cgan": lambda m, labels: lambda z: m.discriminator(m.generator(z, labels), labels),
    "acgan": lambda m, labels: lambda z: m.discriminator(m.generator(z, labels))[:, :1],
}


@pytest.mark.parametrize("name", list(LATENT_SCORES))
@pytest.mark.parametrize("method", ["gd", "ngd"])
def test_latent_optimisation_option_feeds_the_moved_latents_to_the_generator(name, method):
    model = make(name, latent_method=method, latent_step_size=0.5)
    batch = torch.rand(8, 1, 28, 28) * 2 - 1
    labels = torch.arange(8) % 10
    conditional = name in ("biggan", "cgan", "acgan")
    # Expected z': the same z (same seed), moved by optimise_latents on a copy of the model
    # before the step (the step changes D).
    copy = make(name, latent_method=method, latent_step_size=0.5)
    copy.load_state_dict(model.state_dict())
    torch.manual_seed(7)
    z = torch.randn(8, model.config.latent_dim)
    expected = optimise_latents(z, LATENT_SCORES[name](copy, labels), 0.5, method, 5.0)
    seen = []
    model.generator.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    torch.manual_seed(7)
    model.train_step(batch, 0, CPU, labels) if conditional else model.train_step(batch, 0, CPU)
    # Calls: the score inside the latent step (on z), then the fakes (on z').
    torch.testing.assert_close(seen[0], z)
    torch.testing.assert_close(seen[1], expected)
    assert not torch.equal(seen[1], z)


def test_latent_optimisation_off_by_default_and_validated():
    model = make("gan")
    batch = torch.rand(8, 1, 28, 28) * 2 - 1
    seen = []
    model.generator.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    torch.manual_seed(7)
    z = torch.randn(8, model.config.latent_dim)
    torch.manual_seed(7)
    model.train_step(batch, 0, CPU)
    torch.testing.assert_close(seen[0], z)  # one generator call, on z itself
    assert len(seen) == 1
    with pytest.raises(UsageError, match="latent_step_size must be > 0"):
        make("sagan", latent_method="ngd", latent_step_size=0.0)
    with pytest.raises(UsageError, match="latent_method"):
        make("gan", latent_method="adam")
    with pytest.raises(UsageError, match="latent_method"):
        make("logan", latent_method="off")  # logan is latent optimisation: always on
    with pytest.raises(UsageError, match="stackgan has no latent optimisation"):
        make("stackgan", latent_method="ngd")


def test_options_added_later_stay_out_of_the_run_id_at_their_default():
    import json
    from pathlib import Path

    from genbench.experiments.plan import build_specs
    from genbench.training import RunSpec

    # Committed runs from before latent_method existed: a fresh spec with the option at its
    # default gets their folder name, so `genbench run` finds them instead of training again.
    for model, folder in [("gan", "standard-seed0-a638f08bac"), ("sagan", "standard-seed0-4dece8a0be"),
                          ("biggan", "standard-seed0-0d894fb36a"),
                          ("logan", "standard-seed0-697590e40d"), ("wgan", "standard-seed0-262adc2ffc"),
                          ("cgan", "standard-seed0-5f2e34eadc"), ("acgan", "standard-seed0-5c114444cf"),
                          ("stackgan", "standard-seed0-3f59ba3606"),
                          ("unet-gan", "standard-seed0-d8efca6fde")]:
        [spec] = build_specs([model], "mnist", "standard", [0], {})
        assert spec.model_config["latent_method"] in ("off", "ngd")  # saved in config.json
        assert spec.run_id == folder, model
    [default] = build_specs(["gan"], "mnist", "standard", [0], {})
    [moved] = build_specs(["gan"], "mnist", "standard", [0], {"latent_method": "ngd"})
    [stepped] = build_specs(["gan"], "mnist", "standard", [0], {"latent_step_size": "0.5"})
    assert len({default.run_id, moved.run_id, stepped.run_id}) == 3
    saved = json.loads((Path(__file__).parents[1] / "results/mnist/gan/standard-seed0-a638f08bac"
                        / "config.json").read_text())
    assert "latent_method" not in saved["model_config"]
    assert RunSpec.from_dict(saved).run_id == default.run_id


# --- U-Net GAN --------------------------------------------------------------------------------


@pytest.mark.parametrize("image_shape", [(1, 28, 28), (3, 32, 32), (1, 30, 30), (3, 9, 9)])
def test_unet_discriminator_decides_per_image_and_per_pixel(image_shape):
    model = make("unet-gan", image_shape)
    image_logit, pixel_logits = model.discriminator(torch.rand(2, *image_shape))
    assert image_logit.shape == (2, 1)
    assert pixel_logits.shape == (2, 1, *image_shape[1:])


def test_cutmix_masks_are_boxes_of_real_and_fake():
    masks = cutmix_masks(64, 28, 28, torch.Generator().manual_seed(0))
    assert masks.shape == (64, 1, 28, 28) and set(masks.unique().tolist()) <= {0.0, 1.0}
    real_fraction = masks.mean((1, 2, 3))
    assert real_fraction.min() < 0.5 < real_fraction.max()
    assert torch.equal(masks, cutmix_masks(64, 28, 28, torch.Generator().manual_seed(0)))


class PixelwiseD(nn.Module):
    """A stand-in U-Net discriminator whose decoder is ``pixel_map`` applied to the image."""

    def __init__(self, pixel_map):
        super().__init__()
        self.pixel_map = pixel_map

    def forward(self, x):
        return x.mean((1, 2, 3))[:, None], self.pixel_map(x)


def test_cutmix_consistency_vanishes_when_the_decoder_commutes_with_mixing():
    model = make("unet-gan", (3, 16, 16))
    generator = torch.Generator().manual_seed(0)
    real, fake = torch.rand(4, 3, 16, 16, generator=generator), torch.rand(4, 3, 16, 16, generator=generator)
    mask = cutmix_masks(4, 16, 16, generator)
    torch.manual_seed(0)
    model.discriminator = PixelwiseD(nn.Conv2d(3, 1, 1))  # per-pixel affine: mixing commutes
    with torch.no_grad():
        losses = model.discriminator_losses(real, fake, mask)
    assert losses["consistency"].item() < 1e-12  # float32 rounding only
    model.discriminator = PixelwiseD(nn.Sequential(nn.Conv2d(3, 1, 3, padding=1), nn.Tanh()))
    with torch.no_grad():
        assert model.discriminator_losses(real, fake, mask)["consistency"].item() > 1e-4
        assert "consistency" not in model.discriminator_losses(real, fake)


def test_unet_gan_mixes_with_the_configured_probability():
    model = make("unet-gan", cutmix_probability=1.0)
    assert "consistency" in model.train_step(torch.rand(8, 1, 28, 28) * 2 - 1, 0, CPU)
    model = make("unet-gan", cutmix_probability=0.0)
    assert "consistency" not in model.train_step(torch.rand(8, 1, 28, 28) * 2 - 1, 0, CPU)
    assert make("unet-gan", cutmix_warmup=10).cutmix_chance(5) == pytest.approx(0.25)


# --- the harness ------------------------------------------------------------------------------


def test_new_gans_train_through_the_cli(tmp_path):
    result = CliRunner().invoke(main, ["run", "--models", ",".join(NEW_MODELS), "--dataset", "mnist",
                                       "--out", str(tmp_path), "--no-eval", *TINY_RUN],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for name in NEW_MODELS:
        (losses,) = tmp_path.glob(f"mnist/{name}/*/losses.csv")
        rows = list(csv.DictReader(losses.open()))
        assert [row["step"] for row in rows] == ["2", "4"]
        assert all(math.isfinite(float(row["d_loss"])) for row in rows)
