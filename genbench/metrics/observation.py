"""A Gaussian pixel likelihood around a deterministic generator, and the choice of its width.

GANs and other decoder-based models map ``z`` to an image with no observation model, so
``log p(x)`` is undefined. Following Wu et al. 2017, we give them ``p(x|z) = N(G(z), sigma^2 I)``
with one scalar ``sigma`` chosen on validation data, and estimate ``log p(x)`` with AIS.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import distributions as D

from genbench.core.errors import UsageError
from genbench.metrics.likelihood import DEFAULT_BATCH_SIZE, DEFAULT_NUM_SAMPLES, log_likelihood

# Pixel standard deviations for data in [-1, 1], log-spaced over two decades (Wu et al. 2017 pick
# sigma from such a grid on a validation set).
DEFAULT_SIGMA_GRID = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class GaussianObservation:
    """The likelihood protocol for a generator: ``p(z)`` and ``p(x|z) = N(G(z), sigma^2 I)``.

    ``model_or_generate_fn`` is a model with ``generate(z)`` (``[B, latent_dim]`` to
    ``[B, C, H, W]``) and ``prior()``, such as genbench's GANs, or a bare function ``G(z)`` together
    with ``prior=`` (a distribution with event shape ``[latent_dim]``). ``sigma`` is in the units of
    ``x`` (``[-1, 1]`` pixels for genbench models). ``G`` must be differentiable for AIS.
    """

    def __init__(
        self,
        model_or_generate_fn,
        sigma: float,
        prior: D.Distribution | None = None,
    ):
        if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
            raise UsageError(f"sigma must be a finite number > 0, got {sigma!r}")
        self.sigma = float(sigma)
        generate = getattr(model_or_generate_fn, "generate", None)
        if callable(generate):
            self.generate: Callable[[torch.Tensor], torch.Tensor] = generate
            self._prior = prior if prior is not None else getattr(model_or_generate_fn, "prior", None)
        elif callable(model_or_generate_fn):
            self.generate = model_or_generate_fn
            self._prior = prior
        else:
            raise UsageError("GaussianObservation needs a model with generate(z) or a function G(z)")
        if self._prior is None:
            raise UsageError("GaussianObservation needs a prior: the model's prior() or prior=...")
        # A model with an encoder keeps it, so importance sampling can use q(z|x) as proposal.
        encoder = getattr(model_or_generate_fn, "approximate_posterior", None)
        if callable(encoder) and getattr(model_or_generate_fn, "can_sample", True):
            self.approximate_posterior = encoder

    def prior(self) -> D.Distribution:
        """``p(z)``, event shape ``[latent_dim]``."""
        return self._prior() if callable(self._prior) else self._prior

    def observation_model(self, z: torch.Tensor) -> D.Distribution:
        """``N(G(z), sigma^2 I)`` for ``z [B, latent_dim]``; event shape ``[C, H, W]``."""
        if z.dim() != 2:
            raise UsageError(f"observation_model takes z [B, latent_dim], got shape {list(z.shape)}")
        mean = self.generate(z)  # [B, C, H, W]
        scale = torch.full_like(mean, self.sigma)
        return D.Independent(D.Normal(mean, scale), mean.dim() - 1)


class _PriorProposal:
    """A model whose "encoder" is the prior: importance sampling with ``q(z|x) = p(z)``."""

    def __init__(self, model):
        self.model = model

    def prior(self) -> D.Distribution:
        return self.model.prior()

    def observation_model(self, z: torch.Tensor) -> D.Distribution:
        return self.model.observation_model(z)

    def approximate_posterior(self, x: torch.Tensor) -> D.Distribution:
        return self.model.prior().expand(torch.Size([x.shape[0]]))


def select_sigma(
    model,
    x_validation: torch.Tensor,
    grid: tuple[float, ...] = DEFAULT_SIGMA_GRID,
    method: Literal["ais", "is", "is-prior"] = "ais",
    num_samples: int = DEFAULT_NUM_SAMPLES,
    batch_size: int = DEFAULT_BATCH_SIZE,
    generator: torch.Generator | None = None,
    prior: D.Distribution | None = None,
    **ais_options,
) -> tuple[float, dict[float, float]]:
    """The ``sigma`` of :class:`GaussianObservation` with the highest mean validation ``log p(x)``.

    Returns ``(sigma, table)``, ``table`` mapping each grid value to the mean estimated log-likelihood
    of ``x_validation [N, C, H, W]`` in nats per example (NaN where the estimate failed). ``method``:
    ``"ais"`` (``ais_options`` as in :func:`log_likelihood`), ``"is"`` (importance sampling with
    ``num_samples`` draws from the model's own encoder ``q(z|x)``) or ``"is-prior"`` (importance
    sampling with ``num_samples`` prior draws: cheap, but only accurate for small latent spaces or
    wide ``sigma``). Every ``sigma`` sees the same random numbers, so the comparison is not blurred
    by estimator noise. The cost is ``len(grid)`` likelihood runs: choose few examples and steps.

    Every estimator here is a stochastic lower bound that falls further short at small ``sigma``,
    where the posterior is narrow; choose with the estimator (and settings) the reported value
    uses, so that a near tie on validation is a near tie in the reported number too.
    """
    if not grid:
        raise UsageError("grid must hold at least one sigma")
    if method not in ("ais", "is", "is-prior"):
        raise UsageError(f"method must be 'ais', 'is' or 'is-prior', got {method!r}")
    if method != "ais" and ais_options:
        raise UsageError(f"{', '.join(ais_options)} apply to method='ais' only")
    seed = int(torch.randint(2**62, (1,), generator=generator)) if generator is not None else \
        int(torch.randint(2**62, (1,)))
    table: dict[float, float] = {}
    for sigma in grid:
        wrapped = GaussianObservation(model, sigma, prior=prior)
        common = torch.Generator().manual_seed(seed)  # common random numbers across the grid
        if method == "ais":
            result = log_likelihood(wrapped, x_validation, method="ais", batch_size=batch_size,
                                    generator=common, **ais_options)
        elif method == "is":
            if not callable(getattr(wrapped, "approximate_posterior", None)):
                raise UsageError("method='is' needs a model with an encoder, approximate_posterior(x); "
                                 "use 'ais' or 'is-prior'")
            result = log_likelihood(wrapped, x_validation, num_samples=num_samples, method="is",
                                    batch_size=batch_size, generator=common)
        else:
            result = log_likelihood(_PriorProposal(wrapped), x_validation, num_samples=num_samples,
                                    method="is", batch_size=batch_size, generator=common)
        table[float(sigma)] = result.mean()
    finite = {s: v for s, v in table.items() if math.isfinite(v)}
    if not finite:
        raise UsageError("no sigma in the grid gave a finite log-likelihood; widen the grid")
    return max(finite, key=finite.get), table
