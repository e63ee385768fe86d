"""The resolution-free CPPN: rendering at any size, its coordinates, its classifier objective, and
``genbench sample``. The model contract (shapes, a step, save/load) is in test_models.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from genbench.cli import main
from genbench.core.errors import UsageError
from genbench.models import StepContext, get_model_class
from genbench.models.cppn import classifier_update, coordinate_grid
from tests.conftest import tiny_config
from tests.test_cli import TINY_RUN

CPU = StepContext(torch.device("cpu"))


def make(image_shape=(1, 28, 28), **overrides):
    torch.manual_seed(0)
    model = get_model_class("cppn")(tiny_config("cppn").with_overrides(overrides), image_shape)
    model.build_optimizers()
    return model


def images(n=8, image_shape=(1, 28, 28), seed=1):
    return torch.rand(n, *image_shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_coordinates_are_pixel_centres_of_the_unit_square_with_radius():
    grid = coordinate_grid(4)  # [rows, cols, (x, y, r)]
    centres = np.array([-0.75, -0.25, 0.25, 0.75])  # -1 + (2j + 1) / 4
    x, y = np.meshgrid(centres, centres)  # x along columns, y along rows
    np.testing.assert_allclose(grid[..., 0].numpy(), x, atol=1e-7)
    np.testing.assert_allclose(grid[..., 1].numpy(), y, atol=1e-7)
    np.testing.assert_allclose(grid[..., 2].numpy(), np.sqrt(x**2 + y**2), atol=1e-7)
    # A window of rows is the same rows of the whole grid (what chunked rendering relies on).
    assert torch.equal(coordinate_grid(1080, rows=slice(500, 700)), coordinate_grid(1080)[500:700])


@pytest.mark.parametrize("image_shape", [(1, 28, 28), (3, 32, 32)])
def test_render_at_the_training_size_is_what_sample_draws(image_shape):
    model = make(image_shape)
    model.train_step(images(image_shape=image_shape), 0, CPU)
    size = image_shape[-1]
    drawn = model.sample(3, generator=torch.Generator().manual_seed(5))
    rendered = model.sample_at(3, size, generator=torch.Generator().manual_seed(5))
    assert rendered.shape == drawn.shape == (3, *image_shape)
    # Same z and coordinates; only the matmul batching differs (row chunks, one image at a time).
    torch.testing.assert_close(rendered, drawn, atol=1e-5, rtol=0)


def test_render_at_twice_the_size_is_the_same_image_sampled_finer():
    # Large block weights from the start (the article's "interesting" random images), so that
    # images differ clearly between latents and the comparison below can fail.
    model = make(block_output_init_std=1.0, init_gain=4.0)
    z = torch.randn(4, model.config.latent_dim, generator=torch.Generator().manual_seed(2))
    small = model.render(z, 28)
    large = model.render(z, 56)
    assert large.shape == (4, 1, 56, 56)
    # Each 2x2 block of the 56 px grid averages around the 28 px pixel's centre, so for a smooth
    # function of (x, y) the two agree closely (measured >= 0.993); the 28 px render of another
    # latent correlates far less (measured 0.41..0.71), so 0.98 separates the two.
    pooled = F.avg_pool2d(large, 2)

    def correlation(a, b):
        return np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1]

    for a, b, other in zip(pooled, small, small.roll(1, 0)):
        assert correlation(a, b) > 0.98, correlation(a, b)
        assert correlation(a, other) < 0.9, correlation(a, other)
    # Rendering in several row chunks gives the same image as in one.
    from genbench.models import cppn

    chunk, cppn.RENDER_CHUNK_POINTS = cppn.RENDER_CHUNK_POINTS, 56 * 5  # 5 rows per chunk
    try:
        torch.testing.assert_close(model.render(z, 56), large, atol=1e-6, rtol=0)
    finally:
        cppn.RENDER_CHUNK_POINTS = chunk


@pytest.mark.parametrize("num_classes", [10, 3])
def test_classifier_has_k_plus_one_outputs_and_labels_are_checked(num_classes):
    model = make(num_classes=num_classes)
    assert model.discriminator(images()).shape == (8, num_classes + 1)
    labels = torch.arange(8) % num_classes
    losses = model.train_step(images(), 0, CPU, labels=labels)
    assert set(losses) == set(model.loss_names) and all(math.isfinite(v) for v in losses.values())
    with pytest.raises(UsageError, match=f"labels must be in 0..{num_classes - 1}"):
        model.train_step(images(), 1, CPU, labels=torch.full((8,), num_classes))


def test_class_losses_with_and_without_labels():
    model = make(num_classes=3)
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 0, 1])
    p = logits.softmax(1)
    # With labels: -log C(y | x) over all K + 1 classes.
    expected = -p[torch.arange(5), labels].log().mean()
    torch.testing.assert_close(model._real_class_loss(logits, labels), expected)
    # Without: "any real class", -log (1 - C(fake | x)).
    expected = -(1 - p[:, 3]).log().mean()
    torch.testing.assert_close(model._real_class_loss(logits, None), expected)


def test_training_teaches_the_classifier_the_labels():
    """Real images of class k → class k: a few steps on two separable classes are enough."""
    model = make(num_classes=2, discriminator_learning_rate=2e-3, balance=False)
    x = torch.cat([torch.full((8, 1, 28, 28), -1.0), torch.full((8, 1, 28, 28), 1.0)])
    labels = torch.cat([torch.zeros(8), torch.ones(8)]).long()
    for step in range(10):
        losses = model.train_step(x, step, CPU, labels=labels)
    assert losses["class_accuracy"] == 1.0 and losses["d_updated"] == 1.0


@pytest.mark.parametrize("real, fake, expected", [
    (0.9, 0.5, "all"),  # fakes missed: learn everything
    (0.3, 0.69, "all"),
    (0.3, 0.7, "real"),  # fakes caught: only real images, while they are misclassified
    (0.59, 1.0, "real"),
    (0.6, 0.7, "none"),  # ahead on both: rest
    (1.0, 1.0, "none"),
])
def test_balance_rule(real, fake, expected):
    assert classifier_update(real, fake) == expected


class QueuedLogits(torch.nn.Module):
    """A stand-in classifier that returns given logits (real, reconstruction, prior sample) plus a
    learnable bias, so the balance rule's inputs are known."""

    def __init__(self, queue):
        super().__init__()
        self.queue = list(queue)
        self.bias = torch.nn.Parameter(torch.zeros(queue[0].shape[1]))

    def forward(self, x):
        return self.queue.pop(0) + self.bias


