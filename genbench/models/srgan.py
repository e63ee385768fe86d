"""SRGAN (Ledig et al. 2017): 4x super-resolution with a residual generator trained against a
discriminator, here on images downsampled from the dataset (28 px → 7 px → 28 px on MNIST)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from genbench.models.adversarial import (
    adam_pair,
    discriminator_step,
    non_saturating_g_loss,
    optimizer_step,
)
from genbench.models.base import ModelConfig, StepContext, evaluating, require
from genbench.models.layers import MAX_WIDTH, plan_resolution, widths
from genbench.models.paired import PairedTranslator, bicubic_upsample, downsample, fit_to
from genbench.models.registry import register_model

SCALE = 4  # two x2 pixel-shuffle upsamplings, as in the paper
FEATURE_DATASETS = ("mnist", "fashion-mnist")  # datasets whose classifier ships with genbench


@dataclass
class SRGANConfig(ModelConfig):
    base_width: int = 32  # generator channels (paper: 64); discriminator starts at this width too
    residual_blocks: int = 6  # paper: 16
    content_loss: Literal["pixel", "features"] = "pixel"
    feature_dataset: Literal["mnist", "fashion-mnist"] = "mnist"  # classifier for content_loss=features
    adversarial_weight: float = 1e-3  # the paper's 10^-3
    learning_rate: float = 1e-4  # paper: Adam 1e-4, beta1 0.9
    beta1: float = 0.9
    beta2: float = 0.999

    def validate(self, image_shape):
        channels, height, width = image_shape
        require(self.base_width >= 1, f"base_width must be >= 1, got {self.base_width}")
        require(self.residual_blocks >= 0, f"residual_blocks must be >= 0, got {self.residual_blocks}")
        require(min(height, width) >= 2 * SCALE,
                f"srgan needs images of at least {2 * SCALE} px (4x downsampling), got {height}x{width}")
        if self.content_loss == "features":
            from genbench.data import get_dataset

            info = get_dataset(self.feature_dataset)
            expected = (info.channels, info.native_size, info.native_size)
            require(tuple(image_shape) == expected,
                    f"content_loss=features uses the {self.feature_dataset} classifier, which takes "
                    f"{expected} images, not {tuple(image_shape)}; use content_loss=pixel or set "
                    "feature_dataset to the run's dataset")


class ResidualBlock(nn.Module):
    """conv3x3 - BN - PReLU - conv3x3 - BN, plus the input (Ledig et al., Fig. 4)."""

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.PReLU(width),
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SRResNet(nn.Module):
    """Generator ``G(LR)``: ``[B, C, h, w]`` → ``[B, C, 4h, 4w]`` (then resized to the target if
    the target side is not a multiple of 4), ``tanh`` output in ``[-1, 1]``.

    conv9x9 + PReLU; residual blocks; conv3x3 + BN with a skip over all blocks; two upsampling
    blocks (conv3x3 to 4x the channels, pixel shuffle x2, PReLU); conv9x9 to the image channels.
    """

    def __init__(self, channels: int, width: int, blocks: int, size: tuple[int, int]):
        super().__init__()
        self.size = size
        self.head = nn.Sequential(nn.Conv2d(channels, width, 9, padding=4), nn.PReLU(width))
        self.blocks = nn.Sequential(*[ResidualBlock(width) for _ in range(blocks)])
        self.after_blocks = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False),
                                          nn.BatchNorm2d(width))
        self.upsample = nn.Sequential(*[
            nn.Sequential(nn.Conv2d(width, 4 * width, 3, padding=1), nn.PixelShuffle(2),
                          nn.PReLU(width))
            for _ in range(2)
        ])
        self.to_image = nn.Conv2d(width, channels, 9, padding=4)

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        h = self.head(source)  # [B, w, h, w]
        h = h + self.after_blocks(self.blocks(h))  # the long skip
        h = self.upsample(h)  # [B, w, 4h, 4w]
        return torch.tanh(fit_to(self.to_image(h), self.size))  # [B, C, H, W]


class SRDiscriminator(nn.Module):
    """``D(HR)``: image ``[B, C, H, W]`` → one logit ``[B, 1]`` (Ledig et al., Fig. 4).

    conv3x3 + leaky ReLU 0.2; then per level a stride-1 conv (doubling the width from the second
    level on) and a stride-2 conv, each with BN and leaky ReLU, halving the side down to 4..7 px
    (28 → 14 → 7: 2 levels; the paper's 96 px crops take 4); dense ``16 * base_width`` (paper
    1024), leaky ReLU, dense 1. The paper's final sigmoid is in the loss (BCE with logits).
    """

    def __init__(self, image_shape: tuple[int, int, int], base_width: int):
        super().__init__()
        channels, size, _ = image_shape
        _, halvings = plan_resolution(size)
        levels = max(halvings, 1)
        level_widths = widths(base_width, levels - 1)
        layers: list[nn.Module] = [nn.Conv2d(channels, base_width, 3, padding=1), nn.LeakyReLU(0.2)]
        c_in = base_width
        for i, width in enumerate(level_widths):
            if i > 0:
                layers += [nn.Conv2d(c_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                           nn.LeakyReLU(0.2)]
            layers += [nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(width), nn.LeakyReLU(0.2)]
            c_in = width
        self.trunk = nn.Sequential(*layers)
        with torch.no_grad():
            flat = self.trunk(torch.zeros(2, *image_shape)).flatten(1).shape[1]
        hidden = min(16 * base_width, 2 * MAX_WIDTH)
        self.head = nn.Sequential(nn.Linear(flat, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x).flatten(1))  # [B, C, H, W] -> [B, 1]


@register_model("srgan")
class SRGAN(PairedTranslator):
    """SRGAN (Ledig 2017), 4x super-resolution of area-downsampled images (7 → 28 px on MNIST):
    a residual generator (6 blocks of 32 channels; paper 16 of 64) against a conv discriminator,
    content loss (pixel MSE, or classifier features in place of VGG54) + 1e-3 adversarial, no
    SRResNet pre-training.

    Source: the image downsampled 4x by area averaging (:func:`genbench.models.paired.downsample`).
    Generator (SRResNet): conv9x9-PReLU, ``residual_blocks`` residual blocks (conv-BN-PReLU-conv-BN),
    a long skip, two x2 pixel-shuffle upsamplings with PReLU, conv9x9, ``tanh``. Discriminator:
    the paper's conv3x3 stack (BN, leaky ReLU 0.2, stride 2 every second conv), two dense layers.
    Losses: ``D``: ``BCE(D(HR), 1) + BCE(D(G(LR)), 0)``; ``G``: ``content + 1e-3 BCE(D(G(LR)), 1)``
    with ``content_loss=pixel`` the per-pixel MSE in ``[-1, 1]`` (the paper's SRGAN-MSE) or
    ``features`` the MSE between the feature maps of the suite's MNIST / Fashion-MNIST classifier
    (:mod:`genbench.features`; its second conv block after ReLU, before pooling: ``[B, 64, 14, 14]``),
    which stands in for the VGG54 loss of SRGAN-VGG54 because no ImageNet VGG is available offline.
    Adam 1e-4, beta1 0.9; one D and one G step per batch.

    Simplifications: 32 channels and 6 residual blocks by default (paper 64 and 16), so a CPU
    smoke run takes minutes; no SRResNet pre-training of the generator and no learning-rate drop
    (the paper initialises SRGAN from a 10^6-step MSE-trained SRResNet); area instead of bicubic
    downsampling; whole 28 px images instead of random 96 px crops; the VGG features are not
    rescaled by 1/12.75 (the classifier's features have their own scale). Default
    ``content_loss=pixel``: it works offline for every dataset and size; ``features`` needs
    the MNIST-sized images of the classifier's dataset.
    """

    config_class = SRGANConfig
    loss_names = ("d_loss", "g_loss", "content", "adversarial", "d_real", "d_fake")

    def __init__(self, config: SRGANConfig, image_shape):
        super().__init__(config, image_shape)
        channels, height, width = self.image_shape
        self.generator = SRResNet(channels, config.base_width, config.residual_blocks, (height, width))
        self.discriminator = SRDiscriminator(self.image_shape, config.base_width)
        # The frozen classifier (content_loss=features), loaded on first use. A dict, not an attribute:
        # nn.Module would register it as a submodule (trained, saved, counted as parameters).
        self._frozen: dict[str, nn.Module] = {}

    def build_optimizers(self):
        self.optimizers = adam_pair(self.generator, self.discriminator, self.config)
        return self.optimizers

    def degrade(self, x: torch.Tensor) -> torch.Tensor:
        """The low-resolution source: ``[N, C, H, W]`` → ``[N, C, H/4, W/4]`` in ``[-1, 1]``."""
        return downsample(x, SCALE)

    @evaluating
    @torch.no_grad()
    def translate(self, source: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``G(LR)``: ``[N, C, H/4, W/4]`` → ``[N, C, H, W]`` in ``[-1, 1]`` (deterministic; the
        ``generator`` argument is part of the paired protocol and unused)."""
        return torch.cat([self.generator(chunk.to(self.device)).float()
                          for chunk in source.split(500)])

    def baseline(self, source: torch.Tensor) -> torch.Tensor:
        """Bicubic upsampling of the source to the target size, clipped to ``[-1, 1]``."""
        return bicubic_upsample(source, self.image_shape[1:])

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """Frozen classifier feature maps ``[B, 64, H/2, W/2]`` of ``x`` (the second conv block
        after ReLU, before its max pooling). The classifier is held outside the module tree: it is
        not trained, not saved in checkpoints and loaded from the shipped weights (SHA-256 checked)."""
        if "features" not in self._frozen:
            from genbench.features.registry import load_classifier

            classifier, _ = load_classifier(self.config.feature_dataset, device=x.device, retrain=False)
            for parameter in classifier.parameters():
                parameter.requires_grad_(False)
            self._frozen["features"] = classifier.trunk[:7]  # conv, BN, ReLU, pool, conv, BN, ReLU
        net = self._frozen["features"].to(x.device).eval()
        return net(x)

    def content(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Content loss (a scalar): per-pixel MSE in ``[-1, 1]``, or MSE of classifier features."""
        if self.config.content_loss == "features":
            return F.mse_loss(self._features(output.float()), self._features(target.float()))
        return F.mse_loss(output.float(), target.float())

    def train_step(self, batch, step, ctx: StepContext):
        self.remember(batch)
        source = self.degrade(batch)  # [B, C, H/4, W/4]
        d = discriminator_step(ctx, self.optimizers["discriminator"], batch,
                               lambda: self.generator(source), self.discriminator)  # fakes [B, C, H, W]

        with ctx.autocast():
            adversarial = non_saturating_g_loss(self.discriminator(d.fake))
        with ctx.full_precision():
            content = self.content(d.fake, batch)
            g_loss = content + self.config.adversarial_weight * adversarial.float()
        optimizer_step(ctx, self.optimizers["generator"], g_loss, self.generator.parameters())
        return {"d_loss": d.loss.item(), "g_loss": g_loss.item(), "content": content.item(),
                "adversarial": adversarial.item(), **d.probabilities()}
