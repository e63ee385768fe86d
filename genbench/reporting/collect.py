"""``results.csv``: every metric of every run folder under a results folder, one row each.

The run folders are the source of truth; this table is derived from them and can be rebuilt at any
time (``genbench report`` does so). Rows are ordered by dataset, model, swept parameters, seed and
metric, so rebuilding an unchanged store gives the same bytes.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from genbench.core.io import write_text

RESULTS_FILE = "results.csv"

# Run settings that change numbers but are not the model's own config.
RUN_KEYS = ("steps", "batch_size", "image_size", "limit")
# Harness settings that only change logging: never a swept parameter.
QUIET_KEYS = {"log_every", "checkpoint_every", "sample_every", "grid_size", "grid_seed"}

LEAD_COLUMNS = ["run_id", "dataset", "model", "budget", "seed"]
METRIC_COLUMNS = ["metric", "value", "std", "ci_low", "ci_high", "num_samples", "split", "status",
                  "direction", "unit", "feature_extractor", "settings"]
PROVENANCE_COLUMNS = ["genbench_version", "git_commit", "device", "hardware", "train_threads",
                      "eval_threads", "train_time_s", "eval_time_s", "parameters", "steps_done",
                      "run_status", "run_path"]
# Settings lists longer than this (per-unit variances, histograms) stay in metrics.json only.
MAX_SETTING_LIST = 10


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _run_parameters(config: dict[str, Any]) -> dict[str, Any]:
    """The values a run's numbers depend on, flat: model config (options added to the model after
    the run filled in at the default it ran with), then steps/batch/size/limit."""
    from genbench.models.registry import registered_config_class

    values = dict(config.get("model_config", {}))
    config_class = registered_config_class(str(config.get("model")))
    if config_class is not None:
        values = config_class.completed(values)
    values.update({k: v for k, v in config.get("train", {}).items() if k not in QUIET_KEYS})
    values.update({k: config.get("data", {}).get(k) for k in ("image_size", "limit")})
    return values


def _compact_settings(settings: dict[str, Any]) -> str:
    kept = {k: v for k, v in settings.items()
            if not (isinstance(v, (list, dict)) and len(v) > MAX_SETTING_LIST)}
    return json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)


def _feature_extractor(settings: dict[str, Any]) -> str:
    for key in ("feature_extractor", "classifier", "feature_space"):
        if key in settings:
            return str(settings[key])
    if "features" in settings:  # MMD: raw pixels
        return f"pixels ({settings['features']} dims)"
    return ""


def _hardware(config: dict[str, Any]) -> str:
    hardware = config.get("hardware", {})
    parts = [hardware.get("device", ""), hardware.get("gpu", "") or hardware.get("processor", ""),
             f"{hardware['cpu_count']} CPUs" if "cpu_count" in hardware else ""]
    return ", ".join(p for p in parts if p)


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _run_documents(results_dir: Path):
    """(config or None, metrics document or None, folder) for every run or samples folder."""
    seen = set()
    for path in sorted(results_dir.rglob("config.json")):
        config = _read_json(path)
        if not config or "run_id" not in config or "model" not in config:
            continue
        seen.add(path.parent)
        yield config, _read_json(path.parent / "metrics.json"), path.parent
    for path in sorted(results_dir.rglob("metrics.json")):
        if path.parent in seen:
            continue
        document = _read_json(path)
        if document and "metrics" in document:
            yield None, document, path.parent


def collect_results(results_dir: str | Path) -> pd.DataFrame:
    """The long-format results table of every run folder under ``results_dir``.

    One row per (run, metric); a run that has not been evaluated yet contributes one row with an
    empty ``metric``. Swept parameters are the config values that differ between runs of the same
    dataset, model and budget; each gets its own column, filled for every run that has the key.
    """
    results_dir = Path(results_dir)
    runs = list(_run_documents(results_dir))
    parameters = [_run_parameters(config) if config else {} for config, _, _ in runs]

    varying: list[str] = []
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for (config, _, _), values in zip(runs, parameters):
        if config:
            key = (config["data"]["dataset"], config["model"], config.get("budget"))
            groups.setdefault(key, []).append(values)
    for members in groups.values():
        for key in members[0]:
            distinct = {json.dumps(m.get(key), sort_keys=True) for m in members}
            if len(distinct) > 1 and key not in varying:
                varying.append(key)
    varying.sort(key=lambda k: (k in RUN_KEYS, k))

    rows = []
    for (config, document, folder), values in zip(runs, parameters):
        base = _base_row(config, document, folder, results_dir)
        base.update({key: values.get(key) for key in varying})
        metrics = (document or {}).get("metrics", {})
        if not metrics:
            rows.append(base | {"metric": ""})
        for name, entry in sorted(metrics.items()):
            settings = entry.get("settings", {}) or {}
            rows.append(base | {
                "metric": name,
                "value": _finite_or_none(entry.get("value")),
                "std": _finite_or_none(entry.get("std")),
                "ci_low": _finite_or_none(entry.get("ci_low")),
                "ci_high": _finite_or_none(entry.get("ci_high")),
                "num_samples": entry.get("num_samples"),
                "split": entry.get("split", ""),
                "status": entry.get("status", ""),
                "direction": entry.get("direction", "none"),
                "unit": entry.get("unit", ""),
                "feature_extractor": _feature_extractor(settings),
                "settings": _compact_settings(settings),
            })
    columns = LEAD_COLUMNS + varying + METRIC_COLUMNS + PROVENANCE_COLUMNS
    frame = pd.DataFrame(rows, columns=columns)
    frame.attrs["parameters"] = varying
    if len(frame):
        order = ["dataset", "model", "budget", *varying, "seed", "run_id", "metric"]
        frame = frame.sort_values(order, kind="stable", na_position="last").reset_index(drop=True)
    for column in ("seed", "num_samples", "parameters", "steps_done", "train_threads", "eval_threads"):
        frame[column] = frame[column].astype("Int64")
    return frame


def _base_row(config, document, folder: Path, results_dir: Path) -> dict[str, Any]:
    document = document or {}
    try:
        relative = str(folder.relative_to(results_dir))
    except ValueError:
        relative = str(folder)
    if config is None:  # outside samples: metrics.json only
        return {"run_id": folder.name, "dataset": document.get("dataset", ""),
                "model": document.get("model", ""), "budget": "", "seed": None,
                "genbench_version": document.get("genbench_version", ""), "git_commit": "",
                "device": document.get("device", ""), "hardware": "", "train_threads": None,
                "eval_threads": document.get("torch_threads"), "train_time_s": None,
                "eval_time_s": document.get("seconds"), "parameters": None, "steps_done": None,
                "run_status": "samples", "run_path": relative}
    return {
        "run_id": config["run_id"],
        "dataset": config["data"]["dataset"],
        "model": config["model"],
        "budget": config.get("budget", ""),
        "seed": config.get("seed"),
        "genbench_version": config.get("genbench_version", ""),
        "git_commit": config.get("git_commit") or "",
        "device": config.get("hardware", {}).get("device", ""),
        "hardware": _hardware(config),
        "train_threads": config.get("torch_threads"),
        "eval_threads": document.get("torch_threads"),
        "train_time_s": config.get("train_time_s"),
        "eval_time_s": document.get("seconds"),
        "parameters": config.get("parameters"),
        "steps_done": document.get("checkpoint_step"),
        "run_status": config.get("status", ""),
        "run_path": relative,
    }


def write_results_csv(results_dir: str | Path, frame: pd.DataFrame | None = None) -> Path:
    """Rebuild ``<results_dir>/results.csv`` from the run folders (atomically)."""
    results_dir = Path(results_dir)
    frame = collect_results(results_dir) if frame is None else frame
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, float_format="%.10g", lineterminator="\n")
    path = results_dir / RESULTS_FILE
    write_text(path, buffer.getvalue())
    return path


def read_results_csv(path: str | Path) -> pd.DataFrame:
    """``results.csv`` back as a frame; parameter columns are those between ``seed`` and ``metric``."""
    frame = pd.read_csv(path, dtype={"run_id": str, "model": str, "metric": str, "settings": str,
                                      "git_commit": str})
    columns = list(frame.columns)
    frame.attrs["parameters"] = columns[columns.index("seed") + 1: columns.index("metric")]
    return frame
