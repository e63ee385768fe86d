"""Turns a trained run into the tensors the metric functions need, and writes metrics.json."""

from genbench.evaluation.evaluate import evaluate_run
from genbench.evaluation.registry import METRICS, MetricEntry
from genbench.evaluation.settings import EvalSettings, eval_settings_for

__all__ = ["evaluate_run", "METRICS", "MetricEntry", "EvalSettings", "eval_settings_for"]
