"""Evaluate a trained run folder, or a file of outside samples, and write ``metrics.json``.

Inside a process group (after ``genbench run --nproc N``, or ``torchrun --nproc-per-node N -m
genbench evaluate RUN``) every rank evaluates, sharing the sample-heavy work (see
``genbench/evaluation/compute.py``); every rank holds the numbers of one process, rank 0 alone
prints and writes files.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sys
import time
import zipfile
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import genbench
from genbench.core.errors import UsageError
from genbench.core.io import file_digest, write_json, write_text
from genbench.data import SPLITS, get_dataset
from genbench.evaluation import compute, conditional, paired, quality  # noqa: F401  (register the metrics)
from genbench.evaluation.context import EvalContext, load_trained_model
from genbench.evaluation.registry import METRICS, NotApplicable
from genbench.evaluation.settings import eval_settings_for
from genbench.training.distributed import barrier, broadcast_object, join_for_evaluation
from genbench.training.environment import resolve_device
from genbench.training.rundir import RunDir

SCHEMA_VERSION = 1
METRICS_FILE = "metrics.json"
# Metrics that only read samples run without autograd; likelihoods need it (AIS takes gradients).
NO_GRAD_METRICS = {"mmd", "ms_ssim_diversity"}
# Evaluation runs many small ops (AIS on a few dozen chains, a small classifier): on 2 CPU cores
# one thread was measured 10x faster than two for AIS (3.3 s vs 34 s) and faster for importance
# sampling too; training's larger batches are faster on two and keep torch's default.
EVAL_THREADS = 1


@contextlib.contextmanager
def _threads(count: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _read_existing(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return document.get("metrics", {}) if document.get("schema_version") == SCHEMA_VERSION else {}


def _existing_on_every_rank(path: Path, ranks) -> dict[str, Any]:
    """Rank 0's reading of ``path``'s metrics, on every rank. Also the first collective of an
    evaluation: rank 0 cannot write ``metrics.json`` before every rank has decided to evaluate."""
    return broadcast_object(_read_existing(path) if ranks.is_main else None, ranks)


def _compute(ctx: EvalContext, names: list[str] | None, label: str, verbose: bool,
             results: dict[str, Any]) -> dict[str, Any]:
    threads = EVAL_THREADS if ctx.device.type == "cpu" else torch.get_num_threads()
    with _threads(threads):
        return _compute_each(ctx, names, label, verbose, results)


def _compute_each(ctx: EvalContext, names: list[str] | None, label: str, verbose: bool,
                  results: dict[str, Any]) -> dict[str, Any]:
    for entry in [METRICS.get(name) for name in (names or METRICS.names())]:
        tick = time.perf_counter()
        torch.manual_seed(ctx.settings.seed)  # any global randomness in a metric is seeded too
        try:
            guard = torch.no_grad() if entry.name in NO_GRAD_METRICS else contextlib.nullcontext()
            with guard:
                values = entry.compute(ctx)
            values["status"] = "ok"
        except NotApplicable as reason:
            values = {"value": None, "status": "n/a", "reason": str(reason)}
        values.update(direction=entry.direction, unit=entry.unit, split=ctx.split,
                      seconds=round(time.perf_counter() - tick, 2))
        results[entry.name] = values
        if verbose:
            shown = "n/a" if values["value"] is None else f"{values['value']:.4g}"
            extra = ""
            if entry.name == "mmd" and values["value"] is not None:
                extra = f", bandwidth {values['settings']['bandwidth']:.4g}"
            print(f"  {label} {entry.name}: {shown} ({values['seconds']:.1f} s{extra})",
                  file=sys.stderr)
    return results


def _evaluation_seconds(results: dict[str, Any]) -> float:
    """The time the file's numbers took, the sum over its metrics: a partial re-evaluation
    replaces its metrics' share instead of overwriting the whole evaluation time with its own."""
    return round(sum(entry.get("seconds", 0.0) for entry in results.values()), 2)


def _settings_dict(settings) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.__dict__.items()}


