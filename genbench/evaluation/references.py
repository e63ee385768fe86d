"""Per-dataset reference values, computed once and cached: the fixed MMD bandwidth and the
real-data floors (MMD between two halves of the test set, MS-SSIM diversity of real images)."""

from __future__ import annotations

import json
from typing import Any

from genbench.core.io import json_digest, write_json
from genbench.core.paths import cache_dir
from genbench.data import load_images, to_model_range
from genbench.training.distributed import SINGLE, Ranks, broadcast_object

REFERENCE_VERSION = 1


def _cached(key: dict[str, Any], compute, ranks: Ranks = SINGLE) -> dict[str, Any]:
    """The cached values of ``key``, or ``compute()`` and cache them.

    With several ranks, rank 0 alone reads and writes the cache and says whether it hit, so all
    ranks run ``compute()`` or none does (it may hold collectives, which every rank must join).
    """
    path = cache_dir() / "references" / f"{key['dataset']}-{json_digest(key, 16)}.json"
    values = None
    if ranks.is_main:
        try:
            values = json.loads(path.read_text())["values"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
    values = broadcast_object(values, ranks)
    if values is not None:
        return values
    values = compute()
    if ranks.is_main:
        try:
            write_json(path, {"key": key, "values": values})
        except OSError:  # an unwritable cache costs time, never correctness
            pass
    return values


def dataset_references(dataset: str, num_samples: int, ms_ssim_pairs: int, seed: int = 0,
                       data_dir=None, allow_download: bool = True) -> dict[str, Any]:
    """``{"mmd_bandwidth", "mmd_real", "ms_ssim_diversity_real"}`` for the test split.

    The bandwidth is the median pairwise distance of the real test split (pixels in ``[-1, 1]``),
    the same for every model, so MMD rows are comparable. ``mmd_real`` compares the first
    ``num_samples`` test images with the next ``num_samples`` (capped at half the split).
    """
    from genbench.metrics import median_pairwise_distance, mmd, ms_ssim_diversity

    test = load_images(dataset, "test", data_dir=data_dir, allow_download=allow_download)
    key = {"dataset": dataset, "checksums": test.checksums, "num_samples": num_samples,
           "pairs": ms_ssim_pairs, "seed": seed, "v": REFERENCE_VERSION}

    def compute() -> dict[str, Any]:
        real = to_model_range(test.images)
        bandwidth = median_pairwise_distance(real, max_points=2000, seed=seed)
        n = min(num_samples, len(real) // 2)
        floor = mmd(real[:n], real[n : 2 * n], bandwidth=bandwidth)
        diversity = ms_ssim_diversity(real[:num_samples], num_pairs=ms_ssim_pairs, seed=seed,
                                      labels=test.labels[:num_samples])
        return {"mmd_bandwidth": float(bandwidth), "mmd_real": float(floor.value),
                "mmd_real_num_samples": n, "ms_ssim_diversity_real": float(diversity.value),
                "ms_ssim_diversity_real_per_class": {
                    str(k): float(v) for k, v in diversity.settings.get("per_class", {}).items()}}

    return _cached(key, compute)
