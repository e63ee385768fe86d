"""Convolutional building blocks shared by the reference models, for any size from 8 to 256 px.

Generators start from a small square (4 to 7 pixels a side) and double it ``k`` times; when the
target is not ``start * 2**k`` (e.g. 100 px), the last feature map is resized to the target with
antialiasing. 28 px (MNIST) is exactly 7 * 2**2, 32 and 64 are 4 * 2**k.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Norm = Literal["batch", "layer", "none"]
MAX_WIDTH = 512


def plan_resolution(size: int) -> tuple[int, int]:
    """``(start, doublings)`` with ``start`` in 4..7 (or ``size`` if smaller), ``start * 2**k >= size``."""
    if size < 8:
        return size, 0
    doublings = max(0, int(math.floor(math.log2(size / 4))))
    start = math.ceil(size / 2**doublings)
    return start, doublings


def widths(base: int, levels: int) -> list[int]:
    """Channel widths from the finest level (``base``) to the coarsest, doubling, capped at 512."""
    return [min(base * 2**i, MAX_WIDTH) for i in range(levels + 1)]


def norm_layer(kind: Norm, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":  # per-example normalisation: allowed in WGAN-GP critics
        return nn.GroupNorm(1, channels)
    return nn.Identity()


def activation(slope: float) -> nn.Module:
    return nn.ReLU() if slope == 0 else nn.LeakyReLU(slope)


class UpBlock(nn.Module):
    """Doubles the side: 4x4 transposed conv, norm, activation (DCGAN)."""

    def __init__(self, c_in: int, c_out: int, norm: Norm, slope: float):
        super().__init__()
        self.body = nn.Sequential(
            nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=norm == "none"),
            norm_layer(norm, c_out), activation(slope),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class DownBlock(nn.Module):
    """Halves the side (rounding down): strided 4x4 conv (DCGAN), or the residual block of the
    generative VAE article, in its order: 3x3 conv (with activation), max pooling, dropout,
    batch norm; the skip is a max-pooled 1x1 conv."""

    def __init__(
        self, c_in: int, c_out: int, norm: Norm, slope: float, residual: bool, dropout: float = 0.0
    ):
        super().__init__()
        self.residual = residual
        if residual:
            self.body = nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=1), activation(slope), nn.MaxPool2d(2),
                nn.Dropout(dropout), norm_layer(norm, c_out),
            )
            self.skip = nn.Sequential(nn.Conv2d(c_in, c_out, 1), nn.MaxPool2d(2))
        else:
            layers = [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=norm == "none")]
            layers += [norm_layer(norm, c_out), activation(slope)]
            if dropout:
                layers.append(nn.Dropout(dropout))
            self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.skip(x) if self.residual else self.body(x)


class ConvGenerator(nn.Module):
    """``z [B, latent_dim]`` → image ``[B, C, size, size]``; output is ``tanh`` or linear."""

    def __init__(
        self,
        latent_dim: int,
        image_shape: tuple[int, int, int],
        base_width: int,
        norm: Norm = "batch",
        slope: float = 0.0,
        output: Literal["tanh", "linear"] = "tanh",
    ):
        super().__init__()
        channels, size, _ = image_shape
        self.size = size
        self.start, doublings = plan_resolution(size)
        level_widths = widths(base_width, doublings)[::-1]  # coarse → fine
        self.project = nn.Sequential(
            nn.Linear(latent_dim, level_widths[0] * self.start**2),
            nn.Unflatten(1, (level_widths[0], self.start, self.start)),
            norm_layer(norm, level_widths[0]),
            activation(slope),
        )
        self.blocks = nn.Sequential(
            *[UpBlock(a, b, norm, slope) for a, b in zip(level_widths, level_widths[1:])]
        )
        self.to_image = nn.Conv2d(level_widths[-1], channels, 3, padding=1)
        self.output = output

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.project(z))  # [B, base, start * 2**k, start * 2**k]
        if h.shape[-1] != self.size:
            h = F.interpolate(h, size=(self.size, self.size), mode="bilinear", antialias=True)
        x = self.to_image(h)  # [B, C, size, size]
        return torch.tanh(x) if self.output == "tanh" else x


class ConvEncoder(nn.Module):
    """Image ``[B, C, size, size]`` → ``[B, out_features]``, halving the side down to 4..7 px.

    ``forward(x, return_features=True)`` also returns each block's output, the feature maps that
    feature-matching losses (VAE-GAN, DeePSiM) compare.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        base_width: int,
        out_features: int,
        norm: Norm = "batch",
        slope: float = 0.2,
        residual: bool = False,
        dropout: float = 0.0,
        first_norm: bool = False,
    ):
        super().__init__()
        channels, size, _ = image_shape
        _, halvings = plan_resolution(size)
        level_widths = widths(base_width, max(halvings - 1, 0))
        blocks = []
        c_in = channels
        for i, c_out in enumerate(level_widths[:halvings] if halvings else [base_width]):
            block_norm: Norm = norm if (i > 0 or first_norm or residual) else "none"
            blocks.append(DownBlock(c_in, c_out, block_norm, slope, residual, dropout))
            c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        with torch.no_grad():
            flat = self._trunk(torch.zeros(2, channels, size, size))[0].flatten(1).shape[1]
        self.head = nn.Linear(flat, out_features)

    def _trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return x, features

    def forward(self, x: torch.Tensor, return_features: bool = False):
        h, features = self._trunk(x)  # [B, width, ~start, ~start]
        out = self.head(h.flatten(1))  # [B, out_features]
        return (out, features) if return_features else out