def evaluate_run(
    run_dir: str | Path | RunDir,
    metrics: list[str] | None = None,
    split: str = "test",
    num_samples: int | None = None,
    device: str = "auto",
    data_dir: str | Path | None = None,
    allow_download: bool = True,
    budget: str | None = None,
    verbose: bool = True,
    feature_extractor: str = "classifier",
    fid_vs_n: bool = False,
) -> dict[str, Any]:
    """Compute ``metrics`` (default: all registered) for a run and merge them into
    ``<run>/metrics.json``. Returns the file's content.

    Settings follow the run's budget (``budget`` overrides); ``num_samples`` overrides the number
    of generated samples for sample-based metrics. ``feature_extractor`` is ``classifier`` (the
    dataset's own, no download) or ``inception`` (torch-fidelity's, weights must be on disk).
    ``fid_vs_n`` also writes ``fid_vs_n.csv``: FID against the number of samples.
    """
    run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    if split not in SPLITS:
        raise UsageError(f"unknown split '{split}' (known: {', '.join(SPLITS)})")
    for name in metrics or []:
        METRICS.get(name)
    ranks, torch_device = join_for_evaluation(resolve_device(device))
    spec, model, config, step = load_trained_model(run_dir, torch_device)
    settings = eval_settings_for(budget or spec.budget).with_num_samples(num_samples)
    ctx = EvalContext(spec.data.dataset, settings, split, torch_device, model=model,
                      image_size=spec.data.image_size,
                      output_dir=run_dir.path if ranks.is_main else None, data_dir=data_dir,
                      allow_download=allow_download, feature_extractor=feature_extractor, ranks=ranks)
    path = run_dir.path / METRICS_FILE
    existing = _existing_on_every_rank(path, ranks)
    results = _compute(ctx, metrics, f"{spec.model} seed {spec.seed}", verbose and ranks.is_main,
                       existing)
    if fid_vs_n:
        write_fid_vs_n(ctx, run_dir.path / "fid_vs_n.csv")
    document = {
        "schema_version": SCHEMA_VERSION,
        "run_id": spec.run_id,
        "model": spec.model,
        "dataset": spec.data.dataset,
        "seed": spec.seed,
        "budget": spec.budget,
        "checkpoint_step": step,
        "evaluation_settings": _settings_dict(settings),
        "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "genbench_version": genbench.__version__,
        "device": str(torch_device),
        "torch_threads": EVAL_THREADS if torch_device.type == "cpu" else torch.get_num_threads(),
        "processes": ranks.world_size,  # evaluation processes; the numbers do not depend on it
        "seconds": _evaluation_seconds(results),
        "metrics": results,
    }
    if ranks.is_main:
        write_json(path, document)
    barrier(ranks)  # the file is written before any rank goes on (and may read it)
    return document


FID_VS_N_SIZES = (250, 500, 1000, 2000, 5000, 10000, 20000, 50000)


def write_fid_vs_n(ctx: EvalContext, path: Path) -> list[dict[str, Any]]:
    """FID of the first n samples against the whole split, for n up to ``fid_samples``."""
    from genbench.evaluation.quality import _extractor_name, _real_test, extractor_label, fid_samples
    from genbench.metrics.fidelity import fid_vs_n

    samples = fid_samples(ctx)  # every rank draws its share
    if not ctx.ranks.is_main:
        return []
    sizes = [n for n in FID_VS_N_SIZES if n <= len(samples)]
    rows = fid_vs_n(samples, _real_test(ctx), sizes=sizes,
                    extractor_name=_extractor_name(ctx), device=ctx.device)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["n", "fid", "num_real", "feature_extractor"],
                            extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(row | {"feature_extractor": extractor_label(ctx)})
    write_text(path, buffer.getvalue())
    return rows


