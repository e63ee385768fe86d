"""The ``logan`` model: latent optimisation (LOGAN, Wu et al. 2019) with the paper's simultaneous,
second-order step.

The latent step itself, :func:`~genbench.models.adversarial.optimise_latents`, lives with the other
shared GAN pieces: ``gan``, ``wgan``, ``cgan``, ``acgan``, ``sagan``, ``biggan`` and ``unet-gan``
turn it on as a first-order option of their alternating steps (``--set latent_method=ngd``,
:class:`~genbench.models.adversarial.LatentOptimisation`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genbench.models.adversarial import LatentMethod, optimise_latents
from genbench.models.base import StepContext
from genbench.models.registry import register_model
from genbench.models.sagan import SAGAN, SAGANConfig, hinge_d_loss, hinge_g_loss


@dataclass
class LOGANConfig(SAGANConfig):
    # LOGAN's own: latent optimisation always on, second order by default, and part of the run id.
    latent_step_size: float = 0.9  # alpha
    latent_method: LatentMethod = "ngd"
    latent_beta: float = 5.0  # damping of the natural gradient
    latent_second_order: bool = True  # differentiate the losses through the latent step


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
