"""genbench: a benchmarking and evaluation suite for generative image models."""

__version__ = "0.1.0"
