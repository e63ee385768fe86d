"""Latent optimisation (LOGAN, Wu et al. 2019) as an option for any GAN, and the ``logan`` model.

:func:`optimise_latents` takes one gradient step on ``z`` that increases the discriminator's score
``f(z) = D(G(z))``; a GAN's training step calls it on its noise before the generator forward pass
and uses the returned ``z'`` in place of ``z``. For example, in ``gan.py``'s step::

    z = optimise_latents(z, lambda z: self.discriminator(self.generator(z)).squeeze(1),
                         step_size=0.9, method="ngd", beta=5.0)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from genbench.core.errors import UsageError
from genbench.models.base import StepContext, require
from genbench.models.registry import register_model
from genbench.models.sagan import SAGAN, SAGANConfig, hinge_d_loss, hinge_g_loss

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
class LOGANConfig(SAGANConfig):
    latent_step_size: float = 0.9  # alpha
    latent_method: LatentMethod = "ngd"
    latent_beta: float = 5.0  # damping of the natural gradient
    latent_second_order: bool = True  # differentiate the losses through the latent step

    def validate(self, image_shape):
        super().validate(image_shape)
        require(self.latent_step_size > 0, f"latent_step_size must be > 0, got {self.latent_step_size}")
        require(self.latent_beta > 0, f"latent_beta must be > 0, got {self.latent_beta}")


@register_model("logan")
class LOGAN(SAGAN):
    """Latent-optimised GAN (LOGAN, Wu et al., 2019): each step first moves z to raise D(G(z)),
    by one natural-gradient step.

    Per batch: ``z ~ N(0, I)``; ``g = d D(G(z)) / dz``; ``z' = z + alpha g / (beta + ||g||^2)``
    (``latent_method="ngd"``, alpha 0.9, beta 5; ``"gd"`` gives ``z' = z + alpha g``); then the
    hinge losses of ``sagan`` on ``G(z')``, and D and G update simultaneously from the same
    forward pass, as in the paper's algorithm. With ``latent_second_order`` (default) both
    losses are differentiated through the latent step, which gives LOGAN its second-order terms
    (a double backward through G and D); off, ``z'`` is a constant input. Logs ``latent_step``,
    the mean ``||z' - z||``.

    Simplified from the paper: built on the small ``sagan`` networks, unconditional (the paper
    uses class-conditional BigGAN-deep); ``z`` stays standard normal and unclipped (the paper uses
    uniform ``z`` clipped to ``[-1, 1]``, and a larger latent); no ``||dz||^2`` regulariser.
    """

    config_class = LOGANConfig
    loss_names = (*SAGAN.loss_names, "latent_step")

    def score(self, z: torch.Tensor) -> torch.Tensor:
        """``f(z) = D(G(z))``, ``[B]``: the score latent optimisation increases."""
        return self.discriminator(self.generator(z)).squeeze(1)

    def train_step(self, batch, step, ctx: StepContext):
        c = self.config
        opt_g, opt_d = self.optimizers["generator"], self.optimizers["discriminator"]
        z = torch.randn(batch.shape[0], c.latent_dim, device=batch.device)
        # In float32 even with mixed precision: the second-order terms overflow in float16.
        z_opt = optimise_latents(z, self.score, c.latent_step_size, c.latent_method, c.latent_beta,
                                 second_order=c.latent_second_order)
        with ctx.autocast():
            fake = self.generator(z_opt)
            real_logits = self.discriminator(batch)
            fake_logits = self.discriminator(fake)
            d_loss = hinge_d_loss(real_logits.float(), fake_logits.float())
            g_loss = hinge_g_loss(fake_logits.float())
        losses = {"d_loss": d_loss.item(), "g_loss": g_loss.item(),
                  "d_real": real_logits.float().mean().item(), "d_fake": fake_logits.float().mean().item(),
                  "latent_step": (z_opt - z).detach().flatten(1).norm(dim=1).mean().item()}
        if c.orthogonal_weight > 0:
            penalty = self.orthogonal_regulariser()
            g_loss = g_loss + penalty
            losses["orthogonal"] = penalty.item()
        # Both gradients from one graph, then both updates (the paper's simultaneous step).
        opt_d.zero_grad(set_to_none=True)
        opt_g.zero_grad(set_to_none=True)
        ctx.backward(d_loss, inputs=self.discriminator.parameters(), retain_graph=True)
        ctx.backward(g_loss, inputs=self.generator.parameters())
        ctx.step(opt_d)
        ctx.step(opt_g)
        return losses
