"""What the adversarially trained models share: the non-saturating losses, Adam for a
generator/discriminator pair, and the discriminator step that makes the fakes.

Shapes: images ``[B, C, H, W]``; discriminator logits ``[B, 1]`` for one decision per image, or
any ``[B, ...]`` (PatchGAN's ``[B, 1, H', W']``), every loss being a mean over all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genbench.models.base import StepContext


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
