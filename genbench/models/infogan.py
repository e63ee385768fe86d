"""InfoGAN (Chen et al., 2016): a GAN whose latent codes are made to carry information about the
image by maximising a variational lower bound of their mutual information with it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from genbench.core.errors import UsageError
from genbench.models.adversarial import (
    adam_pair,
    discriminator_probabilities,
    non_saturating_d_loss,
    non_saturating_g_loss,
    optimizer_step,
)
from genbench.models.base import GenerativeModel, ModelConfig, StepContext, evaluating, require
from genbench.models.layers import ConvEncoder, ConvGenerator
from genbench.models.registry import register_model

CATEGORICAL = "categorical"
CONTINUOUS_RANGE = 2.0  # vary_code shows continuous codes on [-2, 2], beyond the [-1, 1] trained on
LOG_2PI = math.log(2 * math.pi)


@dataclass
class InfoGANConfig(ModelConfig):
    latent_dim: int = 62  # incompressible noise z ~ N(0, I) (62 in the paper's MNIST model)
    categorical_dim: int = 10  # values of the one categorical code c1 ~ Cat(1/K)
    continuous_dim: int = 2  # continuous codes c2, c3, ... ~ U[-1, 1]
    info_weight: float = 1.0  # lambda, the weight of the mutual-information term
    continuous_std: Literal["fixed", "learned"] = "fixed"  # Q's Gaussian: unit or learned std
    base_width: int = 32
    learning_rate: float = 2e-4  # discriminator and Q (the paper's 2e-4)
    generator_learning_rate: float = 1e-3  # the paper's 1e-3
    beta1: float = 0.5
    beta2: float = 0.999

    def validate(self, image_shape):
        require(self.categorical_dim >= 2, f"categorical_dim must be >= 2, got {self.categorical_dim}")
        require(self.continuous_dim >= 0, f"continuous_dim must be >= 0, got {self.continuous_dim}")
        require(self.generator_learning_rate > 0,
                f"generator_learning_rate must be > 0, got {self.generator_learning_rate}")


class InfoDiscriminator(nn.Module):
    """The discriminator trunk shared by ``D`` (one real/fake logit) and ``Q`` (the codes).

    Image ``[B, C, H, W]`` → DCGAN conv trunk → features ``[B, F]``; ``D``: linear → ``[B, 1]``;
    ``Q``: linear, leaky ReLU, linear → categorical logits ``[B, K]``, continuous means ``[B, L]``
    and, with a learned std, log-stds ``[B, L]``.
    """

    def __init__(self, image_shape, base_width: int, categorical_dim: int, continuous_dim: int,
                 learned_std: bool):
        super().__init__()
        features = 8 * base_width
        self.trunk = nn.Sequential(
            ConvEncoder(image_shape, base_width, features, slope=0.2), nn.LeakyReLU(0.2)
        )
        self.d_head = nn.Linear(features, 1)
        self.sizes = [categorical_dim, continuous_dim, continuous_dim if learned_std else 0]
        self.q_head = nn.Sequential(
            nn.Linear(features, features), nn.LeakyReLU(0.2), nn.Linear(features, sum(self.sizes))
        )

    def forward(self, x: torch.Tensor):
        """``(real/fake logit [B, 1], categorical logits [B, K], means [B, L], log-stds [B, L] or
        an empty ``[B, 0]``)``."""
        h = self.trunk(x)  # [B, F]
        return (self.d_head(h), *self.q_head(h).split(self.sizes, dim=1))


@register_model("infogan")
class InfoGAN(GenerativeModel):
    """InfoGAN (Chen et al., 2016): noise plus categorical and continuous codes that a Q head,
    sharing the discriminator's trunk, must recover (a mutual-information lower bound).

    Latent: noise ``z ~ N(0, I)`` (``latent_dim``), one categorical code ``c1`` with
    ``categorical_dim`` equiprobable values (one-hot) and ``continuous_dim`` codes ``~ U[-1, 1]``,
    concatenated and fed to the DCGAN generator. The discriminator's conv trunk is shared with
    ``Q``, which predicts the codes of a fake: a categorical distribution for ``c1`` and a factored
    Gaussian for the continuous codes (unit std, or a learned one with ``continuous_std=learned``).

    The mutual-information lower bound ``L_I = E[log Q(c | G(z, c))] + H(c)`` enters as the
    *info loss* ``-E[log Q(c | G(z, c))]`` (cross-entropy for ``c1`` plus the Gaussian negative
    log-likelihood of the continuous codes, nats): ``info_weight`` times it is added to the
    discriminator-and-Q loss (on detached fakes) and to the generator loss, as in the paper's
    code. Adversarial part: the non-saturating loss of ``gan``. Adam with beta1 0.5, 2e-4 for
    ``D``/``Q`` and 1e-3 for ``G`` (the paper's rates).

    Unsupervised: class labels are not used (``conditional = False``). :meth:`vary_code` and
    :func:`write_code_figure` show what each code learned. No ``prior()``: the latent mixes
    discrete and bounded codes, so the likelihood metrics report n/a.

    Simplification: the DCGAN networks of ``layers.py`` (no batch norm in ``Q``'s hidden layer)
    instead of the paper's per-dataset architectures.
    """

    config_class = InfoGANConfig
    loss_names = ("d_loss", "g_loss", "d_real", "d_fake", "info_loss", "info_categorical",
                  "info_continuous")

    def __init__(self, config: InfoGANConfig, image_shape):
        super().__init__(config, image_shape)
        c = config
        self.code_dim = c.categorical_dim + c.continuous_dim
        self.generator = ConvGenerator(c.latent_dim + self.code_dim, image_shape, c.base_width)
        self.discriminator = InfoDiscriminator(image_shape, c.base_width, c.categorical_dim,
                                               c.continuous_dim, c.continuous_std == "learned")

    def build_optimizers(self):
        self.optimizers = adam_pair(self.generator, self.discriminator, self.config,
                                    g_lr=self.config.generator_learning_rate)
        return self.optimizers

    # --- latent codes ----------------------------------------------------------------------------

    def code_names(self) -> list[str]:
        """``["categorical", "continuous_0", ...]``: the codes :meth:`vary_code` takes."""
        return [CATEGORICAL] + [f"continuous_{i}" for i in range(self.config.continuous_dim)]

    def draw_codes(self, n: int, generator: torch.Generator | None = None):
        """``(z [n, latent_dim], categorical int64 [n], continuous [n, L] in [-1, 1])`` on the
        model's device; drawn on the CPU when ``generator`` is given."""
        c = self.config
        device = "cpu" if generator is not None else self.device
        z = torch.randn(n, c.latent_dim, generator=generator, device=device)
        categorical = torch.randint(c.categorical_dim, (n,), generator=generator, device=device)
        continuous = torch.rand(n, c.continuous_dim, generator=generator, device=device) * 2 - 1
        return z.to(self.device), categorical.to(self.device), continuous.to(self.device)

    def latent(self, z, categorical, continuous) -> torch.Tensor:
        """The generator's input ``[B, latent_dim + K + L]``: noise, one-hot code, continuous codes."""
        one_hot = F.one_hot(categorical, self.config.categorical_dim).to(z.dtype)
        return torch.cat([z, one_hot, continuous.to(z.dtype)], dim=1)

    def info_loss(self, q_out, categorical, continuous) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(total, categorical cross-entropy, continuous Gaussian NLL)``, nats per image:
        ``-E[log Q(c | x)]`` for ``q_out = (logits, means, log_stds)`` of fakes made from the codes."""
        logits, mean, log_std = (t.float() for t in q_out)
        categorical_nll = F.cross_entropy(logits, categorical)
        if self.config.continuous_dim == 0:
            continuous_nll = torch.zeros((), device=logits.device)
        else:
            if log_std.shape[1] == 0:  # fixed unit std
                log_std = torch.zeros_like(mean)
            log_std = log_std.clamp(-5.0, 5.0)
            nll = 0.5 * ((continuous - mean) * torch.exp(-log_std)) ** 2 + log_std + 0.5 * LOG_2PI
            continuous_nll = nll.sum(dim=1).mean()
        return categorical_nll + continuous_nll, categorical_nll, continuous_nll

    # --- training ----------------------------------------------------------------------------------

    def train_step(self, batch, step, ctx: StepContext):
        opt_g, opt_d = self.optimizers["generator"], self.optimizers["discriminator"]
        lam = self.config.info_weight
        z, categorical, continuous = self.draw_codes(batch.shape[0])
        with ctx.autocast():
            fake = self.generator(self.latent(z, categorical, continuous))
            real_logit = self.discriminator(batch)[0]
            fake_logit, *fake_q = self.discriminator(fake.detach())
            adversarial = non_saturating_d_loss(real_logit, fake_logit)
        with ctx.full_precision():
            info, info_categorical, info_continuous = self.info_loss(fake_q, categorical, continuous)
        d_loss = adversarial + lam * info
        optimizer_step(ctx, opt_d, d_loss)

        with ctx.autocast():
            gen_logit, *gen_q = self.discriminator(fake)
            g_loss = non_saturating_g_loss(gen_logit)
        with ctx.full_precision():
            g_loss = g_loss.float() + lam * self.info_loss(gen_q, categorical, continuous)[0]
        optimizer_step(ctx, opt_g, g_loss, self.generator.parameters())
        return {
            "d_loss": d_loss.item(),
            "g_loss": g_loss.item(),
            **discriminator_probabilities(real_logit, fake_logit),
            "info_loss": info.item(),
            "info_categorical": info_categorical.item(),
            "info_continuous": info_continuous.item(),
        }

    # --- sampling ----------------------------------------------------------------------------------

    @evaluating
    @torch.no_grad()
    def sample(self, n, generator=None):
        """``n`` images ``[n, C, H, W]`` in ``[-1, 1]`` with noise and codes drawn from their priors."""
        return self.generator(self.latent(*self.draw_codes(n, generator))).float()

    @evaluating
    @torch.no_grad()
    def vary_code(self, code: str, steps: int = 8, generator: torch.Generator | None = None,
                  rows: int = 5) -> torch.Tensor:
        """A grid that varies one code with everything else fixed, ``[rows * columns, C, H, W]`` in
        ``[-1, 1]``, row-major (``save_grid(..., nrow=columns)`` lays it out).

        Each row holds one draw of the noise and of the other codes; along the row ``code`` takes
        ``columns`` values: every categorical value (``steps`` is then unused, ``columns =
        categorical_dim``), or for ``continuous_i`` ``steps`` evenly spaced values from -2 to 2
        (the paper's figures go beyond the training range [-1, 1]).
        """
        names = self.code_names()
        if code not in names:
            raise UsageError(f"unknown code {code!r} (known: {', '.join(names)})")
        if code != CATEGORICAL and steps < 2:
            raise UsageError(f"steps must be >= 2 to vary a continuous code, got {steps}")
        z, categorical, continuous = self.draw_codes(rows, generator)
        if code == CATEGORICAL:
            values = torch.arange(self.config.categorical_dim, device=self.device)
        else:
            values = torch.linspace(-CONTINUOUS_RANGE, CONTINUOUS_RANGE, steps, device=self.device)
        columns = len(values)
        z = z.repeat_interleave(columns, dim=0)  # [rows * columns, latent_dim], row-major
        categorical = categorical.repeat_interleave(columns)
        continuous = continuous.repeat_interleave(columns, dim=0)
        varied = values.repeat(rows)  # [rows * columns]: the column's value in every row
        if code == CATEGORICAL:
            categorical = varied
        else:
            continuous[:, int(code.rsplit("_", 1)[1])] = varied
        return self.generator(self.latent(z, categorical, continuous)).float()

    def write_figures(self, folder: str | Path, generator: torch.Generator | None = None) -> list[Path]:
        """Called by the harness when training ends: one grid per code in ``folder``
        (:func:`write_code_figure`), which the report shows beside the samples."""
        seed = 0 if generator is None else int(generator.initial_seed())
        return write_code_figure(self, folder, seed=seed)


def write_code_figure(model: InfoGAN, path: str | Path, steps: int = 8, seed: int = 0) -> list[Path]:
    """Save one PNG grid per code of ``model`` into the folder ``path``: ``infogan_<code>.png``,
    rows of fixed noise and other codes, the code varied along each row (:meth:`InfoGAN.vary_code`).
    Returns the written paths."""
    from genbench.training.harness import save_grid

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for code in model.code_names():
        generator = torch.Generator().manual_seed(seed)  # the same rows in every figure
        grid = model.vary_code(code, steps, generator)
        columns = model.config.categorical_dim if code == CATEGORICAL else steps
        target = folder / f"infogan_{code}.png"
        save_grid(grid, target, nrow=columns)
        written.append(target)
    return written
