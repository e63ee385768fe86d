"""Probabilistic PCA (Tipping & Bishop 1999), fitted in closed form: an exact-likelihood reference."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import distributions as D

from genbench.models.base import GenerativeModel, ModelConfig, StepContext, require
from genbench.models.registry import register_model

MAX_PIXELS = 3 * 64 * 64


@dataclass
class PPCAConfig(ModelConfig):
    latent_dim: int = 32
    min_variance: float = 1e-6  # floor on sigma^2, for constant pixels (MNIST's borders)

    def validate(self, image_shape):
        dims = image_shape[0] * image_shape[1] * image_shape[2]
        # The fit keeps a [D, D] float64 second-moment matrix: 3x64x64 images need 1.2 GB.
        largest = int((MAX_PIXELS // image_shape[0]) ** 0.5)
        require(dims <= MAX_PIXELS,
                f"ppca holds a {dims}x{dims} covariance for {image_shape} images, more than "
                f"{MAX_PIXELS} values per image allows; use --image-size {largest} or smaller")
        require(
            1 <= self.latent_dim < dims,
            f"latent_dim must be in 1..{dims - 1} for {image_shape} images, got {self.latent_dim}",
        )
        require(self.min_variance > 0, "min_variance must be > 0")


@register_model("ppca")
class PPCA(GenerativeModel):
    """Probabilistic PCA fitted in closed form, with an exact marginal likelihood (Tipping & Bishop 1999).

    ``x = W z + mu + eps``, ``z ~ N(0, I_q)``, ``eps ~ N(0, sigma^2 I_d)``, fitted by maximum
    likelihood (Tipping & Bishop 1999, Eqs. 7-8).

    Training streams the batches once through float64 sums of ``x`` and ``x x^T`` (``x`` flattened,
    in ``[-1, 1]``); the fit is the eigendecomposition of the sample covariance ``S``:
    ``sigma^2`` is the mean of the ``d - q`` smallest eigenvalues and ``W = U_q (L_q - sigma^2 I)^(1/2)``.
    Its marginal ``p(x) = N(mu, W W^T + sigma^2 I)`` is exact (:meth:`marginal`), which makes it the
    reference for checking likelihood estimators. ``sample`` clamps to ``[-1, 1]``; the likelihood
    protocol works on unclamped continuous ``x``.
    """

    trains_by_gradient = False
    config_class = PPCAConfig
    loss_names = ("images_seen",)

    def __init__(self, config: PPCAConfig, image_shape):
        super().__init__(config, image_shape)
        dims = image_shape[0] * image_shape[1] * image_shape[2]
        q = config.latent_dim
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("sum_x", torch.zeros(dims, dtype=torch.float64))
        self.register_buffer("sum_xx", torch.zeros(dims, dims, dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dims))
        self.register_buffer("weight", torch.zeros(dims, q))  # W [d, q]
        self.register_buffer("noise_variance", torch.ones(()))  # sigma^2
        self.register_buffer("fitted_count", torch.zeros((), dtype=torch.float64))

    def train_step(self, batch, step, ctx: StepContext):
        x = batch.detach().flatten(1).double()  # [B, d]
        self.count += x.shape[0]
        self.sum_x += x.sum(0)
        self.sum_xx += x.T @ x
        return {"images_seen": float(self.count)}

    def _refit(self) -> None:
        """Closed-form maximum likelihood from the streamed sums (only when new data came in)."""
        if self.count == 0 or self.fitted_count == self.count:
            return
        mean = self.sum_x / self.count
        covariance = self.sum_xx / self.count - torch.outer(mean, mean)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
        eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
        q = self.config.latent_dim
        variance = eigenvalues[q:].mean().clamp_min(self.config.min_variance)
        scale = (eigenvalues[:q] - variance).clamp_min(0).sqrt()
        self.mean.copy_(mean)
        self.weight.copy_(eigenvectors[:, :q] * scale)
        self.noise_variance.copy_(variance)
        self.fitted_count.copy_(self.count)

    def state_dict(self, *args, **kwargs):
        self._refit()
        return super().state_dict(*args, **kwargs)

    # likelihood protocol -------------------------------------------------------------------
    def prior(self) -> D.Distribution:
        zeros = torch.zeros(self.config.latent_dim, device=self.mean.device)
        return D.Independent(D.Normal(zeros, torch.ones_like(zeros)), 1)

    def observation_model(self, z: torch.Tensor) -> D.Distribution:
        """``N(W z + mu, sigma^2 I)`` for ``z [B, q]``; event shape ``[C, H, W]``."""
        self._refit()
        loc = (z @ self.weight.T + self.mean).view(-1, *self.image_shape)
        return D.Independent(D.Normal(loc, self.noise_variance.sqrt().expand_as(loc)), 3)

    def approximate_posterior(self, x: torch.Tensor) -> D.Distribution:
        """The exact posterior ``N(M^-1 W^T (x - mu), sigma^2 M^-1)``, ``M = W^T W + sigma^2 I``."""
        self._refit()
        w, variance = self.weight.double(), self.noise_variance.double()
        m = w.T @ w + variance * torch.eye(w.shape[1], dtype=w.dtype, device=w.device)
        m_inv = torch.linalg.inv(m)
        centred = x.flatten(1).double() - self.mean.double()
        loc = centred @ w @ m_inv.T  # [B, q]
        covariance = variance * m_inv
        return D.MultivariateNormal(loc.float(), covariance_matrix=covariance.float())

    def marginal(self) -> D.MultivariateNormal:
        """The exact ``p(x) = N(mu, W W^T + sigma^2 I)`` over flattened ``x`` (float64)."""
        self._refit()
        w = self.weight.double()
        covariance = w @ w.T + self.noise_variance.double() * torch.eye(
            w.shape[0], dtype=w.dtype, device=w.device
        )
        return D.MultivariateNormal(self.mean.double(), covariance_matrix=covariance)

    def sample(self, n, generator=None):
        self._refit()
        z = self.randn(n, self.config.latent_dim, generator=generator)
        noise = self.randn(n, self.mean.shape[0], generator=generator)
        x = z @ self.weight.T + self.mean + self.noise_variance.sqrt() * noise
        return x.view(n, *self.image_shape).clamp(-1, 1)