def load_samples_file(path: str | Path, dataset: str, value_range: str = "auto"
                      ) -> tuple[torch.Tensor, dict[str, Any]]:
    """Images from an ``.npz`` (or ``.npy``) file as float ``[N, C, H, W]`` in ``[-1, 1]``.

    The array is ``[N, C, H, W]`` or ``[N, H, W]``, in ``[0, 255]`` (any ``uint8`` array, or values
    above 1) or in ``[-1, 1]`` (values below 0); ``value_range`` forces one (``0-255``, ``-1-1``,
    ``0-1``). Images of another size than the dataset's are resized with antialiasing. Returns the
    images and a description of what was detected, for metrics.json.
    """
    path = Path(path)
    info = get_dataset(dataset)
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            keys = list(loaded.keys())
            key = next((k for k in ("samples", "images", "x", "arr_0") if k in keys),
                       keys[0] if len(keys) == 1 else None)
            if key is None:
                found = f"several arrays ({', '.join(keys)})" if keys else "no array"
                raise UsageError(f"--samples {path}: {found}; name the images 'samples' or 'images'")
            array = loaded[key]
        else:
            key, array = None, loaded
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        # numpy reads a file without its magic number as a pickle, which allow_pickle=False refuses.
        reason = ("not a NumPy array file, or an array of Python objects" if "allow_pickle" in str(error)
                  else str(error).splitlines()[0] if str(error) else type(error).__name__)
        raise UsageError(f"--samples {path}: cannot read it as .npz/.npy ({reason}); save the images "
                         "with numpy.savez(path, samples=images)") from None
    if array.dtype.kind not in "uif":
        raise UsageError(f"--samples {path}: the images must be numbers (uint8 or float), got dtype "
                         f"{array.dtype}")
    if array.ndim == 3:
        array = array[:, None]
    if array.ndim != 4 or array.shape[1] != info.channels or array.shape[0] < 2:
        raise UsageError(f"--samples {path}: expected [N, {info.channels}, H, W] or [N, H, W] "
                         f"images for {dataset}, got shape {list(array.shape)}")
    if array.shape[2] != array.shape[3]:
        raise UsageError(f"--samples {path}: images must be square, got {array.shape[2]}x{array.shape[3]}")
    if not np.isfinite(array).all():
        raise UsageError(f"--samples {path}: the array holds NaN or infinite values; images must be "
                         "finite (a diverged model's samples are not images)")
    low, high = float(array.min()), float(array.max())
    requested = value_range
    if value_range == "auto":
        if array.dtype == np.uint8 or high > 1.0:
            value_range = "0-255"
        elif low < 0.0:
            value_range = "-1-1"
        else:
            raise UsageError(f"--samples {path}: values lie in [{low:g}, {high:g}], which could be "
                             "[0, 1] or [-1, 1] data; pass --samples-range 0-1 or -1-1")
    bounds = {"0-255": (0.0, 255.0), "-1-1": (-1.0, 1.0), "0-1": (0.0, 1.0)}
    if value_range not in bounds:
        raise UsageError(f"--samples-range must be auto, 0-255, -1-1 or 0-1, got {value_range}")
    lo, hi = bounds[value_range]
    if low < lo - 1e-6 or high > hi + 1e-6:
        how = "detected" if requested == "auto" else "given"
        raise UsageError(f"--samples {path}: values in [{low:g}, {high:g}] fall outside the "
                         f"{value_range} range ({how}); rescale the images to [0, 255], [0, 1] or "
                         "[-1, 1] and pass that --samples-range")
    images = torch.from_numpy(np.ascontiguousarray(array)).double()
    images = ((images - lo) / (hi - lo) * 2 - 1).float()
    size = images.shape[-1]
    if size != info.native_size:
        images = F.interpolate(images, size=(info.native_size,) * 2, mode="bilinear",
                               antialias=True, align_corners=False).clamp(-1, 1)
    return images, {"file": str(path), "array": key, "sha256": file_digest(path),
                    "num_images": int(images.shape[0]), "detected_range": value_range,
                    "original_size": size, "resized": size != info.native_size}


def evaluate_samples(
    path: str | Path,
    dataset: str,
    out: str | Path = "results",
    metrics: list[str] | None = None,
    split: str = "test",
    num_samples: int | None = None,
    budget: str = "standard",
    value_range: str = "auto",
    device: str = "auto",
    data_dir: str | Path | None = None,
    allow_download: bool = True,
    verbose: bool = True,
    feature_extractor: str = "classifier",
) -> dict[str, Any]:
    """Every sample-based metric for images made outside genbench; writes
    ``<out>/<dataset>/samples/<file stem>-<sha256[:10]>/metrics.json``."""
    images, description = load_samples_file(path, dataset, value_range)
    for name in metrics or []:
        METRICS.get(name)
    settings = eval_settings_for(budget).with_num_samples(num_samples or len(images))
    folder = Path(out) / dataset / "samples" / f"{Path(path).stem}-{description['sha256'][:10]}"
    ranks, torch_device = join_for_evaluation(resolve_device(device))
    ctx = EvalContext(dataset, settings, split, torch_device, samples=images,
                      output_dir=folder if ranks.is_main else None, data_dir=data_dir,
                      allow_download=allow_download, feature_extractor=feature_extractor, ranks=ranks)
    verbose = verbose and ranks.is_main
    if verbose:
        print(f"  {path}: {description['num_images']} images, detected range "
              f"{description['detected_range']}", file=sys.stderr)
    existing = _existing_on_every_rank(folder / METRICS_FILE, ranks)
    results = _compute(ctx, metrics, Path(path).name, verbose, existing)
    document = {
        "schema_version": SCHEMA_VERSION,
        "model": f"samples:{Path(path).name}",
        "dataset": dataset,
        "seed": None,
        "samples": description,
        "evaluation_settings": _settings_dict(settings),
        "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "genbench_version": genbench.__version__,
        "processes": ranks.world_size,
        "seconds": _evaluation_seconds(results),
        "metrics": results,
    }
    if ranks.is_main:
        write_json(folder / METRICS_FILE, document)
    barrier(ranks)
    return document
