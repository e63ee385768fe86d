"""Convolutional variational autoencoder (Kingma & Welling 2014)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import distributions as D

from genbench.models.base import GenerativeModel, ModelConfig, StepContext, evaluating, require
from genbench.models.layers import ConvEncoder, ConvGenerator
from genbench.models.registry import register_model


@dataclass
class VAEConfig(ModelConfig):
    latent_dim: int = 32
    base_width: int = 32
    observation: Literal["bernoulli", "gaussian"] = "bernoulli"
    learning_rate: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    kl_weight: float = 1.0
    init_log_sigma: float = math.log(0.1)  # gaussian only: start of the learned pixel std

    def validate(self, image_shape):
        require(self.latent_dim >= 1, f"latent_dim must be >= 1, got {self.latent_dim}")
        require(self.base_width >= 1, f"base_width must be >= 1, got {self.base_width}")
        require(self.learning_rate > 0, "learning_rate must be > 0")
        require(self.kl_weight >= 0, "kl_weight must be >= 0")


def binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Stochastic binarisation: pixel ``x`` in ``[-1, 1]`` becomes 1 with probability ``(x+1)/2``."""
    probs = (x + 1) / 2
    if generator is None:
        return torch.bernoulli(probs)
    return torch.bernoulli(probs.cpu(), generator=generator).to(x.device)


@register_model("vae")
class VAE(GenerativeModel):
    """Convolutional VAE: Gaussian q(z|x), N(0, I) prior, Bernoulli or Gaussian p(x|z).

    Loss (per image, nats): ``-ELBO = -E_q[log p(x|z)] + kl_weight * KL(q(z|x) || p(z))`` with one
    reparameterised sample, averaged over the batch; Adam.

    Observation models (``observation``):

    - ``bernoulli``: on binarized pixels ``{0, 1}`` (the setting of published MNIST likelihoods);
      training binarizes each batch stochastically, ``p(pixel = 1) = (x + 1) / 2``.
    - ``gaussian``: ``N(mean(z), sigma^2)`` on continuous pixels in ``[-1, 1]``, one learned
      ``sigma`` for all pixels.

    Likelihood protocol: ``prior()``, ``observation_model(z)`` (event shape ``[C, H, W]``) and
    ``approximate_posterior(x)`` take the data in the observation model's space: binarized
    ``{0, 1}`` pixels for ``bernoulli`` (the encoder sees them as ``{-1, 1}``, as in training),
    continuous ``[-1, 1]`` pixels for ``gaussian``.
    """

    config_class = VAEConfig
    loss_names = ("loss", "reconstruction", "kl")

    def __init__(self, config: VAEConfig, image_shape):
        super().__init__(config, image_shape)
        self.encoder = ConvEncoder(image_shape, config.base_width, 2 * config.latent_dim, slope=0.2)
        self.decoder = ConvGenerator(
            config.latent_dim, image_shape, config.base_width, output="linear"
        )
        if config.observation == "gaussian":
            self.log_sigma = torch.nn.Parameter(torch.tensor(float(config.init_log_sigma)))

    def build_optimizers(self):
        c = self.config
        self.optimizers = {
            "adam": torch.optim.Adam(self.parameters(), c.learning_rate, betas=(c.beta1, c.beta2))
        }
        return self.optimizers

    # likelihood protocol -------------------------------------------------------------------
    def prior(self) -> D.Distribution:
        zeros = torch.zeros(self.config.latent_dim, device=self.device)
        return D.Independent(D.Normal(zeros, torch.ones_like(zeros)), 1)

    def _posterior(self, x: torch.Tensor) -> D.Distribution:
        mean, log_var = self.encoder(x).chunk(2, dim=1)  # [B, latent_dim] each
        return D.Independent(D.Normal(mean, torch.exp(0.5 * log_var)), 1)

    def _observation(self, z: torch.Tensor) -> D.Distribution:
        out = self.decoder(z)  # [B, C, H, W]: logits or Gaussian means
        if self.config.observation == "bernoulli":
            return D.Independent(D.Bernoulli(logits=out.float()), 3)
        return D.Independent(D.Normal(out.float(), self.log_sigma.exp().float()), 3)

    @evaluating
    def approximate_posterior(self, x: torch.Tensor) -> D.Distribution:
        """q(z|x) for ``x [B, C, H, W]`` in the observation space (``{0, 1}`` for bernoulli,
        ``[-1, 1]`` for gaussian); event shape ``[latent_dim]``."""
        return self._posterior(self._encoder_input(x))

    def _encoder_input(self, observed: torch.Tensor) -> torch.Tensor:
        return observed * 2 - 1 if self.config.observation == "bernoulli" else observed

    @evaluating
    def observation_model(self, z: torch.Tensor) -> D.Distribution:
        """p(x|z) for ``z [B, latent_dim]``; event shape ``[C, H, W]`` (see class docstring)."""
        return self._observation(z)

    @property
    def observation_space(self) -> str:
        """``binary`` (Bernoulli on {0, 1} pixels) or ``continuous``: what the metrics feed it."""
        return "binary" if self.config.observation == "bernoulli" else "continuous"

    def observed(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The data the observation model scores: binarized for Bernoulli, ``x`` itself otherwise."""
        return binarize(x, generator) if self.config.observation == "bernoulli" else x

    # training -----------------------------------------------------------------------------
    def train_step(self, batch, step, ctx: StepContext):
        c = self.config
        optimizer = self.optimizers["adam"]
        target = self.observed(batch)
        with ctx.autocast():
            posterior = self._posterior(self._encoder_input(target))
            z = posterior.rsample()
            decoded = self.decoder(z)
        with ctx.full_precision():
            if c.observation == "bernoulli":
                obs = D.Independent(D.Bernoulli(logits=decoded.float()), 3)
            else:
                obs = D.Independent(D.Normal(decoded.float(), self.log_sigma.exp()), 3)
            reconstruction = -obs.log_prob(target).mean()
            kl = D.kl_divergence(posterior, self.prior()).mean()
            loss = reconstruction + c.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        ctx.backward(loss)
        ctx.step(optimizer)
        return {"loss": loss.item(), "reconstruction": reconstruction.item(), "kl": kl.item()}

    @evaluating
    @torch.no_grad()
    def sample(self, n, generator=None):
        """Decoder means of ``z ~ N(0, I)``: ``2 * sigmoid(logits) - 1`` or the clamped Gaussian mean."""
        z = self.randn(n, self.config.latent_dim, generator=generator)
        out = self.decoder(z).float()
        if self.config.observation == "bernoulli":
            return torch.sigmoid(out) * 2 - 1
        return out.clamp(-1, 1)

    @evaluating
    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder mean at the posterior mean, ``[B, C, H, W]`` in ``[-1, 1]``."""
        out = self.decoder(self._posterior(x).mean).float()
        if self.config.observation == "bernoulli":
            return torch.sigmoid(out) * 2 - 1
        return out.clamp(-1, 1)
