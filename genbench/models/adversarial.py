"""What the adversarially trained models share: the non-saturating losses, Adam for a
generator/discriminator pair, the discriminator step that makes the fakes, and LOGAN's latent
step as an option any GAN's training step can turn on.

Shapes: images ``[B, C, H, W]``; discriminator logits ``[B, 1]`` for one decision per image, or
any ``[B, ...]`` (PatchGAN's ``[B, 1, H', W']``), every loss being a mean over all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from genbench.core.errors import UsageError
from genbench.models.base import OMIT_FROM_RUN_ID_AT_DEFAULT, StepContext, require


def non_saturating_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator loss ``BCE(D(x), 1) + BCE(D(G(z)), 0)`` (nats, a scalar) from the logits of
    real and fake images, each term a mean over all of its logits (``[B, ...]``)."""
    return F.binary_cross_entropy_with_logits(
        real_logits, torch.ones_like(real_logits)
    ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))


def non_saturating_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator loss ``BCE(D(G(z)), 1) = -log D(G(z))`` (nats, a scalar, the mean over the logits
    ``[B, ...]``): the non-saturating form of ``log(1 - D(G(z)))``."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def discriminator_probabilities(real_logits: torch.Tensor, fake_logits: torch.Tensor,
                                suffix: str = "") -> dict[str, float]:
    """``{"d_real": mean D(x), "d_fake": mean D(G(z))}`` from logits ``[B, ...]`` (probabilities,
    computed in float32); ``suffix`` follows the ``d`` (``"d1_real"`` for StackGAN's stage 1)."""
    return {f"d{suffix}_real": torch.sigmoid(real_logits.float()).mean().item(),
            f"d{suffix}_fake": torch.sigmoid(fake_logits.float()).mean().item()}


def adam(parameters: nn.Module | Iterable[nn.Parameter], lr: float, config: Any) -> torch.optim.Adam:
    """Adam over a module's (or a list of) parameters, with the config's ``beta1`` and ``beta2``."""
    if isinstance(parameters, nn.Module):
        parameters = parameters.parameters()
    return torch.optim.Adam(parameters, lr, betas=(config.beta1, config.beta2))


def adam_pair(generator: nn.Module, discriminator: nn.Module, config: Any,
              g_lr: float | None = None, d_lr: float | None = None) -> dict[str, torch.optim.Adam]:
    """``{"generator": Adam, "discriminator": Adam}`` (the names are checkpoint keys), each at its
    learning rate, ``config.learning_rate`` unless given (two time-scale models give both)."""
    return {
        "generator": adam(generator, config.learning_rate if g_lr is None else g_lr, config),
        "discriminator": adam(discriminator, config.learning_rate if d_lr is None else d_lr, config),
    }


def optimizer_step(ctx: StepContext, optimizer: torch.optim.Optimizer, loss: torch.Tensor,
                   inputs: Iterable[torch.Tensor] | None = None) -> None:
    """One update of ``optimizer`` on the scalar ``loss``: gradients reset, ``loss`` backpropagated
    (scaled under mixed precision) into ``inputs`` (every leaf when None), then the step."""
    optimizer.zero_grad(set_to_none=True)
    ctx.backward(loss, inputs=inputs)
    ctx.step(optimizer)


@dataclass
class DiscriminatorStep:
    """What :func:`discriminator_step` leaves for the generator's step and the logs."""

    fake: torch.Tensor  # [B, C, H, W], still attached to the generator's graph
    real_logits: torch.Tensor  # [B, ...]
    fake_logits: torch.Tensor  # [B, ...], of the detached fakes
    loss: torch.Tensor  # the discriminator's scalar loss

    def probabilities(self) -> dict[str, float]:
        """``d_real`` and ``d_fake``, see :func:`discriminator_probabilities`."""
        return discriminator_probabilities(self.real_logits, self.fake_logits)


def discriminator_step(
    ctx: StepContext,
    optimizer: torch.optim.Optimizer,
    real: torch.Tensor,
    generate: Callable[[], torch.Tensor],
    discriminate: Callable[[torch.Tensor], torch.Tensor],
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = non_saturating_d_loss,
) -> DiscriminatorStep:
    """Make the fakes and take one discriminator step on them and on ``real`` ``[B, C, H, W]``.

    Under autocast: ``fake = generate()``, ``discriminate(real)``, ``discriminate(fake.detach())``
    (logits ``[B, ...]``), ``loss(real_logits, fake_logits)``, in that order, because dropout
    draws and spectral norm's power iterations follow it. With the fakes detached, the update
    reaches only the discriminator's parameters.
    """
    with ctx.autocast():
        fake = generate()
        real_logits = discriminate(real)
        fake_logits = discriminate(fake.detach())
        d_loss = loss(real_logits, fake_logits)
    optimizer_step(ctx, optimizer, d_loss)
    return DiscriminatorStep(fake, real_logits, fake_logits, d_loss)


