"""MS-SSIM between image pairs (Wang et al. 2003) and MS-SSIM sample diversity (Odena et al. 2017).

Images are ``[N, C, H, W]`` in ``[-1, 1]``. SSIM's luminance term is not shift-invariant, so the
intensities are mapped to ``[0, 1]`` and compared with ``data_range = 1``.

Two settings, chosen from the image size by :func:`ms_ssim_setting` and computed by one scale loop:

* ``min(H, W) > 160``: the standard MS-SSIM, 5 scales, 11-pixel Gaussian window with sigma 1.5,
  weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333); equal to
  ``pytorch_msssim.ms_ssim(x, y, data_range=1, size_average=False)``.
* smaller images (pytorch-msssim refuses them; MNIST is 28 px): a 7-pixel window with sigma 1.5, as
  many scales as keep the smaller side at least 7 px (at most 5; 28 px gives 28, 14, 7: 3 scales),
  and the first K standard weights renormalised to sum to 1. Below 7 px there is one scale and the
  window shrinks to the largest odd size that fits.

Each scale halves the image with 2x2 average pooling, zero-padding an odd side as pytorch-msssim
does. The contrast-structure term of the first K - 1 scales and the full SSIM of the last are
clamped at 0, raised to their weights and multiplied, then averaged over channels.

The Gaussian filter is applied as two products with banded matrices rather than as a depthwise
convolution (see ``_blur``): same sums, ~5x faster on CPU for MNIST-sized and 176-px images
(``benchmarks/bench_kernels.py``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from genbench.core.errors import UsageError
from genbench.metrics.checks import check_images
from genbench.metrics.result import ScalarResult

STANDARD_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
SIGMA = 1.5
K1, K2 = 0.01, 0.03  # SSIM stabilising constants, times data_range = 1
SMALL_WINDOW = 7
# The largest side pytorch-msssim refuses: (11 - 1) * 2^4, so that the 5th scale still fits the window.
STANDARD_MIN_SIDE = 160
# Pairs per ms_ssim call in ms_ssim_diversity are chosen so that one image batch holds about this
# many values (16 MiB in float32), keeping the filtered intermediates to a few hundred MiB.
_BATCH_VALUES = 2**22
# Sides up to which the Gaussian filter is a product with banded matrices rather than a convolution.
_MATMUL_MAX_SIDE = 1024


def _downsampled(side: int) -> int:
    """The side after one 2x2 average pooling with pytorch-msssim's padding (odd sides round up)."""
    return (side + side % 2) // 2


def ms_ssim_setting(height: int, width: int) -> dict:
    """The MS-SSIM setting used for ``height x width`` images (pixels), to be named in tables.

    Returns ``{"name", "scales", "window", "sigma", "weights", "data_range", "k1", "k2"}``: the
    number of scales, the Gaussian window side (pixels) and sigma (pixels), one weight per scale.
    """
    side = min(height, width)
    if side < 1:
        raise UsageError(f"images must be at least 1x1 pixels, got {height}x{width}")
    if side > STANDARD_MIN_SIDE:
        scales, window, weights = 5, 11, list(STANDARD_WEIGHTS)
        name = "standard (5 scales, 11-px window, sigma 1.5)"
    else:
        window, scales = SMALL_WINDOW, 1
        if side < SMALL_WINDOW:
            window = side if side % 2 else side - 1  # one scale; the largest odd window that fits
        else:
            while scales < 5 and _downsampled(side) >= window:
                side = _downsampled(side)
                scales += 1
        total = sum(STANDARD_WEIGHTS[:scales])
        weights = [w / total for w in STANDARD_WEIGHTS[:scales]]
        plural = "s" if scales > 1 else ""
        name = f"small-image ({scales} scale{plural}, {window}-px window, sigma 1.5, renormalised weights)"
    return {"name": name, "scales": scales, "window": window, "sigma": SIGMA, "weights": weights,
            "data_range": 1.0, "k1": K1, "k2": K2}


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Normalised 1-D Gaussian ``[size]``, centred on ``size // 2``."""
    coords = torch.arange(size, dtype=torch.float32) - size // 2
    window = torch.exp(-(coords**2) / (2 * sigma**2))
    return (window / window.sum()).to(device=device, dtype=dtype)


