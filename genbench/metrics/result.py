"""Result objects shared by the metric functions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class ScalarResult:
    """A scalar estimate. ``value`` is the number; the rest is present where it applies."""

    value: float
    std: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    num_samples: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def __float__(self) -> float:
        return float(self.value)

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "std": self.std, "ci_low": self.ci_low,
                "ci_high": self.ci_high, "num_samples": self.num_samples,
                "settings": self.settings}


@dataclass
class PerExampleResult:
    """A per-example estimate: ``value`` is ``[N]`` (float64), ``std_error`` its standard error
    per example where the estimator gives one."""

    value: torch.Tensor
    std_error: torch.Tensor | None = None
    num_samples: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def mean(self) -> float:
        return float(self.value.mean())