def non_saturating_step(
    ctx: StepContext,
    optimizers: dict[str, torch.optim.Optimizer],
    generator: nn.Module,
    real: torch.Tensor,
    generate: Callable[[], torch.Tensor],
    discriminate: Callable[[torch.Tensor], torch.Tensor],
) -> dict[str, float]:
    """One discriminator step (:func:`discriminator_step`), then one generator step on
    ``BCE(D(G(z)), 1)`` reaching only ``generator``'s parameters; returns ``d_loss``, ``g_loss``,
    ``d_real`` and ``d_fake`` (mean probabilities)."""
    d = discriminator_step(ctx, optimizers["discriminator"], real, generate, discriminate)
    with ctx.autocast():
        g_loss = non_saturating_g_loss(discriminate(d.fake))
    optimizer_step(ctx, optimizers["generator"], g_loss, generator.parameters())
    return {"d_loss": d.loss.item(), "g_loss": g_loss.item(), **d.probabilities()}


LatentMethod = Literal["gd", "ngd"]


def optimise_latents(
    z: torch.Tensor,
    discriminator_score_fn: Callable[[torch.Tensor], torch.Tensor],
    step_size: float,
    method: LatentMethod = "ngd",
    beta: float = 5.0,
    second_order: bool = False,
    clip: float | None = None,
) -> torch.Tensor:
    """``z' = z + dz``: one step on the latents ``z [B, latent_dim]`` that increases their score.

    ``discriminator_score_fn(z)`` gives each latent's score ``f(z_i) = D(G(z_i))``, shape ``[B]``
    or ``[B, 1]``; ``g_i = df(z_i)/dz_i`` is each row's gradient (one backward pass of the summed
    scores: rows are independent). The step, with ``alpha = step_size``:

    - ``"gd"``: ``dz_i = alpha * g_i``;
    - ``"ngd"``: natural gradient with the empirical Fisher ``F = g g^T + beta I`` (Tikhonov
      damping ``beta``), whose inverse applied to ``g`` is, by Sherman-Morrison,
      ``dz_i = alpha * g_i / (beta + ||g_i||^2)``: small gradients give a step of about
      ``alpha g / beta``, large ones a step of length at most ``alpha / (2 sqrt(beta))``.

    With ``second_order`` the step stays in the autograd graph (``create_graph``), so losses
    computed from ``z'`` also differentiate through ``dz`` with respect to D's and G's parameters:
    LOGAN's second-order terms (it then costs a double backward). Otherwise ``dz`` is a constant
    and ``z'`` only carries ``z``'s own graph. ``clip`` clamps ``z'`` to ``[-clip, clip]`` (LOGAN
    clips to ``[-1, 1]`` with uniform latents). Parameters' ``.grad`` are left untouched.
    """
    if method not in ("gd", "ngd"):
        raise UsageError(f"latent optimisation method must be 'gd' or 'ngd', got {method!r}")
    leaf = z.detach().requires_grad_(True)
    with torch.enable_grad():
        scores = discriminator_score_fn(leaf).float().reshape(z.shape[0], -1).sum()
        (g,) = torch.autograd.grad(scores, leaf, create_graph=second_order)  # [B, latent_dim]
    g = g.flatten(1)
    if method == "gd":
        delta = step_size * g
    else:
        delta = step_size * g / (beta + g.pow(2).sum(1, keepdim=True))
    delta = delta.view_as(z).to(z.dtype)
    if not second_order:
        delta = delta.detach()
    z_new = z + delta
    return z_new.clamp(-clip, clip) if clip is not None else z_new


@dataclass
class LatentOptimisation:
    """LOGAN's latent step (Wu et al. 2019) as an option of a GAN's training step: before the
    step, ``z`` moves by :func:`optimise_latents` to raise ``D(G(z))`` and the step uses ``z'``.

    Config mixin of ``gan``, ``wgan``, ``cgan``, ``acgan``, ``sagan``, ``biggan`` and
    ``unet-gan``; each passes the score its generator loss raises (the logit, the critic value, the
    real/fake head, U-Net GAN's image logit plus mean pixel logit). Their steps alternate (D, then
    G), and D's update would invalidate a graph through the latent step, so here ``z'`` is a
    constant input (first order); the ``logan`` model has the paper's simultaneous second-order
    step. ``infogan`` (whose codes the Q head must recover) and ``stackgan`` (two stages) have no
    single score to climb and do not take it. The fields came after the first published runs: at
    their defaults they stay out of the run id, so those runs keep their folders.
    """

    latent_method: Literal["off", "gd", "ngd"] = field(default="off",
                                                      metadata=OMIT_FROM_RUN_ID_AT_DEFAULT)
    latent_step_size: float = field(default=0.9, metadata=OMIT_FROM_RUN_ID_AT_DEFAULT)  # alpha
    latent_beta: float = field(default=5.0, metadata=OMIT_FROM_RUN_ID_AT_DEFAULT)  # ngd damping

    def validate_latent_optimisation(self) -> None:
        require(self.latent_step_size > 0, f"latent_step_size must be > 0, got {self.latent_step_size}")
        require(self.latent_beta > 0, f"latent_beta must be > 0, got {self.latent_beta}")

    def optimised_latents(self, z: torch.Tensor,
                          discriminator_score_fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``z [B, latent_dim]`` itself when ``latent_method`` is off, else ``z'`` (a constant)."""
        if self.latent_method == "off":
            return z
        return optimise_latents(z, discriminator_score_fn, self.latent_step_size,
                                self.latent_method, self.latent_beta).detach()