def _band(size: int, window: torch.Tensor) -> torch.Tensor:
    """``[size - w + 1, size]`` matrix whose product with a ``size`` vector is its valid filtering."""
    w = window.numel()
    rows = torch.arange(size - w + 1, device=window.device)[:, None]
    band = torch.zeros(size - w + 1, size, dtype=window.dtype, device=window.device)
    return band.scatter_(1, rows + torch.arange(w, device=window.device), window.expand(len(rows), w))


def _blur(t: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter, no padding: ``[..., H, W] -> [..., H - w + 1, W - w + 1]``.

    Up to ``_MATMUL_MAX_SIDE`` pixels per side it is two products with banded matrices (``band_H @ t
    @ band_W^T``): more multiplications than a convolution (by ``side / w``), but one large batched
    matrix product runs 4-10x faster on CPU than a depthwise ``conv2d`` over single-channel images
    (measured at 28 to 1024 px). Larger images use the convolution.
    """
    h, w = t.shape[-2:]
    if max(h, w) <= _MATMUL_MAX_SIDE:
        return _band(h, window) @ t @ _band(w, window).T
    size = window.numel()
    flat = t.reshape(-1, 1, h, w)  # every image and channel on its own
    flat = F.conv2d(flat, window.view(1, 1, size, 1))  # along H
    flat = F.conv2d(flat, window.view(1, 1, 1, size))  # along W
    return flat.view(*t.shape[:-2], *flat.shape[-2:])


def _ssim_terms(x: torch.Tensor, y: torch.Tensor, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean SSIM and mean contrast-structure term per image and channel, both ``[N, C]``."""
    c1, c2 = K1**2, K2**2  # (K * data_range)^2 with data_range = 1
    mu_x, mu_y = _blur(x, window), _blur(y, window)  # [N, C, H', W']
    mu_xx, mu_yy, mu_xy = mu_x.pow(2), mu_y.pow(2), mu_x * mu_y
    var_x = _blur(x * x, window) - mu_xx
    var_y = _blur(y * y, window) - mu_yy
    cov_xy = _blur(x * y, window) - mu_xy
    cs_map = (2 * cov_xy + c2) / (var_x + var_y + c2)
    ssim_map = (2 * mu_xy + c1) / (mu_xx + mu_yy + c1) * cs_map
    return ssim_map.flatten(2).mean(-1), cs_map.flatten(2).mean(-1)


def _ms_ssim(x: torch.Tensor, y: torch.Tensor, setting: dict) -> torch.Tensor:
    """MS-SSIM ``[N]`` of checked images in ``[-1, 1]``; float64 in gives float64 out, else float32."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x, y = (x.to(dtype) + 1) / 2, (y.to(dtype) + 1) / 2  # [-1, 1] -> [0, 1]
    window = _gaussian_window(setting["window"], setting["sigma"], dtype, x.device)
    scales = setting["scales"]
    factors = []  # one [N, C] per scale
    for scale in range(scales):
        ssim, cs = _ssim_terms(x, y, window)
        if scale < scales - 1:
            factors.append(torch.relu(cs))
            padding = [s % 2 for s in x.shape[2:]]  # odd side: pad so the last row/column is kept
            x = F.avg_pool2d(x, kernel_size=2, padding=padding)
            y = F.avg_pool2d(y, kernel_size=2, padding=padding)
    factors.append(torch.relu(ssim))
    weights = torch.tensor(setting["weights"], dtype=dtype, device=x.device)
    per_channel = torch.prod(torch.stack(factors) ** weights.view(-1, 1, 1), dim=0)  # [N, C]
    return per_channel.mean(1)


def ms_ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MS-SSIM of each pair ``(x[i], y[i])``: ``[N]``, unitless, in ``[0, 1]``, 1 for identical images.

    Args:
        x, y: ``[N, C, H, W]`` in ``[-1, 1]``, same shape. The setting (scales, window, weights)
            follows from ``H, W``; see the module docstring and :func:`ms_ssim_setting`.

    Returns:
        ``[N]`` float32 (float64 for float64 inputs) on the inputs' device.
    """
    check_images(x, "x")
    check_images(y, "y")
    if x.shape != y.shape:
        raise UsageError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    return _ms_ssim(x, y.to(x.device), ms_ssim_setting(x.shape[2], x.shape[3]))


def _mean_over_pairs(images: torch.Tensor, index: torch.Tensor, num_pairs: int,
                     generator: torch.Generator, setting: dict) -> torch.Tensor:
    """MS-SSIM ``[num_pairs]`` (float64) of random ordered pairs of distinct images among ``index``."""
    n = index.numel()
    first = torch.randint(n, (num_pairs,), generator=generator)
    # An offset in [1, n) makes the second image always differ from the first, uniformly.
    second = (first + torch.randint(1, n, (num_pairs,), generator=generator)) % n
    first, second = index[first], index[second]
    batch = max(1, _BATCH_VALUES // images[0].numel())
    values = []
    with torch.inference_mode():  # a number, never a loss: no autograd bookkeeping
        for start in range(0, num_pairs, batch):
            a = images[first[start : start + batch].to(images.device)]
            b = images[second[start : start + batch].to(images.device)]
            values.append(_ms_ssim(a, b, setting).double().cpu())
    return torch.cat(values)


def ms_ssim_diversity(images: torch.Tensor, num_pairs: int = 1000, seed: int = 0,
                      labels: torch.Tensor | None = None) -> ScalarResult:
    """Mean MS-SSIM over random pairs of distinct images of one sample (Odena et al. 2017).

    Lower is more diverse; compare with the same number on real data. Pairs are drawn uniformly,
    with replacement, among ordered pairs ``(i, j), i != j`` by a CPU ``torch.Generator`` seeded
    with ``seed``, and computed in batches.

    Args:
        images: ``[N, C, H, W]`` in ``[-1, 1]``, ``N >= 2``.
        num_pairs: pairs drawn for the whole sample, and again within each class.
        labels: optional ``[N]`` class labels: ``settings["per_class"] = {label: mean MS-SSIM}`` over
            ``num_pairs`` pairs within each class. Classes with fewer than 2 images have no value
            and are listed in ``settings["per_class_skipped"]``.

    Returns:
        :class:`ScalarResult` (MS-SSIM, unitless): ``value`` the mean over pairs, ``std`` the standard
        deviation over pairs, ``ci_low``/``ci_high`` a 95% normal interval of the mean,
        ``num_samples`` the number of pairs; ``settings["ms_ssim"]`` is :func:`ms_ssim_setting`.
    """
    check_images(images, "images")
    n = images.shape[0]
    if n < 2:
        raise UsageError(f"ms_ssim_diversity needs at least 2 images, got {n}")
    if not isinstance(num_pairs, (int, np.integer)) or num_pairs < 2:
        raise UsageError(f"num_pairs must be an integer >= 2, got {num_pairs!r}")
    num_pairs = int(num_pairs)
    setting = ms_ssim_setting(images.shape[2], images.shape[3])
    generator = torch.Generator().manual_seed(seed)

    values = _mean_over_pairs(images, torch.arange(n), num_pairs, generator, setting)
    mean, std = float(values.mean()), float(values.std())
    half_width = 1.96 * std / math.sqrt(num_pairs)
    settings: dict = {"ms_ssim": setting, "num_images": n, "num_pairs": num_pairs, "seed": seed,
                      "std_is": "standard deviation over pairs", "ci": "95% normal interval of the mean"}

    if labels is not None:
        labels = torch.as_tensor(labels).cpu().reshape(-1)
        if labels.numel() != n:
            raise UsageError(f"labels must have one entry per image: got {labels.numel()} for {n} images")
        per_class, skipped = {}, []
        for label in torch.unique(labels).tolist():  # sorted, so the draws do not depend on label order
            index = torch.nonzero(labels == label).flatten()
            if index.numel() < 2:
                skipped.append(label)
                continue
            per_class[label] = float(_mean_over_pairs(images, index, num_pairs, generator, setting).mean())
        settings["per_class"] = per_class
        if skipped:
            settings["per_class_skipped"] = skipped

    return ScalarResult(value=mean, std=std, ci_low=mean - half_width, ci_high=mean + half_width,
                        num_samples=num_pairs, settings=settings)
