"""Pix2Pix (Isola et al. 2017): image-to-image translation with a conditional GAN, here edges → image
(the Sobel edge map of each training image is the source, the image the target)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genbench.models.adversarial import (
    adam_pair,
    discriminator_step,
    non_saturating_d_loss,
    non_saturating_g_loss,
    optimizer_step,
)
from genbench.models.base import ModelConfig, StepContext, evaluating, require
from genbench.models.layers import plan_resolution, widths
from genbench.models.paired import PairedTranslator, edge_map, fit_to
from genbench.models.registry import register_model

NOISE_LAYERS = 3  # decoder layers with dropout, innermost first (the paper's first three)


@dataclass
class Pix2PixConfig(ModelConfig):
    base_width: int = 32  # first encoder layer's channels (paper: 64), doubling per level
    dropout: float = 0.5  # the paper's noise: dropout in the innermost decoder layers
    test_time_dropout: bool = True  # the paper keeps dropout on when translating
    l1_weight: float = 100.0  # lambda of the L1 term (paper: 100)
    patch_layers: int = 1  # stride-2 convs of the PatchGAN: 1 → 16x16 patches, 3 → the paper's 70x70
    learning_rate: float = 2e-4  # paper: Adam 2e-4, beta1 0.5
    beta1: float = 0.5
    beta2: float = 0.999

    def validate(self, image_shape):
        _, height, width = image_shape
        require(self.base_width >= 1, f"base_width must be >= 1, got {self.base_width}")
        require(self.patch_layers >= 1, f"patch_layers must be >= 1, got {self.patch_layers}")
        side = min(height, width)
        for _ in range(self.patch_layers):
            side = side // 2
        require(side >= 3, f"patch_layers={self.patch_layers} halves {min(height, width)} px images "
                           f"below the 3 px the PatchGAN's last two 4x4 convs need; lower it")
        require(min(height, width) >= 8, f"pix2pix needs images of at least 8 px, got {height}x{width}")


class NoiseDropout(nn.Module):
    """Dropout that stays on outside training when ``always`` is set (pix2pix's noise), and then
    draws its masks with the ``generator`` given to :meth:`forward`, so a seeded translation is
    reproducible on any device."""

    def __init__(self, p: float, always: bool):
        super().__init__()
        self.p, self.always = p, always

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.p == 0 or not (self.training or self.always):
            return x
        if self.training or generator is None:
            return F.dropout(x, self.p, training=True)
        keep = torch.full(x.shape, 1 - self.p).bernoulli_(generator=generator).to(x.device, x.dtype)
        return x * keep / (1 - self.p)


class UNetGenerator(nn.Module):
    """``G(source)``: ``[B, C, H, W]`` → ``[B, C, H, W]`` in ``[-1, 1]`` (Isola et al., appendix 6.1.1).

    Encoder: 4x4 stride-2 convs halving the side down to 4..7 px (28 → 14 → 7), batch norm except
    on the first, leaky ReLU 0.2; a 3x3 bottleneck conv at the coarsest level (the paper halves
    256 px down to 1 px instead). Decoder: per level, the coarser map concatenated with the
    encoder map of the same size (the U-Net skip), a 4x4 stride-2 transposed conv, batch norm,
    ReLU; resized to the skip's exact size when a side was odd. The bottleneck and the decoder
    layers after it, at most ``NOISE_LAYERS`` and never the output layer (2 at 28 px), apply
    dropout: the generator's only noise, as in the paper (no ``z``). Output: transposed conv to
    the image channels, ``tanh``.
    """

    def __init__(self, channels: int, size: tuple[int, int], base_width: int, dropout: float,
                 test_time_dropout: bool):
        super().__init__()
        self.size = size
        _, halvings = plan_resolution(min(size))
        levels = max(halvings, 1)
        w = widths(base_width, levels - 1)  # w[i]: channels after i + 1 halvings
        inputs = [channels, *w[:-1]]
        self.down = nn.ModuleList([
            nn.Sequential(nn.Conv2d(inputs[i], w[i], 4, stride=2, padding=1, bias=i == 0),
                          nn.BatchNorm2d(w[i]) if i > 0 else nn.Identity(), nn.LeakyReLU(0.2))
            for i in range(levels)
        ])
        self.bottleneck = nn.Sequential(nn.Conv2d(w[-1], w[-1], 3, padding=1, bias=False),
                                        nn.BatchNorm2d(w[-1]), nn.ReLU())
        # up[j] takes [coarser map, skip of level i] (i = levels-1-j) to the size of level i-1.
        self.up = nn.ModuleList([
            nn.Sequential(nn.ConvTranspose2d(2 * w[i], w[i - 1], 4, stride=2, padding=1, bias=False),
                          nn.BatchNorm2d(w[i - 1]), nn.ReLU())
            for i in reversed(range(1, levels))
        ])
        self.to_image = nn.ConvTranspose2d(2 * w[0], channels, 4, stride=2, padding=1)
        self.noise = nn.ModuleList([NoiseDropout(dropout, test_time_dropout)
                                    for _ in range(min(NOISE_LAYERS, levels))])

    def forward(self, source: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        h, skips = source, []
        for down in self.down:
            h = down(h)  # side halves (rounding down)
            skips.append(h)
        h = self.noise[0](self.bottleneck(h), generator)  # [B, w_k, s, s]
        for j, up in enumerate(self.up):
            skip = skips.pop()
            h = up(torch.cat([h, skip], dim=1))
            h = fit_to(h, skips[-1].shape[-2:])  # odd sides: to the next skip's exact size
            if j + 1 < len(self.noise):
                h = self.noise[j + 1](h, generator)
        h = self.to_image(torch.cat([h, skips.pop()], dim=1))  # [B, C, ~H, ~W]
        return torch.tanh(fit_to(h, self.size))


class PatchDiscriminator(nn.Module):
    """PatchGAN ``D(source, image)``: the pair concatenated on channels ``[B, 2C, H, W]`` → one
    logit per patch ``[B, 1, H', W']`` (Isola et al., appendix 6.1.2).

    ``patch_layers`` 4x4 stride-2 convs (width doubling from ``base_width``; batch norm except on
    the first; leaky ReLU 0.2), one 4x4 stride-1 conv with batch norm, and a 4x4 stride-1 conv to
    one channel. The receptive field is ``1 + 3 (2^n - 1) + 6 * 2^n`` pixels for ``n`` layers:
    16 for ``n = 1`` (MNIST default: about half of a 28 px digit), 70 for the paper's ``n = 3``.
    """

    def __init__(self, channels: int, base_width: int, patch_layers: int):
        super().__init__()
        w = widths(base_width, patch_layers)
        layers: list[nn.Module] = []
        c_in = 2 * channels
        for i in range(patch_layers):
            layers += [nn.Conv2d(c_in, w[i], 4, stride=2, padding=1, bias=i == 0)]
            layers += [nn.BatchNorm2d(w[i])] if i > 0 else []
            layers += [nn.LeakyReLU(0.2)]
            c_in = w[i]
        layers += [nn.Conv2d(c_in, w[patch_layers], 4, padding=1, bias=False),
                   nn.BatchNorm2d(w[patch_layers]), nn.LeakyReLU(0.2),
                   nn.Conv2d(w[patch_layers], 1, 4, padding=1)]
        self.body = nn.Sequential(*layers)

    def forward(self, source: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([source, image], dim=1))  # [B, 2C, H, W] -> [B, 1, H', W']


@register_model("pix2pix")
class Pix2Pix(PairedTranslator):
    """Pix2Pix (Isola 2017), edges → image: a U-Net generator with dropout as its noise and a
    PatchGAN on (source, image) pairs, cGAN + 100 L1 loss; simplified: thresholded Sobel edges for
    the paper's HED edges, 32 base channels, 16x16 patches at 28 px, batch 64 with running
    batch-norm statistics.

    Source: :func:`genbench.models.paired.edge_map` of the image (``{-1, 1}``, 1 on edges).
    Generator: U-Net (:class:`UNetGenerator`), dropout 0.5 in its innermost three layers, kept at
    translation time as in the paper (``test_time_dropout``), drawn from the caller's generator.
    Discriminator: PatchGAN (:class:`PatchDiscriminator`) on the channel-concatenated pair.
    Losses: ``D``: ``(BCE(D(s, y), 1) + BCE(D(s, G(s)), 0)) / 2`` (the paper halves D's
    objective); ``G``: ``BCE(D(s, G(s)), 1) + 100 |G(s) - y|_1`` (mean absolute error per pixel in
    ``[-1, 1]``). Adam 2e-4, beta1 0.5, one D and one G step per batch.

    Simplifications: 32 base channels (paper 64); the U-Net stops halving at 4..7 px and has a 3x3
    bottleneck there (paper: eight halvings of 256 px to 1 px); the PatchGAN uses one stride-2
    layer (16x16 receptive field) by default, the paper's 70x70 is ``patch_layers=3`` on large
    images; batch 64 with running batch-norm statistics at translation time, where the paper used
    batch 1 and test-batch statistics (instance normalisation); Sobel edges in place of HED.
    """

    config_class = Pix2PixConfig
    loss_names = ("d_loss", "g_loss", "l1", "adversarial", "d_real", "d_fake")

    def __init__(self, config: Pix2PixConfig, image_shape):
        super().__init__(config, image_shape)
        channels, height, width = self.image_shape
        self.generator = UNetGenerator(channels, (height, width), config.base_width, config.dropout,
                                       config.test_time_dropout)
        self.discriminator = PatchDiscriminator(channels, config.base_width, config.patch_layers)

    def build_optimizers(self):
        self.optimizers = adam_pair(self.generator, self.discriminator, self.config)
        return self.optimizers

    def degrade(self, x: torch.Tensor) -> torch.Tensor:
        """The edge map of ``x``: ``[N, C, H, W]`` in ``{-1, 1}``."""
        return edge_map(x)

    @evaluating
    @torch.no_grad()
    def translate(self, source: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``G(s)``: ``[N, C, H, W]`` → ``[N, C, H, W]`` in ``[-1, 1]``; with test-time dropout the
        masks are drawn with ``generator`` (a CPU generator; the global RNG when None)."""
        return torch.cat([self.generator(chunk.to(self.device), generator).float()
                          for chunk in source.split(500)])

    def baseline(self, source: torch.Tensor) -> torch.Tensor:
        """The edge map itself (white edges on black), the translation that changes nothing."""
        return source.float()

    def train_step(self, batch, step, ctx: StepContext):
        self.remember(batch)
        source = self.degrade(batch)  # [B, C, H, W] in {-1, 1}
        discriminate = lambda image: self.discriminator(source, image)  # [B, 1, H', W'] patches
        d = discriminator_step(ctx, self.optimizers["discriminator"], batch,
                               lambda: self.generator(source), discriminate,
                               loss=lambda real, fake: 0.5 * non_saturating_d_loss(real, fake))

        with ctx.autocast():
            adversarial = non_saturating_g_loss(discriminate(d.fake))
        with ctx.full_precision():
            l1 = (d.fake.float() - batch.float()).abs().mean()
            g_loss = adversarial.float() + self.config.l1_weight * l1
        optimizer_step(ctx, self.optimizers["generator"], g_loss, self.generator.parameters())
        return {"d_loss": d.loss.item(), "g_loss": g_loss.item(), "l1": l1.item(),
                "adversarial": adversarial.item(), **d.probabilities()}
