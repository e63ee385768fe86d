"""DCGAN-style GAN with the non-saturating loss (Goodfellow et al. 2014; Radford et al. 2016)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import distributions as D

from genbench.models.base import GenerativeModel, ModelConfig, StepContext, evaluating, require
from genbench.models.layers import ConvEncoder, ConvGenerator
from genbench.models.registry import register_model


@dataclass
class GANConfig(ModelConfig):
    latent_dim: int = 64
    base_width: int = 32
    learning_rate: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999

    def validate(self, image_shape):
        require(self.latent_dim >= 1, f"latent_dim must be >= 1, got {self.latent_dim}")
        require(self.base_width >= 1, f"base_width must be >= 1, got {self.base_width}")
        require(self.learning_rate > 0, "learning_rate must be > 0")


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


@register_model("gan")
class GAN(LatentGenerator):
    """DCGAN generator and discriminator, non-saturating loss, Adam (2e-4, beta1 0.5).

    Discriminator: strided 4x4 convs, batch norm after the first layer, leaky ReLU 0.2, one logit;
    loss ``BCE(D(x), 1) + BCE(D(G(z)), 0)``. Generator: transposed convs with batch norm and ReLU,
    ``tanh`` output; loss ``BCE(D(G(z)), 1)`` (the non-saturating form). One discriminator step and
    one generator step per batch.
    """

    config_class = GANConfig
    loss_names = ("d_loss", "g_loss", "d_real", "d_fake")

    def __init__(self, config: GANConfig, image_shape):
        super().__init__(config, image_shape)
        self.generator = ConvGenerator(config.latent_dim, image_shape, config.base_width)
        self.discriminator = ConvEncoder(image_shape, config.base_width, 1, slope=0.2)

    def build_optimizers(self):
        c = self.config
        betas = (c.beta1, c.beta2)
        self.optimizers = {
            "generator": torch.optim.Adam(self.generator.parameters(), c.learning_rate, betas=betas),
            "discriminator": torch.optim.Adam(
                self.discriminator.parameters(), c.learning_rate, betas=betas
            ),
        }
        return self.optimizers

    def train_step(self, batch, step, ctx: StepContext):
        opt_g, opt_d = self.optimizers["generator"], self.optimizers["discriminator"]
        z = torch.randn(batch.shape[0], self.config.latent_dim, device=batch.device)
        with ctx.autocast():
            fake = self.generator(z)
            real_logits = self.discriminator(batch)
            fake_logits = self.discriminator(fake.detach())
            d_loss = F.binary_cross_entropy_with_logits(
                real_logits, torch.ones_like(real_logits)
            ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        opt_d.zero_grad(set_to_none=True)
        ctx.backward(d_loss)
        ctx.step(opt_d)

        with ctx.autocast():
            gen_logits = self.discriminator(fake)
            g_loss = F.binary_cross_entropy_with_logits(gen_logits, torch.ones_like(gen_logits))
        opt_g.zero_grad(set_to_none=True)
        ctx.backward(g_loss, inputs=self.generator.parameters())
        ctx.step(opt_g)
        return {
            "d_loss": d_loss.item(),
            "g_loss": g_loss.item(),
            "d_real": torch.sigmoid(real_logits.float()).mean().item(),
            "d_fake": torch.sigmoid(fake_logits.float()).mean().item(),
        }
