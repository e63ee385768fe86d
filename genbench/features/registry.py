"""Load a dataset's feature classifier: the shipped weights, else the user cache, else train one.

Shipped weights are ``weights/<dataset>.pt`` (a float32 state dict) beside ``weights/<dataset>.json``
(its SHA-256, test accuracy, epochs, seed, training time, the command that reproduces it, the torch
version). A weights file whose SHA-256 does not match its record, or that is missing, is never
used: the classifier is retrained with the recorded settings and a one-line message on stderr says
why. Retrained weights, and those of datasets that ship none, go to
``<cache>/classifiers/<dataset>-<key>.pt`` (+ ``.json``), where ``key`` hashes the dataset's source
checksums and the training settings; a cached file is reused while its SHA-256 matches.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from genbench.core.errors import GenbenchError
from genbench.core.io import json_digest
from genbench.core.paths import cache_dir
from genbench.data.registry import DatasetInfo, get_dataset
from genbench.data.sources import resolve
from genbench.features import train as training
from genbench.features.classifier import DatasetClassifier

WEIGHTS_DIR = training.WEIGHTS_DIR  # a module attribute, so tests can point it at a copy


def _read(weights: Path, record_path: Path) -> tuple[bytes | None, dict | None, str | None]:
    """The weights' bytes and record when both exist and the SHA-256 matches; else a reason."""
    try:
        record = json.loads(record_path.read_text())
        expected = record["sha256"]
    except FileNotFoundError:
        return None, None, f"{record_path} is missing"
    except (OSError, ValueError, KeyError, TypeError):
        return None, None, f"{record_path} is unreadable or has no sha256"
    try:
        data = weights.read_bytes()
    except FileNotFoundError:
        return None, record, f"{weights} is missing"
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        return None, record, (f"{weights} fails its SHA-256 check (got {actual[:12]}..., "
                              f"recorded {str(expected)[:12]}...)")
    return data, record, None


def _settings(dataset: str, record: dict | None) -> training.TrainSettings:
    """The shipped record's settings, so a retrain reproduces it; the defaults otherwise."""
    saved = (record or {}).get("settings") or {}
    try:
        return training.TrainSettings(epochs=int(saved["epochs"]), seed=int(saved["seed"]),
                                      batch_size=int(saved["batch_size"]))
    except (KeyError, TypeError, ValueError):
        return training.TrainSettings(epochs=training.default_epochs(dataset))


def _build(info: DatasetInfo, data: bytes, source: str, path: Path, record: dict,
           device: str | torch.device) -> tuple[DatasetClassifier, dict[str, Any]]:
    model = DatasetClassifier(info.channels, info.native_size, info.num_classes)
    model.load_state_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
    return model.to(device).eval(), _info(record, source, path)


def _info(record: dict, source: str, path: Path | None) -> dict[str, Any]:
    keys = ("name", "sha256", "test_accuracy", "epochs", "seed", "command")
    return {**{k: record.get(k) for k in keys}, "source": source,
            "path": str(path) if path is not None else None}


def load_classifier(
    dataset: str,
    data_dir: str | os.PathLike | None = None,
    allow_download: bool = True,
    device: str | torch.device = "cpu",
    retrain: bool = True,
) -> tuple[DatasetClassifier, dict[str, Any]]:
    """The trained :class:`DatasetClassifier` of ``dataset`` in eval mode on ``device``, and an info
    dict: ``name`` (``genbench-<dataset>-cnn``), ``sha256`` of the weights file, ``test_accuracy``
    (fraction of the test split), ``source`` (``shipped``, ``cache`` or ``trained``), ``epochs``,
    ``seed``, ``command`` (reproduces the weights) and ``path`` of the weights file.

    ``data_dir`` and ``allow_download`` locate the dataset (see :mod:`genbench.data.sources`); it is
    only read when the shipped weights cannot be used. ``retrain=False`` raises
    :class:`GenbenchError` where training would be needed.
    """
    info = get_dataset(dataset)
    shipped_pt, shipped_json = WEIGHTS_DIR / f"{dataset}.pt", WEIGHTS_DIR / f"{dataset}.json"
    has_shipped = shipped_pt.exists() or shipped_json.exists()
    record = None
    if has_shipped:
        data, record, problem = _read(shipped_pt, shipped_json)
        if data is not None:
            return _build(info, data, "shipped", shipped_pt, record, device)
        reason = f"shipped classifier weights unusable: {problem}"
    else:
        reason = f"no shipped classifier weights for {dataset}"

    settings = _settings(dataset, record)
    files = resolve(info, data_dir, allow_download)
    key = json_digest({"checksums": files.checksums, "settings": settings.to_dict()}, 16)
    folder, stem = cache_dir() / "classifiers", f"{dataset}-{key}"
    cached_pt, cached_json = folder / f"{stem}.pt", folder / f"{stem}.json"
    data, cached_record, problem = _read(cached_pt, cached_json)
    if data is not None:
        if has_shipped:  # the user expects the shipped weights: say why these are used instead
            print(f"genbench: {reason}; using the classifier retrained earlier, {cached_pt}",
                  file=sys.stderr)
        return _build(info, data, "cache", cached_pt, cached_record, device)
    if cached_pt.exists() or cached_json.exists():
        reason += f"; cached copy unusable: {problem}"

    command = settings.command(dataset)
    if not retrain:
        raise GenbenchError(f"{reason}, and retrain=False: train it with `{command}` "
                            "or allow retraining")
    print(f"genbench: {reason}; retraining it ({settings.epochs} epochs, minutes on CPU) into "
          f"{cached_pt}", file=sys.stderr)
    model, train_record = training.train_classifier(
        dataset, settings.epochs, settings.seed, settings.batch_size, data_dir, allow_download,
        progress=True)
    try:
        meta = training.save_weights(model, train_record, folder, stem)
        path = cached_pt
    except OSError as error:  # a read-only or full cache costs a retrain next time, nothing more
        print(f"genbench: could not cache the classifier in {folder}: {error}", file=sys.stderr)
        meta = {**train_record, "sha256": hashlib.sha256(training.weights_bytes(model)).hexdigest()}
        path = None
    return model.to(device).eval(), _info(meta, "trained", path)
