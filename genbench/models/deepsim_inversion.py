"""Inverting the suite's classifier with the DeePSiM losses (Dosovitskiy & Brox 2016, "Inverting AlexNet").

A fixed encoder ``E`` (the dataset classifier of :mod:`genbench.features`, cut after one layer)
maps an image to features; a generator ``G`` learns to map the features back to the image. How
close ``G(E(x))`` comes to ``x``, per layer, shows what each layer keeps of the image: the paper's
table of normalised reconstruction errors for AlexNet's CONV5 to FC8, here for the classifier's
five layers. Train one run per layer with

    genbench sweep deepsim-inversion.layer=conv1,conv2,pool,fc,logits --models deepsim-inversion

and read ``reconstruction_error_normalized`` from the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from genbench.features.classifier import DatasetClassifier
from genbench.models.adversarial import adam, adam_pair, optimizer_step
from genbench.models.base import (
    GenerativeModel,
    ModelConfig,
    StepContext,
    evaluating,
    require,
    set_requires_grad,
)
from genbench.models.deepsim import (
    LEAKY_SLOPE,
    RandomComparator,
    adversarial_loss,
    discriminator_loss,
    squared_distance,
    step_discriminator_unless_paused,
)
from genbench.models.image_bank import TrainingImageBank
from genbench.models.layers import ConvEncoder, ConvGenerator, UpBlock, widths
from genbench.models.registry import register_model

Layer = Literal["conv1", "conv2", "pool", "fc", "logits"]
# How many modules of the classifier, in order (trunk, hidden, head), each layer's output follows.
# As in the paper, a layer includes the pooling and nonlinearity after it.
LAYERS: dict[str, int] = {
    "conv1": 4,  # conv 3x3 (32), batch norm, ReLU, 2x2 max pool: [B, 32, 14, 14] for 28 px
    "conv2": 8,  # conv 3x3 (64), batch norm, ReLU, 2x2 max pool: [B, 64, 7, 7]
    "pool": 9,  # adaptive average pool to 3x3: [B, 64, 3, 3]
    "fc": 13,  # the 128-unit hidden layer after ReLU (the FID feature layer): [B, 128]
    "logits": 14,  # the class logits: [B, 10]
}


def classifier_modules(classifier: DatasetClassifier) -> list[nn.Module]:
    """The classifier's modules in the order of its forward pass (trunk, hidden layer, head)."""
    return [*classifier.trunk, *classifier.hidden, classifier.head]


def classifier_activation(classifier: DatasetClassifier, x: torch.Tensor, layer: str) -> torch.Tensor:
    """The classifier's activation after ``layer`` (a key of :data:`LAYERS`) for images ``x``
    ``[B, C, s, s]`` in ``[-1, 1]`` at the classifier's input size: ``[B, C', h, w]`` for the
    convolutional layers, ``[B, D]`` for ``fc`` and ``logits``."""
    for module in classifier_modules(classifier)[: LAYERS[layer]]:
        x = module(x)
    return x


@dataclass
class DeePSiMInversionConfig(ModelConfig):
    layer: Layer = "fc"  # the classifier layer whose activations are inverted
    classifier: Literal["mnist", "fashion-mnist"] = "mnist"  # whose shipped classifier: the dataset's
    loss: Literal["deepsim", "image"] = "deepsim"  # "image": image-space loss only (the paper's baseline)
    base_width: int = 32
    comparator: Literal["classifier", "random"] = "classifier"
    comparator_layer: Layer = "conv2"  # with comparator=classifier (the paper used AlexNet CONV5)
    comparator_seed: int = 0  # weights of comparator=random (deepsim's random convnet)
    comparator_width: int = 32
    reduction: Literal["mean", "sum"] = "mean"
    # The deepsim model's weights for reduction="mean" (per-dimension means); the paper's, for
    # summed losses, are feature 0.01, adversarial 100, image 2e-6.
    feature_weight: float = 1.0
    adversarial_weight: float = 0.05
    image_weight: float = 0.1
    pause_ratio: float = 0.1  # skip the discriminator update while L_discr / L_adv < this
    learning_rate: float = 2e-4
    beta1: float = 0.9
    beta2: float = 0.999
    kept_images: int = 64  # first training images kept, whose reconstructions sample() shows

    def validate(self, image_shape):
        require(image_shape[0] in (1, 3), f"deepsim-inversion takes 1- or 3-channel images, "
                f"got {image_shape[0]} channels")
        require(self.base_width >= 1, f"base_width must be >= 1, got {self.base_width}")
        require(self.comparator_width >= 1, f"comparator_width must be >= 1, got {self.comparator_width}")
        require(self.pause_ratio >= 0, f"pause_ratio must be >= 0, got {self.pause_ratio}")
        require(self.kept_images >= 1, f"kept_images must be >= 1, got {self.kept_images}")


