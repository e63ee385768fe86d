"""Decoding, fixed splits, resizing and the decoded-tensor cache.

Splits are fixed forever, because metrics tune on validation and report on test:

- ``train``: the official training set minus its last 5,000 images (55,000 for MNIST);
- ``validation``: the last 5,000 images of the official training set;
- ``test``: the official test set.
"""

from __future__ import annotations

import gzip
import os
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from genbench.core.errors import GenbenchError, UsageError
from genbench.core.io import json_digest, torch_save
from genbench.core.paths import cache_dir
from genbench.data.registry import DatasetInfo, get_dataset
from genbench.data.sources import ResolvedFiles, resolve

SPLITS = ("train", "validation", "test")
VALIDATION_SIZE = 5000
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 256


@dataclass
class ImageSet:
    """Images ``[N, C, H, W]`` as ``uint8`` in ``[0, 255]`` with their labels ``[N]``."""

    images: torch.Tensor
    labels: torch.Tensor
    origin: str
    checksums: dict[str, str]

    def __len__(self) -> int:
        return self.images.shape[0]


def to_model_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """``uint8`` ``[0, 255]`` → float32 in ``[-1, 1]`` (same shape)."""
    return images_uint8.float().div_(127.5).sub_(1.0)


REPLACE_HINT = "delete it and download it again (or put the original file there)"


def read_idx(path: Path) -> np.ndarray:
    """Decode one IDX file (gzip or plain) into a numpy array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError, zlib.error) as error:  # a truncated or damaged .gz, an unreadable file
        raise GenbenchError(f"{path} cannot be read ({error}); {REPLACE_HINT}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise GenbenchError(f"{path} is not an unsigned-byte IDX file (bad header); {REPLACE_HINT}")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    size = max(len(data) - header, 0)
    if len(data) < header or size != int(np.prod(shape)):
        raise GenbenchError(f"{path} is truncated or padded: {size} bytes for shape {shape}; "
                            f"{REPLACE_HINT}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _decode_idx(files: ResolvedFiles, official_split: str) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(files.paths[f"{official_split}-images"])[:, None]  # [N, 1, H, W]
    labels = read_idx(files.paths[f"{official_split}-labels"])
    return images, labels


def _decode_cifar(files: ResolvedFiles, official_split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "data_batch" if official_split == "train" else "test_batch"
    images, labels = [], []
    for name in sorted(n for n in files.paths if n.startswith(prefix)):
        path = files.paths[name]
        try:
            with open(path, "rb") as handle:
                entry = pickle.load(handle, encoding="latin1")
            images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(entry["labels"], dtype=np.int64))
        except Exception as error:  # truncated, not a pickle, or a pickle of something else
            raise GenbenchError(f"{path} is not a readable CIFAR-10 batch ({type(error).__name__}); "
                                f"{REPLACE_HINT}") from None
    return np.concatenate(images), np.concatenate(labels)


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bilinear resize of ``uint8 [N, C, H, W]`` to ``size``, rounded back to uint8."""
    out = []
    for chunk in images.split(4096):
        resized = F.interpolate(
            chunk.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        out.append(resized.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


def _cache_path(info: DatasetInfo, files: ResolvedFiles, split: str, size: int) -> Path:
    key = json_digest({"checksums": files.checksums, "split": split, "size": size, "v": 1}, 16)
    return cache_dir() / "tensors" / f"{info.name}-{split}-{size}px-{key}.pt"


def load_images(
    name: str,
    split: str = "train",
    image_size: int | None = None,
    limit: int | None = None,
    data_dir: str | os.PathLike | None = None,
    allow_download: bool = True,
    use_cache: bool = True,
) -> ImageSet:
    """Load one split of a registered dataset as ``uint8 [N, C, H, W]`` (see module docstring).

    ``image_size`` resizes (antialiased) to a square side in pixels, ``limit`` keeps the first
    ``limit`` images of the split. Decoded tensors are cached under the user cache, keyed by the
    source files' checksums, split and size.
    """
    info = get_dataset(name)
    if split not in SPLITS:
        raise UsageError(f"unknown split '{split}' (known: {', '.join(SPLITS)})")
    size = image_size or info.native_size
    if not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise UsageError(f"--image-size {size} is outside {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE}")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1, got {limit}")
    files = resolve(info, data_dir, allow_download)
    path = _cache_path(info, files, split, size)
    cached = None
    if use_cache and path.is_file():
        try:
            cached = torch.load(path, weights_only=True)
        except Exception:  # a broken cache entry is rebuilt, never trusted
            cached = None
    if cached is None:
        official = "test" if split == "test" else "train"
        decode = _decode_idx if info.idx_files else _decode_cifar
        images_np, labels_np = decode(files, official)
        images = torch.from_numpy(images_np.copy())
        labels = torch.from_numpy(labels_np.astype(np.int64))
        if split == "train":
            images, labels = images[:-VALIDATION_SIZE], labels[:-VALIDATION_SIZE]
        elif split == "validation":
            images, labels = images[-VALIDATION_SIZE:], labels[-VALIDATION_SIZE:]
        if size != images.shape[-1]:
            images = resize_uint8(images, size)
        cached = {"images": images.contiguous(), "labels": labels.contiguous()}
        if use_cache:
            try:
                torch_save(cached, path)
            except OSError:  # a read-only or full cache only costs speed
                pass
    images, labels = cached["images"], cached["labels"]
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return ImageSet(images, labels, files.origin, files.checksums)
