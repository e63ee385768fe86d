"""U-Net GAN (Schönfeld et al. 2020): a U-Net discriminator with per-image and per-pixel decisions,
and CutMix consistency regularisation."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genbench.models.adversarial import LatentOptimisation, adam_pair, optimizer_step
from genbench.models.base import ModelConfig, StepContext, require
from genbench.models.gan import LatentGenerator
from genbench.models.layers import plan_resolution, widths
from genbench.models.registry import register_model
from genbench.models.sagan import Generator, sn


class UNetDiscriminator(nn.Module):
    """``D^U(x)``: image ``[B, C, H, W]`` → (per-image logit ``[B, 1]``, per-pixel logits ``[B, 1, H, W]``).

    Encoder: spectrally normalised 4x4 stride-2 convs (leaky ReLU 0.2) halving the side from the
    image on (rounding down: 28 → 14 → 7) to the 4..7 px bottleneck, which a linear head reads
    flattened (the per-image decision; DCGAN's head, not BigGAN's sum pooling). Decoder: at each
    level the coarser map is upsampled (nearest) to the exact size of the encoder map of that level
    (so odd sides like 7 → 15 work), concatenated with it (the skip connection) and mixed by a 3x3
    conv; the finest map is upsampled to the image size, mixed by a 3x3 conv, and a 1x1 conv gives
    one logit per pixel. As in BigGAN's discriminator, the first conv already halves the side:
    there is no full-resolution skip (with one, a 3x3 conv of the image alone fed the per-pixel
    head, and the generator collapsed to a texture that fools it within 300 MNIST steps).
    """

    def __init__(self, image_shape: tuple[int, int, int], base_width: int):
        super().__init__()
        channels, size, _ = image_shape
        _, halvings = plan_resolution(size)
        levels = max(halvings, 1)
        w = widths(base_width, levels - 1)  # w[i]: channels after i + 1 halvings
        inputs = [channels, *w[:-1]]
        self.down = nn.ModuleList([sn(nn.Conv2d(inputs[i], w[i], 4, stride=2, padding=1))
                                   for i in range(levels)])
        self.encoder_head = sn(nn.Linear(w[-1] * (size // 2**levels) ** 2, 1))
        self.up = nn.ModuleList([sn(nn.Conv2d(w[i + 1] + w[i], w[i], 3, padding=1))
                                 for i in reversed(range(levels - 1))])  # coarse → fine
        self.to_pixels = sn(nn.Conv2d(w[0], w[0], 3, padding=1))
        self.decoder_head = sn(nn.Conv2d(w[0], 1, 1))
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, skips = x, []
        for down in self.down:
            h = self.act(down(h))  # side halves
            skips.append(h)
        image_logit = self.encoder_head(h.flatten(1))  # [B, w_k, s, s] -> [B, 1]
        skips.pop()  # the bottleneck itself
        for up in self.up:
            skip = skips.pop()
            h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")  # to the skip's exact size
            h = self.act(up(torch.cat([h, skip], dim=1)))
        h = F.interpolate(h, size=x.shape[-2:], mode="nearest")  # [B, w0, H, W]
        return image_logit, self.decoder_head(self.act(self.to_pixels(h)))  # [B, 1], [B, 1, H, W]


def cutmix_masks(n: int, height: int, width: int, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """``n`` CutMix masks ``[n, 1, H, W]`` in {0, 1}, 1 where the mixed image takes the real one.

    Each mask is a box covering a fraction ``r ~ U(0, 1)`` of the image (sides ``sqrt(r) H`` by
    ``sqrt(r) W``, rounded, placed uniformly inside the image); with probability 1/2 the box is
    the real part, otherwise the fake part.
    """
    ratio = torch.rand(n, generator=generator).sqrt()
    box_h, box_w = (ratio * height).round(), (ratio * width).round()
    top = (torch.rand(n, generator=generator) * (height - box_h + 1)).floor()
    left = (torch.rand(n, generator=generator) * (width - box_w + 1)).floor()
    real_inside = torch.rand(n, generator=generator) < 0.5
    rows, cols = torch.arange(height), torch.arange(width)
    in_rows = (rows >= top[:, None]) & (rows < (top + box_h)[:, None])  # [n, H]
    in_cols = (cols >= left[:, None]) & (cols < (left + box_w)[:, None])  # [n, W]
    inside = in_rows[:, :, None] & in_cols[:, None, :]  # [n, H, W]
    mask = inside == real_inside[:, None, None]
    return mask[:, None].float().to(device)


def mix(mask: torch.Tensor, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """``mix(x, G(z), M) = M * x + (1 - M) * G(z)`` (``mask`` broadcasts over channels)."""
    return mask * real + (1 - mask) * fake


def consistency_loss(mixed_out: torch.Tensor, real_out: torch.Tensor, fake_out: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
    """CutMix consistency ``mean ||D_dec(mix(x, G(z), M)) - mix(D_dec(x), D_dec(G(z)), M)||^2`` from
    the decoder outputs ``[B, 1, H, W]`` of the mixed, real and fake images, averaged over pixels
    and images (the paper sums over pixels). Zero exactly when the decoder commutes with mixing,
    e.g. a per-pixel affine map."""
    return (mixed_out.float() - mix(mask, real_out.float(), fake_out.float())).pow(2).mean()


def bce(logits: torch.Tensor, target: torch.Tensor | float) -> torch.Tensor:
    """Mean binary cross-entropy of ``logits`` against ``target`` (a number or a tensor of its shape)."""
    logits = logits.float()
    if not torch.is_tensor(target):
        target = torch.full_like(logits, target)
    return F.binary_cross_entropy_with_logits(logits, target.float())


@dataclass
class UNetGANConfig(LatentOptimisation, ModelConfig):
    latent_dim: int = 64
    base_width: int = 32
    g_learning_rate: float = 1e-4
    d_learning_rate: float = 4e-4
    beta1: float = 0.0
    beta2: float = 0.999
    consistency_weight: float = 1.0  # lambda of the CutMix consistency loss
    cutmix_probability: float = 0.5  # chance that a step adds the CutMix terms
    cutmix_warmup: int = 0  # steps over which that chance rises linearly from 0 (0: none)

    def validate(self, image_shape):
        for name in ("g_learning_rate", "d_learning_rate"):
            require(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")
        require(0 <= self.cutmix_probability <= 1,
                f"cutmix_probability must be in [0, 1], got {self.cutmix_probability}")
        require(self.cutmix_warmup >= 0, f"cutmix_warmup must be >= 0, got {self.cutmix_warmup}")
        self.validate_latent_optimisation()


@register_model("unet-gan")
class UNetGAN(LatentGenerator):
    """U-Net GAN (Schönfeld et al., 2020): a U-Net discriminator judges each image and each
    pixel, with CutMix consistency regularisation.

    The discriminator's encoder gives a per-image logit and its decoder a per-pixel logit map of
    the image's size. Non-saturating losses on both: D minimises ``BCE(enc(x), 1) + BCE(enc(G(z)),
    0) + BCE(dec(x), 1) + BCE(dec(G(z)), 0)`` (per-pixel terms averaged over pixels), G minimises
    ``BCE(enc(G(z)), 1) + BCE(dec(G(z)), 1)``. With probability ``cutmix_probability`` (0.5; rising
    linearly over the first ``cutmix_warmup`` steps if set) a step also mixes real and fake
    images with a CutMix box mask ``M`` and adds ``BCE(enc(mix), 0) + BCE(dec(mix), M) + lambda
    L_cons``, ``L_cons = mean ||dec(mix(x, G(z), M)) - mix(dec(x), dec(G(z)), M)||^2`` on logits
    (lambda = ``consistency_weight``, 1). Adam (0, 0.999) with 1e-4 (G) and 4e-4 (D), one step
    each per batch. Logs ``d_real``/``d_fake`` (encoder probabilities), ``d_pixel_real`` (the
    decoder's mean probability on real images) and ``consistency`` on the steps that mix.

    Simplified from the paper (BigGAN generator and residual U-Net discriminator, hinge-free
    non-saturating losses as in its equations): the ``sagan`` generator (spectral norm,
    self-attention) and a small DCGAN-shaped U-Net discriminator with spectral norm; means
    instead of sums over pixels. Whether a step mixes, and its masks, depend on the run's seed and
    the step number only (the same on every data-parallel rank, so all ranks log the same losses).
    """

    config_class = UNetGANConfig
    loss_names = ("d_loss", "g_loss", "d_real", "d_fake", "d_pixel_real", "consistency")

    def __init__(self, config: UNetGANConfig, image_shape):
        super().__init__(config, image_shape)
        self.generator = Generator(config.latent_dim, image_shape, config.base_width)
        self.discriminator = UNetDiscriminator(image_shape, config.base_width)
        # Drawn under the run's seed, before data-parallel ranks reseed: with the step number it
        # seeds each step's CutMix draws, so every rank mixes the same way and logs the same losses.
        self.register_buffer("cutmix_seed", torch.randint(2**62, ()))

    def build_optimizers(self):
        c = self.config
        self.optimizers = adam_pair(self.generator, self.discriminator, c, c.g_learning_rate,
                                    c.d_learning_rate)
        return self.optimizers

    def cutmix_chance(self, step: int) -> float:
        c = self.config
        if c.cutmix_warmup > 0:
            return c.cutmix_probability * min(1.0, step / c.cutmix_warmup)
        return c.cutmix_probability

    def discriminator_losses(self, real: torch.Tensor, fake: torch.Tensor,
                             mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The discriminator's loss ``"d_loss"`` on ``real`` and (detached) ``fake`` images, plus the
        tensors it is made of; with a CutMix ``mask`` ``[B, 1, H, W]`` also the mixed-image terms
        and ``"consistency"`` (unweighted)."""
        real_image, real_pixels = self.discriminator(real)
        fake_image, fake_pixels = self.discriminator(fake)
        d_loss = bce(real_image, 1.0) + bce(fake_image, 0.0) + bce(real_pixels, 1.0) + bce(fake_pixels, 0.0)
        out = {"real_image": real_image, "fake_image": fake_image, "real_pixels": real_pixels}
        if mask is not None:
            mixed_image, mixed_pixels = self.discriminator(mix(mask, real, fake))
            out["consistency"] = consistency_loss(mixed_pixels, real_pixels, fake_pixels, mask)
            d_loss = (d_loss + bce(mixed_image, 0.0) + bce(mixed_pixels, mask)
                      + self.config.consistency_weight * out["consistency"])
        return out | {"d_loss": d_loss}

    def latent_score(self, z: torch.Tensor) -> torch.Tensor:
        """``[B]``: the image logit plus the mean pixel logit of ``D(G(z))``, the two decisions
        the generator's loss raises (what latent optimisation climbs)."""
        image_logit, pixel_logits = self.discriminator(self.generator(z))
        return image_logit.flatten(1).sum(1) + pixel_logits.flatten(1).mean(1)

    def train_step(self, batch, step, ctx: StepContext):
        opt_g, opt_d = self.optimizers["generator"], self.optimizers["discriminator"]
        n, _, height, width = batch.shape
        z = self.config.optimised_latents(torch.randn(n, self.config.latent_dim, device=batch.device),
                                          self.latent_score)
        draw = torch.Generator().manual_seed(int(self.cutmix_seed) + step)  # this step's CutMix draws
        use_cutmix = torch.rand((), generator=draw).item() < self.cutmix_chance(step)
        mask = cutmix_masks(n, height, width, draw, batch.device) if use_cutmix else None
        with ctx.autocast():
            fake = self.generator(z)
            d = self.discriminator_losses(batch, fake.detach(), mask)
        optimizer_step(ctx, opt_d, d["d_loss"])

        with ctx.autocast():
            gen_image, gen_pixels = self.discriminator(fake)
            g_loss = bce(gen_image, 1.0) + bce(gen_pixels, 1.0)
        optimizer_step(ctx, opt_g, g_loss, self.generator.parameters())
        losses = {
            "d_loss": d["d_loss"].item(),
            "g_loss": g_loss.item(),
            "d_real": torch.sigmoid(d["real_image"].float()).mean().item(),
            "d_fake": torch.sigmoid(d["fake_image"].float()).mean().item(),
            "d_pixel_real": torch.sigmoid(d["real_pixels"].float()).mean().item(),
        }
        if mask is not None:
            losses["consistency"] = d["consistency"].item()
        return losses
