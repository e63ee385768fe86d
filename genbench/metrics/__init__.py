"""Metrics: pure functions on tensors and on objects with the likelihood protocol.

Sample metrics take images ``[N, C, H, W]`` in ``[-1, 1]`` (MS-SSIM) or any finite tensors (MMD,
KID); likelihood metrics take any object with the protocol of :mod:`genbench.metrics.protocol`.
"""

from genbench.metrics.kernels import kid, median_pairwise_distance, mmd
from genbench.metrics.likelihood import (
    bdmc,
    bits_per_dim,
    dequantize,
    elbo,
    kl,
    log_likelihood,
    rescale_log_likelihood,
)
from genbench.metrics.observation import GaussianObservation, select_sigma
from genbench.metrics.protocol import EncoderModel, LikelihoodModel
from genbench.metrics.result import PerExampleResult, ScalarResult
from genbench.metrics.ssim import ms_ssim, ms_ssim_diversity, ms_ssim_setting

__all__ = [
    "GaussianObservation",
    "bdmc",
    "bits_per_dim",
    "dequantize",
    "elbo",
    "kl",
    "log_likelihood",
    "rescale_log_likelihood",
    "select_sigma",
    "EncoderModel",
    "LikelihoodModel",
    "PerExampleResult",
    "ScalarResult",
    "kid",
    "median_pairwise_distance",
    "mmd",
    "ms_ssim",
    "ms_ssim_diversity",
    "ms_ssim_setting",
]
