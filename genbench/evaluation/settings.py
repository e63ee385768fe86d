"""Evaluation settings per budget. Every table states them (they are saved in metrics.json).

Measured on 2 CPU cores, a small conv decoder takes about 2-3.5 s per 5,000 samples, so importance
sampling with k = 5000 on the 10,000 test images would take hours: ``standard`` uses k = 250 on a
fixed 1,000-image test subset instead (AIS, for models without an encoder, 8 chains x 200 steps on
16 images), and ``paper`` the published settings, for a GPU.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from genbench.core.errors import UsageError


@dataclass(frozen=True)
class EvalSettings:
    num_generated: int  # samples for MMD and MS-SSIM diversity (and as many real test images)
    ms_ssim_pairs: int
    is_samples: int  # k, importance samples per example
    is_examples: int  # the first N images of the split
    ais_examples: int
    ais_chains: int
    ais_steps: int
    sigma_examples: int  # validation images used to choose the Gaussian sigma
    sigma_grid: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4)
    reconstruction_examples: int = 1000
    fid_samples: int = 10000  # generated images for FID, KID, isc, precision/recall, labels
    fid_bootstrap: int = 20  # resamples of the generated features for the intervals
    nn_train_images: int = 55000  # training images searched for nearest neighbours
    fid_real_images: int = 10000  # real images of the split that FID/KID/PRC compare with
    seed: int = 0

    def with_num_samples(self, n: int | None) -> EvalSettings:
        """``n`` generated samples for every sample-based metric (MMD, MS-SSIM, FID...)."""
        return self if n is None else dataclasses.replace(self, num_generated=n, fid_samples=n)


EVAL_SETTINGS = {
    "smoke": EvalSettings(num_generated=500, ms_ssim_pairs=200, is_samples=100, is_examples=100,
                          ais_examples=8, ais_chains=4, ais_steps=50, sigma_examples=16,
                          reconstruction_examples=200, fid_samples=1000, fid_bootstrap=5,
                          nn_train_images=5000, fid_real_images=2000),
    "standard": EvalSettings(num_generated=2000, ms_ssim_pairs=1000, is_samples=250,
                             is_examples=1000, ais_examples=16, ais_chains=8, ais_steps=200,
                             sigma_examples=16, fid_bootstrap=10),
    "paper": EvalSettings(num_generated=10000, ms_ssim_pairs=10000, is_samples=5000,
                          is_examples=10000, ais_examples=1000, ais_chains=16, ais_steps=10000,
                          sigma_examples=1000, reconstruction_examples=10000, fid_samples=50000,
                          fid_bootstrap=100),
}


def eval_settings_for(budget: str) -> EvalSettings:
    if budget not in EVAL_SETTINGS:
        raise UsageError(f"unknown budget '{budget}' (known: {', '.join(EVAL_SETTINGS)})")
    return EVAL_SETTINGS[budget]
