"""AC-GAN (Odena, Olah & Shlens 2017) and ADC-GAN (Hou, Cao, Shen, Pan, Li & Cheng 2022)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from genbench.models.adversarial import (
    discriminator_probabilities,
    non_saturating_d_loss,
    non_saturating_g_loss,
    optimizer_step,
)
from genbench.models.base import StepContext
from genbench.models.cgan import CGANConfig, ClassConditionalGAN
from genbench.models.layers import ConvEncoder
from genbench.models.registry import register_model


@dataclass
class ACGANConfig(CGANConfig):
    loss: Literal["acgan", "adcgan"] = "acgan"
    class_weight: float = 1.0  # lambda: weight of the classification terms in both losses


@register_model("acgan")
class ACGAN(ClassConditionalGAN):
    """Auxiliary-classifier GAN (Odena, Olah & Shlens 2017): the discriminator also predicts the
    class; ``loss=adcgan`` gives ADC-GAN (Hou et al., 2022).

    Generator ``G(z, y)``: the one-hot label concatenated to ``z`` (as ``cgan``). Discriminator:
    the DCGAN discriminator sees only the image; its last linear layer gives one real/fake logit
    and the class logits, both heads on the same features.

    ``loss=acgan`` (Odena et al.): the discriminator minimises
    ``BCE(D(x), 1) + BCE(D(G(z, y)), 0) + lambda * (CE(C(x), y) + CE(C(G(z, y)), y))``, the
    generator ``BCE(D(G(z, y)), 1) + lambda * CE(C(G(z, y)), y)`` (the non-saturating form of
    ``L_C - L_S``). ``K`` class logits.

    ``loss=adcgan``, the auxiliary *discriminative* classifier (Hou et al., ICML 2022): ``2K``
    class logits, real-class ``k`` (index ``2k``) and fake-class ``k`` (index ``2k + 1``); the
    classifier learns to put real images of class ``k`` in real-class ``k`` and fakes of class
    ``k`` in fake-class ``k``, ``lambda * (CE(C(x), 2y) + CE(C(G(z, y)), 2y + 1))``; the
    generator minimises ``BCE(D(G), 1) - lambda * (log C(2y | G) - log C(2y + 1 | G))``, i.e.
    makes its fakes classified as real-class ``y`` and not as fake-class ``y`` (the paper's
    objective). The paper's classifier is ``phi(x) . psi(y+/-)`` with learnable label embeddings
    ``psi``: a bias-carrying linear layer on the shared features, as here, is that plus a bias.

    Fakes take the batch's labels; Adam (2e-4, beta1 0.5), one step each per batch. Losses:
    ``class_real`` and ``class_fake`` are the discriminator's classification cross-entropies on
    real images and fakes, ``class_accuracy`` its accuracy on the real batch (among the ``K``
    real classes for ``adcgan``).

    Simplification: DCGAN networks from ``layers.py`` rather than the papers' (AC-GAN's
    ImageNet/CIFAR networks, ADC-GAN's BigGAN); no spectral norm or hinge loss.
    """

    config_class = ACGANConfig
    loss_names = ("d_loss", "g_loss", "d_real", "d_fake", "class_real", "class_fake",
                  "class_accuracy")

    def __init__(self, config: ACGANConfig, image_shape):
        super().__init__(config, image_shape)
        self.generator = self.build_generator()
        self.class_logits = config.num_classes * (2 if config.loss == "adcgan" else 1)
        # One linear layer on the shared features: column 0 real/fake, then the class logits.
        self.discriminator = ConvEncoder(image_shape, config.base_width, 1 + self.class_logits,
                                         slope=0.2)

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(real/fake logit [B, 1], class logits [B, K or 2K])`` for images ``[B, C, H, W]``."""
        out = self.discriminator(x)  # [B, 1 + K or 2K]
        return out[:, :1], out[:, 1:]

    def class_targets(self, labels: torch.Tensor, real: bool) -> torch.Tensor:
        """The class-head targets of images of class ``labels``: ``y`` for ``acgan``; for
        ``adcgan`` real-class ``2y`` or fake-class ``2y + 1``."""
        if self.config.loss == "acgan":
            return labels
        return 2 * labels + (0 if real else 1)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Class-head log-probabilities over the ``K`` real classes, ``[B, K]`` (for ``adcgan``
        renormalised over the real-class logits)."""
        logits = self.heads(x)[1].float()
        if self.config.loss == "adcgan":
            logits = logits[:, 0::2]  # [B, 2K] -> the real-class logits [B, K]
        return logits.log_softmax(dim=1)

    def train_step(self, batch, step, ctx: StepContext, labels: torch.Tensor | None = None):
        """One discriminator and one generator step; ``labels`` int64 ``[B]`` (uniform if None)."""
        opt_g, opt_d = self.optimizers["generator"], self.optimizers["discriminator"]
        lam = self.config.class_weight
        labels = self.check_labels(labels, batch.shape[0], batch.device)
        z = torch.randn(batch.shape[0], self.config.latent_dim, device=batch.device)
        z = self.config.optimised_latents(z, lambda z: self.heads(self.generator(z, labels))[0])
        real_target = self.class_targets(labels, real=True)
        fake_target = self.class_targets(labels, real=False)
        with ctx.autocast():
            fake = self.generator(z, labels)
            real_logit, real_class = self.heads(batch)
            fake_logit, fake_class = self.heads(fake.detach())
            adversarial = non_saturating_d_loss(real_logit, fake_logit)
            class_real = F.cross_entropy(real_class, real_target)
            class_fake = F.cross_entropy(fake_class, fake_target)
            d_loss = adversarial + lam * (class_real + class_fake)
        optimizer_step(ctx, opt_d, d_loss)

        with ctx.autocast():
            gen_logit, gen_class = self.heads(fake)
            g_loss = non_saturating_g_loss(gen_logit)
            # acgan: -log C(y | G); adcgan: -log C(y+ | G) + log C(y- | G).
            g_class = F.cross_entropy(gen_class, real_target)
            if self.config.loss == "adcgan":
                g_class = g_class - F.cross_entropy(gen_class, fake_target)
            g_loss = g_loss + lam * g_class
        optimizer_step(ctx, opt_g, g_loss, self.generator.parameters())

        with torch.no_grad():
            predicted = real_class.float()
            if self.config.loss == "adcgan":
                predicted = predicted[:, 0::2]
            accuracy = (predicted.argmax(dim=1) == labels).float().mean()
        return {
            "d_loss": d_loss.item(),
            "g_loss": g_loss.item(),
            **discriminator_probabilities(real_logit, fake_logit),
            "class_real": class_real.item(),
            "class_fake": class_fake.item(),
            "class_accuracy": accuracy.item(),
        }
