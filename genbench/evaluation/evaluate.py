"""Evaluate a trained run folder and write its ``metrics.json``."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import genbench
from genbench.core.errors import UsageError
from genbench.core.io import write_json
from genbench.data import SPLITS
from genbench.evaluation import compute  # noqa: F401  (registers the metrics)
from genbench.evaluation.context import EvalContext, load_trained_model
from genbench.evaluation.registry import METRICS, NotApplicable
from genbench.evaluation.settings import eval_settings_for
from genbench.training.environment import resolve_device
from genbench.training.rundir import RunDir

SCHEMA_VERSION = 1
METRICS_FILE = "metrics.json"


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
) -> dict[str, Any]:
    """Compute ``metrics`` (default: all registered) for a run and merge them into
    ``<run>/metrics.json``. Returns the file's content.

    Settings follow the run's budget (``budget`` overrides); ``num_samples`` overrides the number
    of generated samples for sample-based metrics.
    """
    run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    if split not in SPLITS:
        raise UsageError(f"unknown split '{split}' (known: {', '.join(SPLITS)})")
    names = metrics or METRICS.names()
    entries = [METRICS.get(name) for name in names]
    torch_device = resolve_device(device)
    spec, model, config, step = load_trained_model(run_dir, torch_device)
    settings = eval_settings_for(budget or spec.budget).with_num_samples(num_samples)
    ctx = EvalContext(run_dir, spec, model, settings, split, torch_device, data_dir, allow_download)

    path = run_dir.path / METRICS_FILE
    try:
        document = json.loads(path.read_text())
        if document.get("schema_version") != SCHEMA_VERSION:
            document = {}
    except (FileNotFoundError, json.JSONDecodeError):
        document = {}
    results = document.get("metrics", {})
    started = time.perf_counter()
    for entry in entries:
        tick = time.perf_counter()
        torch.manual_seed(settings.seed)  # any global randomness in a metric is seeded too
        try:
            with torch.no_grad() if entry.name in ("mmd", "ms_ssim_diversity") else contextlib.nullcontext():
                values = entry.compute(ctx)
            values["status"] = "ok"
        except NotApplicable as reason:
            values = {"value": None, "status": "n/a", "reason": str(reason)}
        values.update(direction=entry.direction, unit=entry.unit, split=split,
                      seconds=round(time.perf_counter() - tick, 2))
        results[entry.name] = values
        if verbose:
            shown = "n/a" if values["value"] is None else f"{values['value']:.4g}"
            print(f"  {spec.model} seed {spec.seed} {entry.name}: {shown} "
                  f"({values['seconds']:.1f} s)", file=sys.stderr)
    document = {
        "schema_version": SCHEMA_VERSION,
        "run_id": spec.run_id,
        "model": spec.model,
        "dataset": spec.data.dataset,
        "seed": spec.seed,
        "budget": spec.budget,
        "checkpoint_step": step,
        "evaluation_settings": {k: (list(v) if isinstance(v, tuple) else v)
                                for k, v in settings.__dict__.items()},
        "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "genbench_version": genbench.__version__,
        "device": str(torch_device),
        "seconds": round(time.perf_counter() - started, 2),
        "metrics": results,
    }
    write_json(path, document)
    return document

