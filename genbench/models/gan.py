"""DCGAN-style GAN with the non-saturating loss (Goodfellow et al. 2014; Radford et al. 2016)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import distributions as D

from genbench.models.adversarial import LatentOptimisation, adam_pair, non_saturating_step
from genbench.models.base import GenerativeModel, ModelConfig, StepContext, evaluating, require
from genbench.models.layers import ConvEncoder, ConvGenerator
from genbench.models.registry import register_model


@dataclass
class GANConfig(LatentOptimisation, ModelConfig):
    latent_dim: int = 64
    base_width: int = 32
    learning_rate: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999

    def validate(self, image_shape):
        require(self.latent_dim >= 1, f"latent_dim must be >= 1, got {self.latent_dim}")
        require(self.base_width >= 1, f"base_width must be >= 1, got {self.base_width}")
        require(self.learning_rate > 0, "learning_rate must be > 0")
        self.validate_latent_optimisation()


class LatentGenerator(GenerativeModel):
    """A generator ``G(z)``, ``z ~ N(0, I)``: shared by the GAN family.

    It has a ``prior()`` but no pixel likelihood of its own; the metrics wrap ``generate`` in a
    Gaussian observation model when a likelihood is asked for.
    """

    def prior(self) -> D.Distribution:
        zeros = torch.zeros(self.config.latent_dim, device=self.device)
        return D.Independent(D.Normal(zeros, torch.ones_like(zeros)), 1)

    @evaluating
    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """``G(z)`` for ``z [B, latent_dim]``: ``[B, C, H, W]`` in ``[-1, 1]``."""
        return self.generator(z).float()

    @evaluating
    @torch.no_grad()
    def sample(self, n, generator=None):
        return self.generator(self.randn(n, self.config.latent_dim, generator=generator)).float()


def diagonal_gaussian(params: torch.Tensor) -> D.Distribution:
    """``N(mean, diag(exp(log_var)))`` from an encoder's output ``[B, 2 * latent_dim]``, the means
    then the log-variances; batch shape ``[B]``, event shape ``[latent_dim]``."""
    mean, log_var = params.chunk(2, dim=1)  # [B, latent_dim] each
    return D.Independent(D.Normal(mean, torch.exp(0.5 * log_var)), 1)


class EncodedLatentGenerator(LatentGenerator):
    """A :class:`LatentGenerator` with a Gaussian encoder ``q(z|x)``: ``self.encoder`` maps images
    ``[B, C, H, W]`` to the means and log-variances ``[B, 2 * latent_dim]`` of ``z``."""

    def _posterior(self, x: torch.Tensor) -> D.Distribution:
        return diagonal_gaussian(self.encoder(x))

    @evaluating
    def approximate_posterior(self, x: torch.Tensor) -> D.Distribution:
        """q(z|x) for ``x [B, C, H, W]`` in ``[-1, 1]``; event shape ``[latent_dim]``."""
        return self._posterior(x)

    @evaluating
    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``G(mean of q(z|x))``, ``[B, C, H, W]`` in ``[-1, 1]``. Trained without a pixel loss
        (``gvae``, ``cppn``), it is an image like ``x`` (for ``cppn``, of its class), not a pixel copy."""
        return self.generator(self._posterior(x).mean).float()


@register_model("gan")
class GAN(LatentGenerator):
    """DCGAN generator and discriminator, non-saturating loss, Adam (2e-4, beta1 0.5).

    Discriminator: strided 4x4 convs, batch norm after the first layer, leaky ReLU 0.2, one logit;
    loss ``BCE(D(x), 1) + BCE(D(G(z)), 0)``. Generator: transposed convs with batch norm and ReLU,
    ``tanh`` output; loss ``BCE(D(G(z)), 1)`` (the non-saturating form). One discriminator step and
    one generator step per batch. ``latent_method=gd|ngd`` moves each batch's ``z`` first to raise
    ``D(G(z))`` (LOGAN's latent step, first order: :class:`~genbench.models.adversarial.LatentOptimisation`).
    """

    config_class = GANConfig
    loss_names = ("d_loss", "g_loss", "d_real", "d_fake")

    def __init__(self, config: GANConfig, image_shape):
        super().__init__(config, image_shape)
        self.generator = ConvGenerator(config.latent_dim, image_shape, config.base_width)
        self.discriminator = ConvEncoder(image_shape, config.base_width, 1, slope=0.2)

    def build_optimizers(self):
        self.optimizers = adam_pair(self.generator, self.discriminator, self.config)
        return self.optimizers

    def train_step(self, batch, step, ctx: StepContext):
        z = torch.randn(batch.shape[0], self.config.latent_dim, device=batch.device)
        z = self.config.optimised_latents(z, lambda z: self.discriminator(self.generator(z)))
        return non_saturating_step(ctx, self.optimizers, self.generator, batch,
                                   lambda: self.generator(z), self.discriminator)
