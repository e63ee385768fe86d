"""Full-reference image similarity for paired tasks: PSNR and SSIM per image pair.

Images are ``[N, C, H, W]`` in ``[-1, 1]``; both metrics map them to ``[0, 1]`` and use
``data_range = 1``, the convention of super-resolution papers for 8-bit images scaled to [0, 1].
"""

from __future__ import annotations

import torch

from genbench.core.errors import UsageError
from genbench.metrics.checks import check_images
from genbench.metrics.ssim import SIGMA, ms_ssim_setting

# PSNR of identical images is infinite; an MSE floor of 1e-10 caps it at 100 dB so that means stay
# finite (no 8-bit image pair that differs at all comes near: one pixel off by 1/255 in a 28x28
# image is already 10 log10(784 * 255^2) = 77.1 dB).
MSE_FLOOR = 1e-10


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    check_images(x, "x")
    check_images(y, "y")
    if x.shape != y.shape:
        raise UsageError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio of each pair ``(x[i], y[i])`` in dB, ``[N]`` float64.

    ``10 log10(1 / MSE)`` with the MSE over all channels and pixels of the images mapped to
    ``[0, 1]`` (peak 1), floored at ``MSE_FLOOR`` (100 dB). Higher is better.
    """
    _check_pair(x, y)
    x01 = (x.double() + 1) / 2
    y01 = (y.double().to(x.device) + 1) / 2
    mse = (x01 - y01).pow(2).flatten(1).mean(1).clamp_min(MSE_FLOOR)
    return -10 * torch.log10(mse)


def ssim_window(height: int, width: int) -> int:
    """SSIM's Gaussian window side for ``height x width`` images: the first scale's window of the
    suite's MS-SSIM (:func:`genbench.metrics.ssim.ms_ssim_setting`): the standard 11 px above
    160 px, 7 px for smaller images (MNIST's 28 px), the largest odd side that fits below 7 px."""
    return ms_ssim_setting(height, width)["window"]


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM (Wang et al. 2004) of each pair, ``[N]`` float (mean over pixels and channels).

    ``pytorch_msssim.ssim`` on the images mapped to ``[0, 1]``, ``data_range = 1``, Gaussian window
    of :func:`ssim_window` pixels with sigma 1.5, K = (0.01, 0.03), valid filtering (no padding).
    1 for identical images; higher is better.
    """
    from pytorch_msssim import ssim as pytorch_ssim

    _check_pair(x, y)
    window = ssim_window(x.shape[2], x.shape[3])
    x01 = (x.float() + 1) / 2
    y01 = (y.float().to(x.device) + 1) / 2
    return pytorch_ssim(x01, y01, data_range=1.0, size_average=False, win_size=window,
                        win_sigma=SIGMA)


def ssim_setting(height: int, width: int) -> dict:
    """The SSIM setting for ``height x width`` images, to be named beside the number."""
    return {"window": ssim_window(height, width), "sigma": SIGMA, "data_range": 1.0,
            "k1": 0.01, "k2": 0.03, "implementation": "pytorch_msssim.ssim"}
