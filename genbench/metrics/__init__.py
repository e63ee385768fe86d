"""Metrics: pure functions on tensors and on objects with the likelihood protocol."""

from genbench.metrics.protocol import EncoderModel, LikelihoodModel

__all__ = ["LikelihoodModel", "EncoderModel"]
