"""Wasserstein GAN (Arjovsky et al. 2017), with the gradient penalty of Gulrajani et al. 2017."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genbench.models.adversarial import LatentOptimisation
from genbench.models.base import ModelConfig, StepContext, require
from genbench.models.gan import LatentGenerator
from genbench.models.layers import ConvEncoder, ConvGenerator
from genbench.models.registry import register_model


@dataclass
class WGANConfig(LatentOptimisation, ModelConfig):
    latent_dim: int = 64
    base_width: int = 32
    gradient_penalty: bool = False
    critic_steps: int = 5  # critic updates per generator update
    clip_value: float = 0.01  # weight clipping, without gradient penalty
    penalty_weight: float = 10.0  # lambda, with gradient penalty
    # None: the published defaults (RMSProp 5e-5; with the penalty Adam 1e-4, betas (0, 0.9)).
    learning_rate: float | None = None

    def validate(self, image_shape):
        require(self.latent_dim >= 1, f"latent_dim must be >= 1, got {self.latent_dim}")
        require(self.critic_steps >= 1, f"critic_steps must be >= 1, got {self.critic_steps}")
        require(self.clip_value > 0, "clip_value must be > 0")
        require(self.penalty_weight >= 0, "penalty_weight must be >= 0")
        require(self.learning_rate is None or self.learning_rate > 0, "learning_rate must be > 0")
        self.validate_latent_optimisation()


@register_model("wgan")
class WGAN(LatentGenerator):
    """Wasserstein GAN: critic without log or sigmoid, weight clipping (0.01), RMSProp (5e-5),
    5 critic steps per generator step; ``gradient_penalty=true`` gives WGAN-GP.

    Critic loss ``E[C(G(z))] - E[C(x)]``; generator loss ``-E[C(G(z))]``. Each batch is one critic
    step, and the generator steps after every ``critic_steps``-th batch, so every model at a budget
    sees the same number of training images. The critic is a DCGAN discriminator with batch norm
    (Arjovsky et al.) and its weights are clipped to ``[-clip_value, clip_value]`` after each step.
    Simplified from the paper: no 100-critic-step warm-up phase.

    With ``gradient_penalty`` (WGAN-GP): ``lambda * (||grad_x C(x_hat)||_2 - 1)^2`` on random
    interpolates ``x_hat`` with lambda 10, Adam 1e-4 with betas (0, 0.9), no clipping and no batch
    norm in the critic (per-example layer norm instead). The penalty is computed in float32, outside
    mixed precision, because its second-order gradient overflows in float16.
    """

    config_class = WGANConfig
    loss_names = ("critic_loss", "g_loss", "wasserstein", "penalty")

    def __init__(self, config: WGANConfig, image_shape):
        super().__init__(config, image_shape)
        self.generator = ConvGenerator(config.latent_dim, image_shape, config.base_width)
        norm = "layer" if config.gradient_penalty else "batch"
        self.critic = ConvEncoder(image_shape, config.base_width, 1, norm=norm, slope=0.2)

    def build_optimizers(self):
        c = self.config
        if c.gradient_penalty:
            lr = c.learning_rate or 1e-4
            make = lambda params: torch.optim.Adam(params, lr, betas=(0.0, 0.9))  # noqa: E731
        else:
            lr = c.learning_rate or 5e-5
            make = lambda params: torch.optim.RMSprop(params, lr)  # noqa: E731
        self.optimizers = {
            "generator": make(self.generator.parameters()),
            "critic": make(self.critic.parameters()),
        }
        return self.optimizers

    def _penalty(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
        mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        scores = self.critic(mixed)
        (grad,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
        return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()

    def train_step(self, batch, step, ctx: StepContext):
        c = self.config
        opt_g, opt_c = self.optimizers["generator"], self.optimizers["critic"]
        score = lambda z: self.critic(self.generator(z))  # latent optimisation raises it
        z = c.optimised_latents(torch.randn(batch.shape[0], c.latent_dim, device=batch.device), score)
        with ctx.autocast():
            fake = self.generator(z).detach()
            wasserstein = self.critic(batch).mean() - self.critic(fake).mean()
            critic_loss = -wasserstein
        losses = {"wasserstein": wasserstein.item()}
        if c.gradient_penalty:
            with ctx.full_precision():
                penalty = self._penalty(batch.float(), fake.float())
            critic_loss = critic_loss.float() + c.penalty_weight * penalty
            losses["penalty"] = penalty.item()
        opt_c.zero_grad(set_to_none=True)
        ctx.backward(critic_loss)
        ctx.step(opt_c)
        if not c.gradient_penalty:
            with torch.no_grad():
                for parameter in self.critic.parameters():
                    parameter.clamp_(-c.clip_value, c.clip_value)
        losses["critic_loss"] = critic_loss.item()

        if (step + 1) % c.critic_steps == 0:
            z = c.optimised_latents(torch.randn(batch.shape[0], c.latent_dim, device=batch.device),
                                    score)
            with ctx.autocast():
                g_loss = -self.critic(self.generator(z)).mean()
            opt_g.zero_grad(set_to_none=True)
            ctx.backward(g_loss, inputs=self.generator.parameters())
            ctx.step(opt_g)
            losses["g_loss"] = g_loss.item()
        return losses