@pytest.mark.parametrize("case", ["real", "none"])
def test_balanced_step_updates_the_classifier_only_as_the_rule_says(case):
    model = make(num_classes=2)
    labels = torch.zeros(8, dtype=torch.long)
    to = {"0": [9.0, 0, 0], "1": [0, 9.0, 0], "fake": [0, 0, 9.0]}
    rows = lambda name: torch.tensor([to[name]] * 8)  # noqa: E731
    # Real images in the wrong class ("real": learn them) or the right one ("none": rest); the
    # generated images are all caught as fakes either way.
    real = rows("1" if case == "real" else "0")
    model.discriminator = QueuedLogits([real, rows("fake"), rows("fake")])
    model.build_optimizers()
    losses = model.train_step(images(), 0, CPU, labels=labels)
    assert losses["fake_accuracy"] == 1.0 and losses["g_accuracy"] == 0.0
    if case == "none":
        assert losses["d_updated"] == 0.0 and model.discriminator.bias.grad is None
    else:
        # Only -log C(y | x) was backpropagated: its gradient is mean(softmax - one_hot(y)).
        expected = (real.softmax(1) - F.one_hot(labels, 3)).mean(0)
        assert losses["d_updated"] == 1.0
        torch.testing.assert_close(model.discriminator.bias.grad, expected)


def run_cli(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_sample_renders_a_cppn_run_at_1080_px_and_refuses_other_sizes_for_a_gan(tmp_path):
    trained = run_cli("run", "--models", "cppn,gan", "--out", str(tmp_path), "--no-eval", "--no-report",
                      *TINY_RUN)
    assert trained.exit_code == 0, trained.output
    (cppn_run,) = tmp_path.glob("mnist/cppn/*/")
    (gan_run,) = tmp_path.glob("mnist/gan/*/")

    result = run_cli("sample", str(cppn_run), "--size", "1080", "--num", "1")
    assert result.exit_code == 0, result.output
    path = cppn_run / "samples_1080px.png"
    assert result.output.strip() == str(path)
    with Image.open(path) as image:
        assert image.size == (1080, 1080)

    refused = CliRunner().invoke(main, ["sample", str(gan_run), "--size", "64"])
    assert refused.exit_code == 2
    assert refused.output.strip().splitlines() == [
        "genbench: error: gan renders only at 28 px; resolution-free models (cppn) take --size"
    ]
    own = run_cli("sample", str(gan_run), "--num", "4", "--out", str(tmp_path / "gan.png"))
    assert own.exit_code == 0, own.output
    with Image.open(tmp_path / "gan.png") as image:
        assert image.size == (2 * 28 + 3 * 2, 2 * 28 + 3 * 2)  # 2x2 grid, torchvision's 2 px padding
