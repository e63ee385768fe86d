"""Datasets: a registry, where their files come from, fixed splits and cached tensors.

Images leave this package as ``uint8`` tensors ``[N, C, H, W]``; :func:`to_model_range` maps them to
float ``[-1, 1]``, the range every genbench model and metric works in.
"""

from genbench.data.loading import SPLITS, VALIDATION_SIZE, ImageSet, load_images, to_model_range
from genbench.data.registry import DATASETS, DatasetInfo, get_dataset

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "get_dataset",
    "SPLITS",
    "VALIDATION_SIZE",
    "ImageSet",
    "load_images",
    "to_model_range",
]
