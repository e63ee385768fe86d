"""The metrics registry: name, direction, unit and the function that computes it for a run.

A new metric is one pure function in ``genbench/metrics`` plus one ``@register_metric`` entry in
``genbench/evaluation/compute.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from genbench.core.registry import Registry


class NotApplicable(Exception):
    """Raised by a metric's compute function when the metric does not apply to the model."""


@dataclass(frozen=True)
class MetricEntry:
    name: str
    direction: str  # "higher", "lower" or "none" (reported, not ranked)
    unit: str
    description: str
    compute: Callable[[Any], dict[str, Any]]


METRICS: Registry[MetricEntry] = Registry("metric")


def register_metric(name: str, direction: str, unit: str, description: str):
    def decorator(function):
        METRICS.add(name, MetricEntry(name, direction, unit, description, function))
        return function

    return decorator
