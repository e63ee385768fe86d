"""Conditional GAN (Mirza & Osindero 2014), and what every class-conditional GAN here shares.

``ClassConditionalGAN`` holds the label handling the conditional family (``cgan``, ``acgan``)
shares: one-hot labels, a generator ``G(z, y)``, uniform labels when none are given, and
sampling by class (``ClassConditionalSampling``, which ``biggan`` uses too).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genbench.models.adversarial import LatentOptimisation, adam_pair, non_saturating_step
from genbench.models.base import (
    GenerativeModel,
    ModelConfig,
    StepContext,
    as_class_labels,
    evaluating,
    require,
)
from genbench.models.layers import ConvEncoder, ConvGenerator
from genbench.models.registry import register_model


@dataclass
class CGANConfig(LatentOptimisation, ModelConfig):
    latent_dim: int = 64
    base_width: int = 32
    num_classes: int = 10  # labels are 0..num_classes-1 (10 for mnist, fashion-mnist, cifar10)
    learning_rate: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999

    def validate(self, image_shape):
        require(self.num_classes >= 2, f"num_classes must be >= 2, got {self.num_classes}")
        self.validate_latent_optimisation()


class ConditionalGenerator(nn.Module):
    """``G(z, y)``: the one-hot label ``[B, K]`` concatenated to ``z [B, latent_dim]``, then the
    DCGAN generator of :mod:`genbench.models.layers`."""

    def __init__(self, latent_dim: int, num_classes: int, image_shape: tuple[int, int, int],
                 base_width: int):
        super().__init__()
        self.num_classes = num_classes
        self.body = ConvGenerator(latent_dim + num_classes, image_shape, base_width)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        y = F.one_hot(labels, self.num_classes).to(z.dtype)  # [B] -> [B, K]
        return self.body(torch.cat([z, y], dim=1))  # [B, latent_dim + K] -> [B, C, H, W]


class ClassConditionalSampling:
    """``generate(z, labels)`` and ``per_class_samples`` of a class-conditional model (listed
    before :class:`GenerativeModel` in its bases; ``biggan``'s too): its ``generator(z, labels)``
    draws the images, ``check_labels(labels, n)`` checks int64 labels ``[n]`` and
    ``sample(n, generator, labels)`` draws ``n`` images of the given classes."""

    @evaluating
    def generate(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``G(z, y)`` for ``z [B, latent_dim]`` and int64 ``labels [B]``: ``[B, C, H, W]`` in ``[-1, 1]``."""
        return self.generator(z, self.check_labels(labels, z.shape[0])).float()

    def per_class_samples(self, n_per_class: int,
                          generator: torch.Generator | None = None) -> dict[int, torch.Tensor]:
        """``{class: [n_per_class, C, H, W] in [-1, 1]}`` for every class, drawn with ``generator``
        (what the per-class metrics of class-conditional models use)."""
        return {k: self.sample(n_per_class, generator,
                               torch.full((n_per_class,), k, dtype=torch.long, device=self.device))
                for k in range(self.config.num_classes)}


class ClassConditionalGAN(ClassConditionalSampling, GenerativeModel):
    """A generator ``G(z, y)`` with ``z ~ N(0, I)`` and a class label ``y``.

    The harness passes the batch's labels to :meth:`train_step`; without them (the model
    contract test, a caller with unlabelled data) labels are drawn uniformly, which trains the
    networks but teaches them nothing about the classes. :meth:`sample` draws labels uniformly
    unless given, so every sample-based metric sees the class-marginal distribution.

    No ``prior()``: ``p(x)`` would be a sum over classes of integrals over ``z``, which the
    likelihood metrics do not estimate, so they report n/a for these models.
    """

    conditional = True

    def build_generator(self) -> ConditionalGenerator:
        c = self.config
        return ConditionalGenerator(c.latent_dim, c.num_classes, self.image_shape, c.base_width)

    def random_labels(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` labels drawn uniformly from ``0..num_classes-1``, int64 ``[n]`` on the model's
        device (drawn on the CPU when ``generator`` is given, like :meth:`randn`)."""
        if generator is not None:
            return torch.randint(self.config.num_classes, (n,), generator=generator).to(self.device)
        return torch.randint(self.config.num_classes, (n,), device=self.device)

    def check_labels(self, labels: torch.Tensor | None, n: int, device=None) -> torch.Tensor:
        """``labels`` as int64 ``[n]`` on ``device``, or uniform labels when None; a one-line error
        when they do not fit (wrong shape, or a class outside ``0..num_classes-1``)."""
        if labels is None:
            return self.random_labels(n).to(device or self.device)
        return as_class_labels(labels, n, self.config.num_classes, device or self.device)

    @evaluating
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               labels: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` images ``[n, C, H, W]`` in ``[-1, 1]`` of classes ``labels`` (int64 ``[n]``), or of
        uniformly drawn classes when None. ``z`` is drawn first, so one seed gives the same ``z``
        whatever the labels."""
        z = self.randn(n, self.config.latent_dim, generator=generator)
        labels = self.random_labels(n, generator) if labels is None else self.check_labels(labels, n)
        return self.generator(z, labels).float()

    def build_optimizers(self):
        self.optimizers = adam_pair(self.generator, self.discriminator, self.config)
        return self.optimizers


class LabelMapDiscriminator(nn.Module):
    """``D(x, y)``: the one-hot label broadcast to ``K`` constant channels and concatenated with the
    image, then the DCGAN discriminator; one logit."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, base_width: int):
        super().__init__()
        channels, height, width = image_shape
        self.num_classes = num_classes
        self.body = ConvEncoder((channels + num_classes, height, width), base_width, 1, slope=0.2)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        y = F.one_hot(labels, self.num_classes).to(x.dtype)  # [B, K]
        maps = y[:, :, None, None].expand(-1, -1, *x.shape[2:])  # [B, K, H, W]
        return self.body(torch.cat([x, maps], dim=1))  # [B, C + K, H, W] -> [B, 1]


@register_model("cgan")
class CGAN(ClassConditionalGAN):
    """Conditional GAN (Mirza & Osindero 2014): the class label is an input of generator and discriminator.

    Generator ``G(z, y)``: the one-hot label concatenated to ``z``. Discriminator ``D(x, y)``: the
    one-hot label as ``K`` constant image channels concatenated with the image. Non-saturating
    loss as in ``gan``: ``BCE(D(x, y), 1) + BCE(D(G(z, y), y), 0)`` for the discriminator and
    ``BCE(D(G(z, y), y), 1)`` for the generator; fakes take the batch's labels, so their classes
    follow the data's. Adam (2e-4, beta1 0.5), one step each per batch.

    Simplification: the paper's MNIST networks are MLPs (maxout discriminator) with the label
    first mapped through its own hidden layer; here the DCGAN networks of ``layers.py`` take the
    one-hot label directly.
    """

    config_class = CGANConfig
    loss_names = ("d_loss", "g_loss", "d_real", "d_fake")

    def __init__(self, config: CGANConfig, image_shape):
        super().__init__(config, image_shape)
        self.generator = self.build_generator()
        self.discriminator = LabelMapDiscriminator(image_shape, config.num_classes, config.base_width)

    def train_step(self, batch, step, ctx: StepContext, labels: torch.Tensor | None = None):
        """One discriminator and one generator step; ``labels`` int64 ``[B]`` (uniform if None)."""
        labels = self.check_labels(labels, batch.shape[0], batch.device)
        z = torch.randn(batch.shape[0], self.config.latent_dim, device=batch.device)
        z = self.config.optimised_latents(
            z, lambda z: self.discriminator(self.generator(z, labels), labels))
        return non_saturating_step(ctx, self.optimizers, self.generator, batch,
                                   lambda: self.generator(z, labels),
                                   lambda x: self.discriminator(x, labels))
