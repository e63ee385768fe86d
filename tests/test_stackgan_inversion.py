"""stackgan (two stages, conditioning augmentation) and deepsim-inversion (inverting the suite's
classifier): what the model contract test cannot see."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner
from torch import distributions as D

from genbench.cli import main
from genbench.core.errors import UsageError
from genbench.features.registry import load_classifier
from genbench.models import StepContext, get_model_class
from genbench.models.deepsim_inversion import LAYERS
from genbench.models.stackgan import conditioning_kl
from tests.conftest import tiny_config
from tests.test_cli import TINY_RUN

CPU = StepContext(torch.device("cpu"))
SHAPE = (1, 28, 28)
# deepsim-inversion has no latent_dim (its code is the classifier's features): run alone, it
# would refuse the key.
NO_LATENT_TINY_RUN = [arg for i, arg in enumerate(TINY_RUN)
                      if "latent_dim" not in arg and not (arg == "--set" and "latent_dim" in TINY_RUN[i + 1])]


def make(name: str, image_shape=SHAPE, **overrides):
    torch.manual_seed(0)
    model = get_model_class(name)(tiny_config(name).with_overrides(overrides), image_shape)
    model.build_optimizers()
    return model


def images(n=8, image_shape=SHAPE, seed=1):
    return torch.rand(n, *image_shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# --- stackgan ------------------------------------------------------------------------------------

@pytest.mark.parametrize("image_shape", [SHAPE, (3, 32, 32)])
def test_stage_one_draws_half_the_side_and_stage_two_refines_it(image_shape):
    model = make("stackgan", image_shape)
    model.train_step(images(8, image_shape), 0, CPU, labels=torch.arange(8) % 10)
    channels, size, _ = image_shape
    coarse, image = model.sample_stages(5, torch.Generator().manual_seed(3))
    assert coarse.shape == (5, channels, size // 2, size // 2)  # 14x14 for MNIST
    assert image.shape == (5, *image_shape)  # 28x28
    for x in (coarse, image):
        assert x.min() >= -1 and x.max() <= 1 and torch.isfinite(x).all()
    # sample() is the second stage of the same draw.
    assert torch.equal(model.sample(5, torch.Generator().manual_seed(3)), image)
    # The Stage-II image is G2 of that coarse image: redo the draw by hand in its documented
    # order (z, labels, eps1, eps2) through the two stages.
    generator = torch.Generator().manual_seed(3)
    z = torch.randn(5, model.config.latent_dim, generator=generator)
    labels = torch.randint(model.config.num_classes, (5,), generator=generator)
    eps1 = torch.randn(5, model.config.condition_dim, generator=generator)
    eps2 = torch.randn(5, model.config.condition_dim, generator=generator)
    model.eval()
    with torch.no_grad():
        mean1, log_var1 = model.stage1.augment.to_gaussian(torch.eye(10)[labels]).chunk(2, dim=1)
        by_hand_coarse = model.stage1.generator(z, mean1 + (0.5 * log_var1).exp() * eps1)
        mean2, log_var2 = model.stage2.augment.to_gaussian(torch.eye(10)[labels]).chunk(2, dim=1)
        by_hand = model.stage2.generator(by_hand_coarse, mean2 + (0.5 * log_var2).exp() * eps2)
    torch.testing.assert_close(coarse, by_hand_coarse, rtol=0, atol=1e-6)  # same ops, same order
    torch.testing.assert_close(image, by_hand, rtol=0, atol=1e-6)


def test_samples_by_class_use_the_given_labels_in_both_stages():
    model = make("stackgan")
    model.train_step(images(), 0, CPU, labels=torch.arange(8) % 10)
    seen = {}
    for name in ("stage1", "stage2"):
        getattr(model, name).augment.register_forward_pre_hook(
            lambda module, args, name=name: seen.__setitem__(name, args[0].clone()))
    labels = torch.tensor([7, 7, 2, 0, 9])
    first = model.sample(5, torch.Generator().manual_seed(4), labels=labels)
    assert torch.equal(seen["stage1"], labels) and torch.equal(seen["stage2"], labels)
    # One seed gives one z and eps whatever the labels: only the class changes the images.
    again = model.sample(5, torch.Generator().manual_seed(4), labels=labels)
    other = model.sample(5, torch.Generator().manual_seed(4), labels=(labels + 1) % 10)
    assert torch.equal(first, again)
    assert (first - other).flatten(1).abs().amax(1).min() > 1e-4  # every image changed
    per_class = model.per_class_samples(2, torch.Generator().manual_seed(5))
    assert sorted(per_class) == list(range(10))
    assert seen["stage2"].tolist() == [9, 9]  # the last class drawn
    assert all(x.shape == (2, *SHAPE) for x in per_class.values())
    with pytest.raises(UsageError, match=r"labels must be in 0\.\.9"):
        model.sample(2, labels=torch.tensor([0, 10]))


def test_conditioning_kl_matches_its_closed_form_and_enters_the_training_losses():
    # mu = (1, 0), sigma = (2, 0.5): KL = 0.5 * [(1 + 4 - 1 - ln 4) + (0 + 0.25 - 1 - ln 0.25)]
    # = 0.5 * (4 - ln 4 - 0.75 + ln 4) = 1.625 nats exactly.
    mean = torch.tensor([[1.0, 0.0]])
    log_var = torch.log(torch.tensor([[4.0, 0.25]]))
    assert conditioning_kl(mean, log_var).item() == pytest.approx(1.625, abs=1e-6)  # float32 logs
    reference = D.kl_divergence(D.Independent(D.Normal(mean, log_var.mul(0.5).exp()), 1),
                                D.Independent(D.Normal(torch.zeros(2), torch.ones(2)), 1))
    assert conditioning_kl(mean, log_var).item() == pytest.approx(reference.item(), abs=1e-6)

    model = make("stackgan", condition_dim=2)
    for stage in (model.stage1, model.stage2):  # every class gets N(mu, sigma^2)
        with torch.no_grad():
            stage.augment.to_gaussian.weight.zero_()
            stage.augment.to_gaussian.bias.copy_(torch.cat([mean[0], log_var[0]]))
    c, got_mean, got_log_var = model.stage1.augment(torch.full((200_000,), 3))
    torch.testing.assert_close(got_mean[0], mean[0])
    # Reparameterised c ~ N(mu, sigma^2): 200k draws put the sample mean within 5 standard
    # errors (sigma / sqrt(n) <= 0.0045) and the sample std within 1% of sigma.
    assert torch.allclose(c.mean(0), mean[0], atol=5 * 2 / math.sqrt(200_000))
    assert torch.allclose(c.std(0), torch.tensor([2.0, 0.5]), rtol=0.01)
    losses = model.train_step(images(), 0, CPU, labels=torch.arange(8))
    assert losses["kl1"] == pytest.approx(1.625, abs=1e-5)
    assert losses["kl2"] == pytest.approx(1.625, abs=1e-5)


def test_the_paper_schedule_trains_stage_one_then_stage_two_alone():
    model = make("stackgan", stage2_start=2)
    x, labels = images(), torch.arange(8)

    def weights():
        return {name: torch.cat([p.detach().flatten().clone() for p in getattr(model, name).parameters()])
                for name in ("stage1", "stage2")}

    start = weights()
    early = model.train_step(x, 0, CPU, labels=labels)
    after_one = weights()
    assert set(early) == {"d1_loss", "g1_loss", "kl1", "d1_real", "d1_fake"}
    assert not torch.equal(after_one["stage1"], start["stage1"])
    assert torch.equal(after_one["stage2"], start["stage2"])
    stage1_buffers = {k: v.clone() for k, v in model.stage1.state_dict().items()}
    late = model.train_step(x, 2, CPU, labels=labels)
    assert set(late) == {"d2_loss", "g2_loss", "kl2", "d2_real", "d2_fake"}
    # Stage I is fixed: weights and batch-norm statistics unchanged.
    assert all(torch.equal(v, model.stage1.state_dict()[k]) for k, v in stage1_buffers.items())
    assert not torch.equal(weights()["stage2"], after_one["stage2"])
    assert model.stage1.training  # back in the model's mode
    with pytest.raises(UsageError, match="at least 16 px"):
        get_model_class("stackgan")(tiny_config("stackgan"), (1, 12, 12))


@pytest.mark.parametrize("matching_aware", [True, False])
def test_matching_aware_loss_counts_real_images_with_wrong_labels_as_fake(matching_aware):
    # Discriminators whose logits are all 0: every BCE term is ln 2, so the discriminator loss is
    # ln 2 + (ln 2 + ln 2) / 2 matching-aware and ln 2 + ln 2 plain: 2 ln 2 either way; what
    # differs is the third call, on real images with a wrong label.
    model = make("stackgan", matching_aware=matching_aware)
    calls = []
    for stage in (model.stage1, model.stage2):
        with torch.no_grad():
            stage.discriminator.head.weight.zero_()
            stage.discriminator.head.bias.zero_()
        stage.discriminator.register_forward_pre_hook(
            lambda m, args: calls.append((args[0].shape[-1], args[1].clone())))
    x, labels = images(), torch.arange(8)
    losses = model.train_step(x, 0, CPU, labels=labels)
    assert losses["d1_loss"] == pytest.approx(2 * math.log(2), abs=1e-6)
    assert losses["d2_loss"] == pytest.approx(2 * math.log(2), abs=1e-6)
    # Per stage: real (y), fake (y), [real with y' != y], then the generator's step (y).
    per_stage = 4 if matching_aware else 3
    assert [side for side, _ in calls] == [14] * per_stage + [28] * per_stage
    for stage_calls in (calls[:per_stage], calls[per_stage:]):
        used = [y for _, y in stage_calls]
        if matching_aware:
            wrong = used.pop(2)
            assert (wrong != labels).all() and wrong.min() >= 0 and wrong.max() <= 9
        assert all(torch.equal(y, labels) for y in used)


def test_coarse_skip_hands_stage_two_the_upsampled_coarse_image():
    model = make("stackgan")
    coarse = images(4, (1, 14, 14))
    conv = model.stage2.generator.out[0]  # the last 3x3 conv; its last input channel is the skip
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[0, -1, 1, 1] = 1.0  # centre tap of the skip channel
    model.eval()
    with torch.no_grad():
        image = model.stage2.generator(coarse, torch.randn(4, model.config.condition_dim))
    expected = torch.tanh(torch.nn.functional.interpolate(coarse, size=(28, 28), mode="bilinear"))
    torch.testing.assert_close(image, expected, rtol=0, atol=1e-6)
    plain = make("stackgan", coarse_skip=False).stage2.generator.out[0]
    assert plain.in_channels == conv.in_channels - 1


def test_class_gaussians_start_apart():
    augment = make("stackgan").stage1.augment.to_gaussian
    mean_weight, log_var_weight = augment.weight.detach().chunk(2, dim=0)
    assert torch.equal(log_var_weight, torch.zeros_like(log_var_weight))
    assert torch.equal(augment.bias.detach(), torch.zeros_like(augment.bias))
    # 16 x 10 standard normal means: their variance is 1 within a 5-sigma sampling margin
    # (the sample variance of 160 normals has standard deviation sqrt(2/159) = 0.11).
    assert abs(mean_weight.var().item() - 1) < 5 * math.sqrt(2 / 159)


@pytest.mark.slow
def test_stackgan_learns_the_classes_on_mnist_at_the_smoke_budget():
    """300 steps of 64 MNIST images: the suite classifier recognises the requested class in far
    more than the 10% of chance (57% measured, cgan 44%)."""
    from genbench.data import load_images, to_model_range

    data = load_images("mnist", "train", None, None, allow_download=False)
    model = make("stackgan", base_width=32, latent_dim=64)
    generator = torch.Generator().manual_seed(0)
    for step in range(300):
        index = torch.randint(len(data.images), (64,), generator=generator)
        model.train_step(to_model_range(data.images[index]), step, CPU, labels=data.labels[index].long())
    labels = torch.arange(10).repeat_interleave(8)
    samples = model.sample(80, torch.Generator().manual_seed(1), labels=labels)
    classifier, _ = load_classifier("mnist", allow_download=False, retrain=False)
    with torch.no_grad():
        accuracy = (classifier(samples).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.3, accuracy


# --- deepsim-inversion ---------------------------------------------------------------------------

def module_outputs(classifier, x):
    """Each layer's activation, read by forward hooks on the classifier's own modules."""
    targets = {"conv1": classifier.trunk[3], "conv2": classifier.trunk[7],
               "pool": classifier.trunk[8], "fc": classifier.hidden}
    seen = {}
    hooks = [module.register_forward_hook(lambda m, i, out, layer=layer: seen.__setitem__(layer, out))
             for layer, module in targets.items()]
    with torch.no_grad():
        seen["logits"] = classifier(x)
        features = classifier.features(x)
    for hook in hooks:
        hook.remove()
    return seen, features


def test_truncated_classifier_features_are_the_classifiers_own_activations():
    classifier, info = load_classifier("mnist", allow_download=False, retrain=False)
    x = images(6)
    expected, features = module_outputs(classifier, x)
    assert sorted(expected) == sorted(LAYERS)
    shapes = {"conv1": (32, 14, 14), "conv2": (64, 7, 7), "pool": (64, 3, 3), "fc": (128,),
              "logits": (10,)}
    for layer in LAYERS:
        model = make("deepsim-inversion", layer=layer)
        with torch.no_grad():
            got = model.encode(x)
        assert got.shape == (6, *shapes[layer])
        assert torch.equal(got, expected[layer]), layer  # the same weights and operations
    assert torch.equal(expected["fc"], features)  # the FID feature layer is "fc"
    # The frozen copy is the shipped classifier, and stays in eval mode while the model trains.
    model = make("deepsim-inversion")
    model.train()
    assert not model.classifier.training and model.generator.training
    assert all(not p.requires_grad for p in model.classifier.parameters())
    assert info["source"] == "shipped"


@pytest.mark.parametrize("image_shape", [SHAPE, (3, 32, 32)])
@pytest.mark.parametrize("loss", ["deepsim", "image"])
def test_reconstruct_is_g_of_e_and_sample_shows_the_kept_images(image_shape, loss):
    model = make("deepsim-inversion", image_shape, loss=loss, kept_images=4)
    x = images(8, image_shape)
    classifier_before = {k: v.clone() for k, v in model.classifier.state_dict().items()}
    losses = model.train_step(x, 0, CPU)
    expected = ({"loss", "feature", "adversarial", "image", "d_loss", "d_paused"} if loss == "deepsim"
                else {"loss", "image"})
    assert set(losses) == expected and all(math.isfinite(v) for v in losses.values())
    assert (model.discriminator is None) == (loss == "image")
    # The encoder is fixed: neither weights nor batch-norm statistics move.
    assert all(torch.equal(v, model.classifier.state_dict()[k]) for k, v in classifier_before.items())
    reconstruction = model.reconstruct(x)
    assert reconstruction.shape == (8, *image_shape)
    assert reconstruction.min() >= -1 and reconstruction.max() <= 1
    model.eval()
    with torch.no_grad():
        by_hand = model.generator(model.encode(x)).clamp(-1, 1)
    assert torch.equal(reconstruction, by_hand)
    # sample(n): the reconstructions of the first kept_images training images, repeated.
    assert torch.equal(model.kept, x[:4])
    samples = model.sample(6)
    # Eval-mode networks treat each image on its own; another batch size may round differently.
    torch.testing.assert_close(samples, reconstruction[[0, 1, 2, 3, 0, 1]], rtol=0, atol=1e-5)
    assert model.can_sample is False


def test_random_comparator_and_sizes_are_checked():
    model = make("deepsim-inversion", comparator="random", layer="conv1")
    losses = model.train_step(images(), 0, CPU)
    assert math.isfinite(losses["feature"]) and model.comparator is not None
    assert model.compare(images(2)).shape[0] == 2
    with pytest.raises(UsageError, match="not one of: conv1, conv2, pool, fc, logits"):
        tiny_config("deepsim-inversion").with_overrides({"layer": "conv3"})
    with pytest.raises(UsageError, match="1- or 3-channel"):
        get_model_class("deepsim-inversion")(tiny_config("deepsim-inversion"), (2, 28, 28))


# --- through the harness -------------------------------------------------------------------------

def test_each_model_runs_through_the_harness_and_is_evaluated(tmp_path):
    result = CliRunner().invoke(main, [
        "run", "--models", "stackgan,deepsim-inversion", "--out", str(tmp_path), "--no-report",
        "--metrics", "mmd,reconstruction_error_normalized", *TINY_RUN], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (stackgan,) = tmp_path.glob("mnist/stackgan/*/metrics.json")
    (inversion,) = tmp_path.glob("mnist/deepsim-inversion/*/metrics.json")
    stackgan, inversion = (json.loads(p.read_text())["metrics"] for p in (stackgan, inversion))
    assert stackgan["mmd"]["status"] == "ok" and math.isfinite(stackgan["mmd"]["value"])
    assert stackgan["reconstruction_error_normalized"]["status"] == "n/a"
    error = inversion["reconstruction_error_normalized"]
    assert error["status"] == "ok" and 0 < error["value"] < 10
    assert error["num_samples"] == 200  # the smoke budget's reconstruction examples
    assert inversion["mmd"]["status"] == "n/a"  # no prior: no sample metrics


def test_a_sweep_over_layers_gives_one_normalised_error_per_layer(tmp_path):
    result = CliRunner().invoke(main, [
        "sweep", "deepsim-inversion.layer=conv2,logits", "--models", "deepsim-inversion",
        "--seeds", "0", "--out", str(tmp_path), "--no-report",
        "--metrics", "reconstruction_error_normalized", *NO_LATENT_TINY_RUN], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    errors = {}
    for path in tmp_path.glob("mnist/deepsim-inversion/*/metrics.json"):
        layer = json.loads((path.parent / "config.json").read_text())["model_config"]["layer"]
        errors[layer] = json.loads(path.read_text())["metrics"]["reconstruction_error_normalized"]
    assert sorted(errors) == ["conv2", "logits"]
    assert all(e["status"] == "ok" and math.isfinite(e["value"]) for e in errors.values())
