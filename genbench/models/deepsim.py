"""DeePSiM autoencoder (Dosovitskiy & Brox 2016): feature, adversarial and image-space losses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import distributions as D
from torch import nn

from genbench.models.adversarial import (
    adam,
    non_saturating_d_loss,
    non_saturating_g_loss,
    optimizer_step,
)
from genbench.models.base import ModelConfig, StepContext, evaluating, require, set_requires_grad
from genbench.models.gan import LatentGenerator, diagonal_gaussian
from genbench.models.layers import ConvEncoder, ConvGenerator
from genbench.models.registry import register_model

LEAKY_SLOPE = 0.3  # the paper's LReLU alpha


@dataclass
class DeePSiMConfig(ModelConfig):
    latent_dim: int = 64
    base_width: int = 32
    comparator: Literal["random", "discriminator"] = "random"
    comparator_seed: int = 0  # weights of the random comparator
    comparator_width: int = 32
    variational: bool = True  # KL-regularised bottleneck, so the model samples from the prior
    reduction: Literal["mean", "sum"] = "mean"
    # Defaults for reduction="mean" (every term a per-dimension mean; the KL is divided by the
    # number of pixels so it sits on the same scale). The paper's weights, for summed losses,
    # are feature 0.01, adversarial 100, image 2e-6.
    feature_weight: float = 1.0
    adversarial_weight: float = 0.05
    image_weight: float = 0.1
    kl_weight: float = 1.0
    pause_ratio: float = 0.1  # skip the discriminator update while L_discr / L_adv < this
    learning_rate: float = 2e-4
    beta1: float = 0.9
    beta2: float = 0.999

    def validate(self, image_shape):
        require(self.latent_dim >= 1, f"latent_dim must be >= 1, got {self.latent_dim}")
        require(self.learning_rate > 0, "learning_rate must be > 0")
        for name in ("feature_weight", "adversarial_weight", "image_weight", "kl_weight"):
            require(getattr(self, name) >= 0, f"{name} must be >= 0")
        require(self.pause_ratio >= 0, "pause_ratio must be >= 0")


class RandomComparator(nn.Module):
    """A fixed convolutional net with random weights (seeded): three 3x3 conv + LReLU layers,
    the last two strided; Kaiming-initialised so its features stay of order one."""

    def __init__(self, channels: int, width: int, seed: int):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.LeakyReLU(LEAKY_SLOPE),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.LeakyReLU(LEAKY_SLOPE),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.LeakyReLU(LEAKY_SLOPE),
        )
        with torch.no_grad():
            for layer in self.net:
                if isinstance(layer, nn.Conv2d):
                    fan_in = layer.weight[0].numel()
                    std = (2 / ((1 + LEAKY_SLOPE**2) * fan_in)) ** 0.5
                    layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * std)
                    layer.bias.zero_()
        set_requires_grad(self, False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)  # [B, F]


def squared_distance(a: torch.Tensor, b: torch.Tensor, reduction: str) -> torch.Tensor:
    """``||a - b||^2`` per example, summed (``"sum"``, the paper's setting) or averaged
    (``"mean"``) over all dimensions but the first, then averaged over the batch; in float32."""
    squared = (a.float() - b.float()).pow(2).flatten(1)
    per_example = squared.sum(1) if reduction == "sum" else squared.mean(1)
    return per_example.mean()


# The paper's L_adv = -log D(G(x)) and L_discr = -log D(x) - log(1 - D(G(x))), under the names
# deepsim-inversion imports them by.
adversarial_loss = non_saturating_g_loss
discriminator_loss = non_saturating_d_loss


def step_discriminator_unless_paused(d_loss: torch.Tensor, adversarial: torch.Tensor,
                                     pause_ratio: float, optimizer: torch.optim.Optimizer,
                                     ctx: StepContext) -> bool:
    """One step of ``optimizer`` (the discriminator's) on ``d_loss``, skipped while
    ``L_discr / L_adv < pause_ratio`` so the discriminator does not overfit (the paper's 0.1).
    Returns whether the step was skipped."""
    paused = d_loss.item() < pause_ratio * adversarial.item()
    if not paused:
        optimizer_step(ctx, optimizer, d_loss, [p for g in optimizer.param_groups for p in g["params"]])
    return paused


@register_model("deepsim")
class DeePSiM(LatentGenerator):
    """DeePSiM autoencoder: encoder + generator trained through a comparator's features, an
    adversarial loss and a small image-space loss (Dosovitskiy & Brox 2016).

    With ``x_rec = G(E(x))``: ``L = feature_weight * ||C(x_rec) - C(x)||^2
    + adversarial_weight * L_adv + image_weight * ||x_rec - x||^2`` (+ ``kl_weight * KL`` when
    ``variational``), where ``L_adv = -log D(x_rec)`` and the discriminator minimises
    ``L_discr = -log D(x) - log(1 - D(x_rec))``. Each norm is summed over dimensions
    (``reduction="sum"``, the paper's setting) or averaged (``"mean"``, the default, with the
    weights in the config); both are averaged over the batch.

    Comparator ``C``: a random-weight convnet with a fixed seed (``random``) or the
    discriminator's own last-block features (``discriminator``); a classifier trained by the suite
    and pretrained ImageNet nets come later. Leaky ReLU 0.3 everywhere, linear generator output
    (clamped to ``[-1, 1]`` when sampling), Adam 2e-4 with betas (0.9, 0.999), batch 64. As in the
    paper, the discriminator's update is skipped while ``L_discr / L_adv < pause_ratio`` (0.1).

    ``variational=true`` puts a Gaussian bottleneck with a KL term to N(0, I) in (the paper's VAE
    variant), so the model can sample from the prior; the benchmark uses it. The plain
    autoencoder (``variational=false``) still samples from N(0, I) latents for grids, but its
    samples are not meaningful and it reports reconstruction metrics only.
    """

    config_class = DeePSiMConfig
    loss_names = ("loss", "feature", "adversarial", "image", "kl", "d_loss", "d_paused")

    def __init__(self, config: DeePSiMConfig, image_shape):
        super().__init__(config, image_shape)
        w = config.base_width
        code = 2 * config.latent_dim if config.variational else config.latent_dim
        self.encoder = ConvEncoder(image_shape, w, code, slope=LEAKY_SLOPE)
        self.generator = ConvGenerator(
            config.latent_dim, image_shape, w, slope=LEAKY_SLOPE, output="linear"
        )
        self.discriminator = ConvEncoder(image_shape, w, 1, slope=LEAKY_SLOPE)
        if config.comparator == "random":
            self.comparator = RandomComparator(
                image_shape[0], config.comparator_width, config.comparator_seed
            )

    def build_optimizers(self):
        c = self.config
        autoencoder = list(self.encoder.parameters()) + list(self.generator.parameters())
        self.optimizers = {
            "autoencoder": adam(autoencoder, c.learning_rate, c),
            "discriminator": adam(self.discriminator, c.learning_rate, c),
        }
        return self.optimizers

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, D.Distribution | None]:
        code = self.encoder(x)
        if not self.config.variational:
            return code, None
        posterior = diagonal_gaussian(code)
        return (posterior.rsample() if self.training else posterior.mean), posterior

    def _compare(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.comparator == "random":
            return self.comparator(x)
        return self.discriminator(x, return_features=True)[1][-1].flatten(1)

    def _distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return squared_distance(a, b, self.config.reduction)

    @property
    def can_sample(self) -> bool:
        """Only the variational model's prior samples mean anything (metrics check this)."""
        return self.config.variational

    @evaluating
    def approximate_posterior(self, x: torch.Tensor) -> D.Distribution:
        """q(z|x) (``variational`` only), event shape ``[latent_dim]``."""
        if not self.config.variational:
            raise AttributeError("deepsim without variational=true has no approximate posterior")
        return self._encode(x)[1]

    @evaluating
    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``G(E(x))`` at the posterior mean, ``[B, C, H, W]`` clamped to ``[-1, 1]``."""
        return self.generator(self._encode(x)[0]).float().clamp(-1, 1)

    @evaluating
    @torch.no_grad()
    def sample(self, n, generator=None):
        z = self.randn(n, self.config.latent_dim, generator=generator)
        return self.generator(z).float().clamp(-1, 1)

    def train_step(self, batch, step, ctx: StepContext):
        c = self.config
        with ctx.autocast():
            z, posterior = self._encode(batch)
            reconstruction = self.generator(z)
            adversarial = adversarial_loss(self.discriminator(reconstruction))
            with torch.no_grad():
                target_features = self._compare(batch)
            feature = self._distance(self._compare(reconstruction), target_features)
            image = self._distance(reconstruction, batch)
        kl = torch.zeros((), device=batch.device)
        if posterior is not None:
            with ctx.full_precision():
                kl = D.kl_divergence(
                    D.Independent(D.Normal(posterior.mean.float(), posterior.stddev.float()), 1),
                    self.prior(),
                ).mean()
                if c.reduction == "mean":
                    kl_term = kl / batch[0].numel()
                else:
                    kl_term = kl
        else:
            kl_term = kl
        loss = (
            c.feature_weight * feature
            + c.adversarial_weight * adversarial
            + c.image_weight * image
            + c.kl_weight * kl_term
        )
        opt_ae = self.optimizers["autoencoder"]
        optimizer_step(ctx, opt_ae, loss, opt_ae.param_groups[0]["params"])

        with ctx.autocast():
            d_loss = discriminator_loss(self.discriminator(batch),
                                        self.discriminator(reconstruction.detach()))
        paused = step_discriminator_unless_paused(d_loss, adversarial, c.pause_ratio,
                                                  self.optimizers["discriminator"], ctx)
        return {
            "loss": loss.item(),
            "feature": feature.item(),
            "adversarial": adversarial.item(),
            "image": image.item(),
            "kl": kl.item(),
            "d_loss": d_loss.item(),
            "d_paused": float(paused),
        }