def load_frozen_classifier(dataset: str) -> DatasetClassifier:
    """The shipped classifier of ``dataset`` (checked against its SHA-256), frozen, in eval mode."""
    from genbench.features.registry import load_classifier

    classifier, _ = load_classifier(dataset, allow_download=False, retrain=False)
    set_requires_grad(classifier, False)
    return classifier.eval()


class FeatureDecoder(nn.Module):
    """The generator: features → image ``[B, C, size, size]``, linear output (DeePSiM).

    Vector features ``[B, D]`` (``fc``, ``logits``): a fully connected layer (``8 * base_width``
    units), then the DCGAN generator of ``layers.py`` (a fully connected layer to the 7x7 start,
    transposed convs). Feature maps ``[B, C', h, w]`` (``conv1``, ``conv2``, ``pool``): as the
    paper does for CONV5, convolutions replace the fully connected layers: two 3x3 convs, then
    transposed convs doubling ``h`` while it fits in ``size`` (resized to ``size`` if it falls
    short) and a 3x3 conv to the image. Leaky ReLU 0.3 and batch norm throughout.
    """

    def __init__(self, feature_shape: tuple[int, ...], image_shape: tuple[int, int, int],
                 base_width: int):
        super().__init__()
        channels, self.size, _ = image_shape
        if len(feature_shape) == 1:
            hidden = 8 * base_width
            self.body = nn.Sequential(
                nn.Linear(feature_shape[0], hidden), nn.LeakyReLU(LEAKY_SLOPE),
                ConvGenerator(hidden, image_shape, base_width, slope=LEAKY_SLOPE, output="linear"),
            )
            return
        c_in, side = feature_shape[0], feature_shape[-1]
        doublings = 0
        while side * 2 ** (doublings + 1) <= self.size:
            doublings += 1
        level_widths = widths(base_width, doublings)[::-1]  # coarse → fine
        self.body = nn.Sequential(
            nn.Conv2d(c_in, level_widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(level_widths[0]), nn.LeakyReLU(LEAKY_SLOPE),
            nn.Conv2d(level_widths[0], level_widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(level_widths[0]), nn.LeakyReLU(LEAKY_SLOPE),
            *[UpBlock(a, b, "batch", LEAKY_SLOPE) for a, b in zip(level_widths, level_widths[1:])],
        )
        self.to_image = nn.Conv2d(level_widths[-1], channels, 3, padding=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = self.body(features)
        if features.dim() == 2:
            return h  # ConvGenerator already drew [B, C, size, size]
        if h.shape[-1] != self.size:
            h = F.interpolate(h, size=(self.size, self.size), mode="bilinear", antialias=True)
        return self.to_image(h)  # [B, C, size, size]


class FeatureConditionedDiscriminator(nn.Module):
    """``D(x, phi)``: is ``x`` a real image whose features are ``phi``? One logit ``[B, 1]``.

    As the paper's AlexNet-inversion discriminator: the image goes through a convnet (the strided
    convs of ``layers.py``, to ``4 * base_width`` values), the features through two fully
    connected layers (``8`` and ``4 * base_width`` units; 1024 and 512 in the paper), the two are
    concatenated and a linear layer gives the logit. Leaky ReLU 0.3.
    """

    def __init__(self, image_shape: tuple[int, int, int], feature_numel: int, base_width: int):
        super().__init__()
        self.image = ConvEncoder(image_shape, base_width, 4 * base_width, slope=LEAKY_SLOPE)
        self.features = nn.Sequential(
            nn.Linear(feature_numel, 8 * base_width), nn.LeakyReLU(LEAKY_SLOPE),
            nn.Linear(8 * base_width, 4 * base_width), nn.LeakyReLU(LEAKY_SLOPE),
        )
        self.head = nn.Linear(8 * base_width, 1)

    def forward(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        image_code = F.leaky_relu(self.image(x), LEAKY_SLOPE)  # [B, 4 * base]
        feature_code = self.features(features.flatten(1))  # [B, 4 * base]
        return self.head(torch.cat([image_code, feature_code], dim=1))  # [B, 1]


@register_model("deepsim-inversion")
class DeePSiMInversion(GenerativeModel):
    """DeePSiM feature inversion (Dosovitskiy & Brox, 2016) of the suite's classifier at one
    layer (conv1, conv2, pool, fc or logits); small networks, no prior: reconstruction metrics only.

    Encoder ``E``: the shipped MNIST (or ``classifier=fashion-mnist``) classifier of
    :mod:`genbench.features`, frozen in eval mode, cut after ``layer``:

    - ``conv1``: conv 3x3, batch norm, ReLU, max pool → ``[32, 14, 14]``
    - ``conv2``: the same with 64 channels → ``[64, 7, 7]``
    - ``pool``: adaptive average pooling → ``[64, 3, 3]``
    - ``fc``: the 128-unit hidden layer after ReLU (the FID features) → ``[128]``
    - ``logits``: the class logits → ``[10]``

    Generator ``G`` (:class:`FeatureDecoder`) maps ``E(x)`` to an image; with
    ``x_rec = G(E(x))``, ``loss=deepsim`` minimises ``feature_weight * ||C(x_rec) - C(x)||^2 +
    adversarial_weight * (-log D(x_rec, E(x))) + image_weight * ||x_rec - x||^2`` and the
    discriminator ``-log D(x, E(x)) - log(1 - D(x_rec, E(x)))``, paused while ``L_discr / L_adv <
    pause_ratio``, with the loss functions of ``deepsim``. The discriminator also sees the
    features, as the paper's does. Comparator ``C``: the same classifier's ``comparator_layer``
    (``conv2``, its last conv block, as the paper used AlexNet's CONV5), or deepsim's random
    convnet (``comparator=random``). ``loss=image`` trains ``G`` on ``||x_rec - x||^2`` alone (the
    paper's "image loss" row, i.e. Dosovitskiy & Brox 2015), with no discriminator. Norms are
    per-dimension means by default (``reduction``). Adam 2e-4, betas (0.9, 0.999).

    ``reconstruct(x) = G(E(x))`` clamped to ``[-1, 1]``, so ``reconstruction_error_normalized``
    is the paper's normalised error: ``||x_rec - x||`` over the mean distance between two test
    images. The model has no prior: ``can_sample`` is False and the sample metrics (MMD, FID...)
    report n/a; ``sample(n)`` returns the reconstructions of the first ``kept_images`` training
    images it saw (repeated up to ``n``), so the harness's grids show the inversion improving.

    Simplified from the paper: AlexNet on ImageNet becomes the suite's small classifier on
    28x28 images; generator and discriminator are the small networks of ``layers.py`` (no dropout
    in the discriminator). The classifier is not told the dataset: ``classifier`` must name it
    (``--set deepsim-inversion.classifier=fashion-mnist`` on Fashion-MNIST). Images of another
    size or with 3 channels are resized (antialiased) and averaged to the classifier's 1-channel
    28x28 input before ``E`` and ``C``. The classifier's weights are part of the checkpoint.
    """

    config_class = DeePSiMInversionConfig
    loss_names = ("loss", "feature", "adversarial", "image", "d_loss", "d_paused")
    can_sample: ClassVar[bool] = False  # no prior: the metrics that need samples report n/a

    def __init__(self, config: DeePSiMInversionConfig, image_shape):
        super().__init__(config, image_shape)
        self.classifier = load_frozen_classifier(config.classifier)
        with torch.no_grad():
            probe = self.encode(torch.zeros(1, *image_shape))
        feature_shape = tuple(probe.shape[1:])
        self.generator = FeatureDecoder(feature_shape, image_shape, config.base_width)
        self.discriminator = None
        self.comparator = None
        if config.loss == "deepsim":
            self.discriminator = FeatureConditionedDiscriminator(image_shape, probe[0].numel(),
                                                                 config.base_width)
            if config.comparator == "random":
                self.comparator = RandomComparator(image_shape[0], config.comparator_width,
                                                   config.comparator_seed)
        self.bank = TrainingImageBank(self, "kept", "kept_count", config.kept_images, image_shape)

    def train(self, mode: bool = True):
        """Set the mode of the trainable networks; the classifier stays in eval mode (frozen:
        its batch norm keeps its trained statistics, its dropout stays off)."""
        super().train(mode)
        self.classifier.eval()
        return self

    def build_optimizers(self):
        if self.discriminator is None:
            self.optimizers = {"generator": adam(self.generator, self.config.learning_rate, self.config)}
        else:
            self.optimizers = adam_pair(self.generator, self.discriminator, self.config)
        return self.optimizers

    def classifier_input(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]`` in ``[-1, 1]`` → the classifier's input shape (channel mean
        for 3-channel images, antialiased resize to its side); unchanged when they already fit."""
        if x.shape[1] != self.classifier.channels:
            x = x.mean(1, keepdim=True)
        size = self.classifier.size
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        return x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``E(x)``: the classifier's activations after ``layer`` (see the class docstring)."""
        return classifier_activation(self.classifier, self.classifier_input(x), self.config.layer)

    def compare(self, x: torch.Tensor) -> torch.Tensor:
        """``C(x)`` ``[B, F]``: the comparator's features of images ``x``."""
        if self.comparator is not None:
            return self.comparator(x)
        return classifier_activation(self.classifier, self.classifier_input(x),
                                     self.config.comparator_layer).flatten(1)

    @evaluating
    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``G(E(x))`` for ``x`` ``[B, C, H, W]`` in ``[-1, 1]``: ``[B, C, H, W]`` clamped to ``[-1, 1]``."""
        return self.generator(self.encode(x)).float().clamp(-1, 1)

    @evaluating
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reconstructions of the kept training images, repeated up to ``n``: ``[n, C, H, W]`` in
        ``[-1, 1]``. Not samples of a distribution (``can_sample`` is False); ``generator`` is
        unused. Before the first training step the kept images are blank (zeros)."""
        index = torch.arange(n, device=self.kept.device) % self.config.kept_images
        return self.reconstruct(self.kept[index])

    def train_step(self, batch, step, ctx: StepContext):
        """One generator step (and with ``loss=deepsim`` one discriminator step unless paused)."""
        c = self.config
        self.bank.add(batch)
        with ctx.autocast():
            with torch.no_grad():
                features = self.encode(batch)  # the fixed encoder: no gradient
            reconstruction = self.generator(features)
            image = squared_distance(reconstruction, batch, c.reduction)
        optimizer = self.optimizers["generator"]
        if c.loss == "image":
            optimizer_step(ctx, optimizer, image, self.generator.parameters())
            return {"loss": image.item(), "image": image.item()}

        with ctx.autocast():
            adversarial = adversarial_loss(self.discriminator(reconstruction, features))
            with torch.no_grad():
                target_features = self.compare(batch)
            feature = squared_distance(self.compare(reconstruction), target_features, c.reduction)
        loss = c.feature_weight * feature + c.adversarial_weight * adversarial + c.image_weight * image
        optimizer_step(ctx, optimizer, loss, self.generator.parameters())

        with ctx.autocast():
            d_loss = discriminator_loss(self.discriminator(batch, features),
                                        self.discriminator(reconstruction.detach(), features))
        paused = step_discriminator_unless_paused(d_loss, adversarial, c.pause_ratio,
                                                  self.optimizers["discriminator"], ctx)
        return {"loss": loss.item(), "feature": feature.item(), "adversarial": adversarial.item(),
                "image": image.item(), "d_loss": d_loss.item(), "d_paused": float(paused)}
