"""Datasets: splits, range, where files come from, checksums, missing files, caching."""

from __future__ import annotations

import gzip
import os
import shutil
import stat

import pytest
import torch

from genbench.core.errors import GenbenchError
from genbench.data import SPLITS, load_images, to_model_range
from genbench.data.sources import SHIPPED_ROOT

MNIST_FILES = sorted(p.name for p in (SHIPPED_ROOT / "mnist").glob("*.gz"))


@pytest.fixture(scope="module")
def mnist_splits():
    return {split: load_images("mnist", split, allow_download=False) for split in SPLITS}


def test_split_sizes_are_fixed(mnist_splits):
    assert {s: len(d) for s, d in mnist_splits.items()} == {
        "train": 55000, "validation": 5000, "test": 10000}
    # Validation is the last 5,000 of the official training set; its labels count as published
    # for the whole training set minus train's.
    train, validation = mnist_splits["train"], mnist_splits["validation"]
    counts = torch.bincount(torch.cat([train.labels, validation.labels]), minlength=10)
    assert counts.tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def test_images_are_uint8_and_map_to_minus_one_one(mnist_splits):
    images = mnist_splits["test"].images
    assert images.dtype == torch.uint8 and images.shape[1:] == (1, 28, 28)
    x = to_model_range(images[:100])
    assert x.dtype == torch.float32
    assert x.min() == -1.0 and x.max() == 1.0


def test_shipped_copy_is_the_fallback(mnist_splits):
    assert mnist_splits["train"].origin == "shipped"


def test_flat_and_torchvision_layouts(tmp_path):
    flat = tmp_path / "flat"
    shutil.copytree(SHIPPED_ROOT / "mnist", flat / "mnist")
    tv = tmp_path / "tv" / "MNIST" / "raw"
    tv.mkdir(parents=True)
    for name in MNIST_FILES:  # torchvision keeps the decompressed files
        with gzip.open(SHIPPED_ROOT / "mnist" / name) as src, open(tv / name[:-3], "wb") as dst:
            dst.write(src.read())
    a = load_images("mnist", "test", data_dir=flat, allow_download=False, use_cache=False)
    b = load_images("mnist", "test", data_dir=tmp_path / "tv", allow_download=False,
                    use_cache=False)
    assert a.origin == b.origin == "data-dir"
    assert torch.equal(a.images, b.images)


def test_genbench_data_variable_is_used(tmp_path, monkeypatch):
    shutil.copytree(SHIPPED_ROOT / "mnist", tmp_path / "mnist")
    monkeypatch.setenv("GENBENCH_DATA", str(tmp_path))
    assert load_images("mnist", "test", allow_download=False).origin == "GENBENCH_DATA"


def test_checksum_mismatch_is_reported(tmp_path):
    folder = tmp_path / "mnist"
    shutil.copytree(SHIPPED_ROOT / "mnist", folder)
    with open(folder / "t10k-labels-idx1-ubyte.gz", "ab") as handle:
        handle.write(b"x")
    with pytest.raises(GenbenchError, match="checksum mismatch .*t10k-labels-idx1-ubyte.gz"):
        load_images("mnist", "test", data_dir=tmp_path, allow_download=False)


def test_missing_files_name_dataset_files_and_places(tmp_path):
    with pytest.raises(GenbenchError) as error:
        load_images("fashion-mnist", "train", data_dir=tmp_path, allow_download=False)
    message = str(error.value)
    assert "fashion-mnist" in message and "train-images-idx3-ubyte.gz" in message
    assert str(tmp_path) in message and "\n" not in message


def test_read_only_data_folder_is_never_written(tmp_path):
    folder = tmp_path / "ro" / "mnist"
    shutil.copytree(SHIPPED_ROOT / "mnist", folder)
    before = sorted(os.listdir(folder))
    for path in [folder, *folder.iterdir()]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        data = load_images("mnist", "test", image_size=32, data_dir=tmp_path / "ro",
                           allow_download=False)
    finally:
        for path in [folder, *folder.iterdir()]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
    assert sorted(os.listdir(folder)) == before
    assert data.images.shape == (10000, 1, 32, 32)


def test_resized_tensors_are_cached_by_checksum(isolated_cache):
    first = load_images("mnist", "validation", image_size=32, allow_download=False)
    cached = list((isolated_cache / "genbench" / "tensors").glob("mnist-validation-32px-*.pt"))
    assert len(cached) == 1
    again = load_images("mnist", "validation", image_size=32, allow_download=False)
    assert torch.equal(first.images, again.images)
    # A broken cache entry is rebuilt, never trusted.
    cached[0].write_bytes(b"broken")
    rebuilt = load_images("mnist", "validation", image_size=32, allow_download=False)
    assert torch.equal(first.images, rebuilt.images)


def test_limit_keeps_the_first_images(mnist_splits):
    limited = load_images("mnist", "train", limit=100, allow_download=False)
    assert torch.equal(limited.images, mnist_splits["train"].images[:100])
