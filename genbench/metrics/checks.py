"""Input checks shared by the metric functions: one cheap pass, one line of error.

Each public metric calls these first, so a wrong convention (``[0, 255]`` images, ``[H, W]`` without
a batch dimension) or a diverged model's NaN fails loudly instead of returning a plausible number.
"""

from __future__ import annotations

import math

import torch

from genbench.core.errors import UsageError

# Rounding slack for images in [-1, 1]: (x / 255 - 0.5) / 0.5 and the like overshoot by ~1e-7.
RANGE_TOLERANCE = 1e-6


def _shape(x) -> str:
    return f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__


def _bounds(x: torch.Tensor) -> tuple[float, float]:
    """``(min, max)`` in one pass; NaN anywhere makes both NaN (``aminmax`` propagates it)."""
    low, high = torch.aminmax(x.detach())
    return float(low), float(high)


def check_finite(x: torch.Tensor, name: str, why: str = "") -> torch.Tensor:
    """``x`` unchanged if every value is finite; else :class:`UsageError` naming ``name``.

    ``why`` ends the message (e.g. ``"MMD needs finite features"``). Integer and boolean tensors
    are finite by construction and pass without a pass over the data.
    """
    if not isinstance(x, torch.Tensor):
        raise UsageError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_floating_point() and x.numel():
        low, high = _bounds(x)
        if not (math.isfinite(low) and math.isfinite(high)):
            raise UsageError(f"{name} contains NaN or infinite values" + (f"; {why}" if why else ""))
    return x


def check_images(x: torch.Tensor, name: str, tolerance: float = RANGE_TOLERANCE,
                 hint: str = "map [0, 1] images with 2 * x - 1, uint8 ones with "
                             "genbench.data.to_model_range") -> torch.Tensor:
    """``x`` unchanged if it is a finite float ``[N, C, H, W]`` in ``[-1, 1]`` (within
    ``tolerance``); else :class:`UsageError` stating the expected shape or range and what was given."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise UsageError(f"{name} must be a 4-D tensor [N, C, H, W] in [-1, 1], got {_shape(x)}")
    if not x.is_floating_point():
        raise UsageError(f"{name} must be a float tensor [N, C, H, W] in [-1, 1], got {x.dtype}; {hint}")
    if not x.numel():
        return x
    low, high = _bounds(x)
    if not (math.isfinite(low) and math.isfinite(high)):
        raise UsageError(f"{name} contains NaN or infinite values; images must be finite, in [-1, 1]")
    if low < -1 - tolerance or high > 1 + tolerance:
        raise UsageError(f"{name} must be in [-1, 1], got values in [{low:.4g}, {high:.4g}]; {hint}")
    return x
