"""The likelihood protocol: what a model must offer to be evaluated (duck typing, no base class).

Any object with these methods can be evaluated, so users can bring their own models.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import distributions as D


@runtime_checkable
class LikelihoodModel(Protocol):
    def prior(self) -> D.Distribution:
        """p(z): event shape ``[latent_dim]``."""

    def observation_model(self, z: torch.Tensor) -> D.Distribution:
        """p(x|z) for 2-D ``z [B, latent_dim]``: event shape ``[C, H, W]``, so ``log_prob(x)`` is ``[B]``."""


@runtime_checkable
class EncoderModel(LikelihoodModel, Protocol):
    def approximate_posterior(self, x: torch.Tensor) -> D.Distribution:
        """q(z|x) for ``x [B, C, H, W]``: event shape ``[latent_dim]``."""
