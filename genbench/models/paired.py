"""Paired image-to-image tasks derived from unpaired datasets, and what paired models share.

MNIST-like datasets have no paired images, so the source of each training pair is computed from the
target inside the model: the data pipeline stays the unpaired one, and every model still gets
``[B, C, H, W]`` batches in ``[-1, 1]``. Two degradations, pure functions on ``[N, C, H, W]`` in
``[-1, 1]``:

* :func:`downsample`: area (average-pool) downsampling by ``factor`` (28 px → 7 px for 4x
  super-resolution, as SRGAN's bicubic-downsampled LR images but without the bicubic kernel).
* :func:`edge_map`: thresholded Sobel gradient magnitude, the "edges → photo" task of pix2pix
  (which used HED edges; Sobel needs no trained network).

A paired model (:class:`PairedTranslator`) has ``degrade(x)`` (its source image for target ``x``),
``translate(source)`` (its output) and ``baseline(source)`` (the trivial translation a reader
compares with), which the ``psnr`` and ``ssim`` metrics of :mod:`genbench.evaluation.paired` use.

Sampling: a paired model has no prior, so ``sample(n, generator)`` translates degraded copies of
the first ``SOURCE_BANK_SIZE`` training images the model saw (kept as a ``uint8`` buffer in its
state dict, so a checkpoint samples the same images). That is what the harness's sample grids
show. It is not a sample from the data distribution: ``can_sample`` is False, so the sample-based
metrics (MMD, MS-SSIM diversity, FID, KID, precision/recall, label entropy, memorisation) report
n/a for paired models rather than scoring 64 recycled training sources.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from genbench.core.errors import GenbenchError
from genbench.models.base import GenerativeModel, evaluating
from genbench.models.image_bank import TrainingImageBank

# Sobel derivative per pixel for intensities in [0, 1]: the [1, 2, 1] smoothing sums to 4 and the
# central difference spans 2 pixels, hence / 8. A black-to-white step gives 0.5 on the pixels on
# both sides of it.
SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8
# Half a full step's response: the outline of ink strokes (contrast >= 0.5 across the stroke
# border) is kept; the faint anti-aliasing halo of MNIST digits and texture of low contrast is not.
# A square of ink gets a 2-pixel-wide outline (one pixel inside and one outside each side), except
# the 4 outer diagonal corner pixels, whose response is sqrt(2) / 8 = 0.18.
EDGE_THRESHOLD = 0.25
SOURCE_BANK_SIZE = 64  # training images kept for sample(): one sample grid's worth


def downsample(x: torch.Tensor, factor: int = 4) -> torch.Tensor:
    """Area downsampling: ``[N, C, H, W]`` → ``[N, C, H // factor, W // factor]``, same range.

    Each output pixel is the mean of a ``factor x factor`` block (28 → 7 for ``factor=4``); when a
    side is not a multiple of ``factor`` the blocks are the adaptive-pooling ones (about
    ``H / (H // factor)`` pixels each, overlapping by at most one).
    """
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    height, width = x.shape[-2:]
    if height % factor == 0 and width % factor == 0:
        return F.avg_pool2d(x, factor)
    return F.adaptive_avg_pool2d(x, (max(height // factor, 1), max(width // factor, 1)))


def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude ``[N, 1, H, W]`` of the channel mean of ``x`` (``[N, C, H, W]``
    in ``[-1, 1]``), in intensity per pixel on the ``[0, 1]`` scale; borders replicate the edge
    pixels, so a constant image has no edges."""
    gray = (x.float().mean(1, keepdim=True) + 1) / 2  # [N, 1, H, W] in [0, 1]
    padded = F.pad(gray, (1, 1, 1, 1), mode="replicate")
    kernels = torch.stack([SOBEL_X, SOBEL_X.T])[:, None].to(gray.device)  # [2, 1, 3, 3]
    gradients = F.conv2d(padded, kernels)  # [N, 2, H, W]: d/dx, d/dy
    return gradients.pow(2).sum(1, keepdim=True).sqrt()


def edge_map(x: torch.Tensor, threshold: float = EDGE_THRESHOLD) -> torch.Tensor:
    """Edges of ``x`` (``[N, C, H, W]`` in ``[-1, 1]``) as ``[N, C, H, W]`` in ``{-1, 1}``: 1
    where the Sobel magnitude of the channel mean exceeds ``threshold`` (see ``EDGE_THRESHOLD``),
    -1 elsewhere; the same map in every channel."""
    edges = sobel_magnitude(x) > threshold  # [N, 1, H, W]
    return (edges.to(x.dtype) * 2 - 1).expand_as(x).contiguous()


def bicubic_upsample(source: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic interpolation of ``source`` to ``size`` (``[N, C, h, w]`` → ``[N, C, *size]``),
    clipped to ``[-1, 1]`` (the cubic kernel overshoots at edges): super-resolution's baseline."""
    return F.interpolate(source.float(), size=size, mode="bicubic", align_corners=False).clamp(-1, 1)


def fit_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``x`` resized (bilinear, antialiased) to ``size`` when its side differs (sides that are not
    a power-of-two multiple of the coarse side, e.g. 100 px); unchanged otherwise."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


@runtime_checkable
class PairedModel(Protocol):
    """What the paired metrics need (no base class required)."""

    def degrade(self, x: torch.Tensor) -> torch.Tensor:
        """The model's source for targets ``x`` (``[N, C, H, W]`` in ``[-1, 1]``)."""

    def translate(self, source: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """The model's output for ``source``: ``[N, C, H, W]`` in ``[-1, 1]`` at the target size."""

    def baseline(self, source: torch.Tensor) -> torch.Tensor:
        """The trivial translation of ``source`` that the model should beat, same shape."""


class PairedTranslator(GenerativeModel):
    """Base of the paired models: a source bank for :meth:`sample`, and ``can_sample = False``.

    Subclasses implement :meth:`degrade`, :meth:`translate`, :meth:`baseline` and call
    :meth:`remember` with each training batch.
    """

    can_sample = False  # no prior: the sample-based metrics report n/a (see the module docstring)

    def __init__(self, config, image_shape):
        super().__init__(config, image_shape)
        self.bank = TrainingImageBank(self, "source_bank", "source_bank_count", SOURCE_BANK_SIZE,
                                      self.image_shape, dtype=torch.uint8)

    def degrade(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def translate(self, source: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def baseline(self, source: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def remember(self, batch: torch.Tensor) -> None:
        """Keep the first images of ``batch`` (``[B, C, H, W]`` in ``[-1, 1]``) until the bank holds
        ``SOURCE_BANK_SIZE``; they are the sources :meth:`sample` translates."""
        self.bank.add(batch)

    def remembered(self) -> torch.Tensor:
        """The remembered training images, float ``[K', C, H, W]`` in ``[-1, 1]``."""
        if len(self.bank) == 0:
            raise GenbenchError(f"{self.name or type(self).__name__} has no source images yet: "
                                "sample() translates degraded training images it keeps while "
                                "training; train at least one step first")
        return self.bank.kept()

    @evaluating
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Translations ``[n, C, H, W]`` in ``[-1, 1]`` of degraded remembered training images, in
        an order drawn with ``generator`` (each image once before any repeats)."""
        targets = self.remembered()
        rounds = math.ceil(n / len(targets))
        order = torch.cat([torch.randperm(len(targets), generator=generator) for _ in range(rounds)])
        chosen = targets[order[:n].to(targets.device)]
        return self.translate(self.degrade(chosen), generator=generator)
