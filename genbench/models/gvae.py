"""Generative VAE: a VAE whose pixel decoder loss is replaced by a discriminator (VAE-GAN)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import distributions as D

from genbench.models.adversarial import adam
from genbench.models.base import ModelConfig, StepContext, require
from genbench.models.gan import EncodedLatentGenerator
from genbench.models.layers import ConvEncoder, ConvGenerator, plan_resolution
from genbench.models.registry import register_model


@dataclass
class GVAEConfig(ModelConfig):
    latent_dim: int = 128
    base_width: int = 32
    dropout: float = 0.3  # in the discriminator's residual blocks (article)
    learning_rate: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    kl_weight: float = 1.0
    feature_weight: float = 1.0  # on L_feature in the encoder loss
    generator_feature_weight: float = 0.01  # gamma: L_feature in the generator loss
    feature_layer: int = -1  # which discriminator block's output L_feature compares

    def validate(self, image_shape):
        require(self.latent_dim >= 1, f"latent_dim must be >= 1, got {self.latent_dim}")
        require(self.base_width >= 1, f"base_width must be >= 1, got {self.base_width}")
        require(0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}")
        require(self.learning_rate > 0, "learning_rate must be > 0")
        require(self.kl_weight >= 0 and self.feature_weight >= 0, "loss weights must be >= 0")
        require(self.generator_feature_weight >= 0, "generator_feature_weight must be >= 0")
        blocks = max(plan_resolution(image_shape[-1])[1], 1)  # the discriminator's down blocks
        require(-blocks <= self.feature_layer < blocks,
                f"feature_layer must be in {-blocks}..{blocks - 1} for {image_shape[-1]}-pixel "
                f"images (the discriminator's blocks), got {self.feature_layer}")


@register_model("gvae")
class GVAE(EncodedLatentGenerator):
    """Generative VAE (VAE-GAN): encoder q(z|x) with KL, generator and discriminator, no pixel loss.

    The model of "Generative Variational Autoencoder for High Resolution Image Synthesis"
    (../shared/references/000), read as the learned-similarity VAE-GAN of Larsen et al. 2016: the
    VAE's encoder and its KL term are kept, and the decoder's pixel loss is replaced by a
    discriminator ``Dis``. With ``x_rec = G(z)``, ``z ~ q(z|x)``, and ``x_p = G(z_p)``,
    ``z_p ~ N(0, I)``, per image (averaged over the batch):

    - ``L_prior = KL(q(z|x) || N(0, I))`` (nats);
    - ``L_feature = 1/2 ||Dis_l(x) - Dis_l(x_rec)||^2``: the negative log-likelihood, up to a
      constant, of a unit-variance Gaussian on the discriminator's layer-``l`` features. It is the
      only reconstruction term; there is no pixel-space loss. Without it nothing ties ``G(E(x))``
      to ``x`` and the encoder collapses to the prior;
    - ``L_GAN = log Dis(x) + log(1 - Dis(x_rec)) + log(1 - Dis(x_p))``.

    Updates each batch (Larsen et al., Algorithm 1: one forward pass, then each network's
    gradient of its own loss): the discriminator ascends ``L_GAN`` (binary cross-entropy, the
    two fake terms weighted 1/2 each); the encoder descends
    ``kl_weight * L_prior + feature_weight * L_feature``; the generator descends
    ``gamma * L_feature`` plus the non-saturating adversarial loss on ``x_rec`` and ``x_p``, with
    ``gamma = generator_feature_weight``. Adam 2e-4, beta1 0.5.

    Architecture: the article's discriminator is built of residual blocks, each "convolutional,
    max pooling, 30 percent dropout in between, batch normalization": here a 3x3 conv with leaky
    ReLU, 2x2 max pooling, dropout 0.3 and batch norm, plus a max-pooled 1x1 skip. The generator
    is the DCGAN generator shared with ``gan`` and ``wgan`` (transposed convs, batch norm, ReLU,
    ``tanh``), so that the comparison isolates the training objective, and the encoder is the
    VAE's convolutional encoder. Any latent size works (the article sweeps 100, 500, 1000).
    """

    config_class = GVAEConfig
    loss_names = ("d_loss", "g_adv", "feature", "kl", "encoder_loss")

    def __init__(self, config: GVAEConfig, image_shape):
        super().__init__(config, image_shape)
        w = config.base_width
        self.encoder = ConvEncoder(image_shape, w, 2 * config.latent_dim, slope=0.2)
        self.generator = ConvGenerator(config.latent_dim, image_shape, w)
        self.discriminator = ConvEncoder(
            image_shape, w, 1, slope=0.2, residual=True, dropout=config.dropout
        )

    def build_optimizers(self):
        c = self.config
        self.optimizers = {name: adam(getattr(self, name), c.learning_rate, c)
                           for name in ("encoder", "generator", "discriminator")}
        return self.optimizers

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, features = self.discriminator(x, return_features=True)
        return logits, features[self.config.feature_layer].flatten(1)  # [B, 1], [B, F]

    def train_step(self, batch, step, ctx: StepContext):
        c = self.config
        n = batch.shape[0]
        bce = F.binary_cross_entropy_with_logits
        z_prior = torch.randn(n, c.latent_dim, device=batch.device)
        with ctx.autocast():
            posterior = self._posterior(batch)
            reconstruction = self.generator(posterior.rsample())
            generated = self.generator(z_prior)
            # One discriminator pass over the three batches serves all three losses; each
            # backward below reaches only its own network's parameters (Larsen et al., Alg. 1).
            real_logits, real_features = self._features(batch)
            rec_logits, rec_features = self._features(reconstruction)
            gen_logits = self.discriminator(generated)
            d_loss = bce(real_logits, torch.ones_like(real_logits)) + 0.5 * (
                bce(rec_logits, torch.zeros_like(rec_logits))
                + bce(gen_logits, torch.zeros_like(gen_logits))
            )
            g_adv = 0.5 * (
                bce(rec_logits, torch.ones_like(rec_logits))
                + bce(gen_logits, torch.ones_like(gen_logits))
            )
        with ctx.full_precision():
            difference = rec_features.float() - real_features.float().detach()
            feature = 0.5 * difference.pow(2).sum(1).mean()
            kl = D.kl_divergence(
                D.Independent(D.Normal(posterior.mean.float(), posterior.stddev.float()), 1),
                self.prior(),
            ).mean()
        encoder_loss = c.kl_weight * kl + c.feature_weight * feature
        generator_loss = c.generator_feature_weight * feature + g_adv
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        ctx.backward(encoder_loss, inputs=self.encoder.parameters(), retain_graph=True)
        ctx.backward(generator_loss, inputs=self.generator.parameters(), retain_graph=True)
        ctx.backward(d_loss, inputs=self.discriminator.parameters())
        for optimizer in self.optimizers.values():
            ctx.step(optimizer)
        return {
            "d_loss": d_loss.item(),
            "g_adv": g_adv.item(),
            "feature": feature.item(),
            "kl": kl.item(),
            "encoder_loss": encoder_loss.item(),
        }

