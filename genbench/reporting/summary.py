"""The short table ``genbench run`` prints when it ends."""

from __future__ import annotations

import json
from pathlib import Path

import click


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


SUMMARY_METRICS = (("mmd", "MMD^2"), ("ms_ssim_diversity", "MS-SSIM"), ("fid", "FID"),
                   ("log_likelihood", "log p(x) nats"))


def _metric_cells(run_path: Path) -> list[str]:
    try:
        metrics = json.loads((run_path / "metrics.json").read_text())["metrics"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return ["" for _ in SUMMARY_METRICS]
    cells = []
    for name, _ in SUMMARY_METRICS:
        value = metrics.get(name, {}).get("value")
        cells.append("n/a" if value is None else f"{value:.4g}")
    return cells


def print_metrics_table(documents) -> None:
    """One row per evaluated run, one column per metric (``n/a`` where it does not apply)."""
    names = sorted({name for d in documents for name in d["metrics"]})
    header = ["model", "seed", *names]
    rows = []
    for document in documents:
        cells = []
        for name in names:
            value = document["metrics"].get(name, {}).get("value")
            cells.append("n/a" if value is None else f"{value:.4g}")
        rows.append([document["model"], document["seed"], *cells])
    click.echo(format_table(header, rows))


def print_run_table(results) -> None:
    """One row per run: model, seed, status, steps, images, train time, img/s, params, losses,
    and the headline metrics when the run was evaluated."""
    header = ["model", "seed", "status", "steps", "images", "train s", "img/s", "params",
              *[label for _, label in SUMMARY_METRICS], "final losses", "run folder"]
    rows = []
    for spec, result in results:
        images = result.steps * spec.train.batch_size
        rate = images / result.train_time_s if result.train_time_s else 0.0
        losses = " ".join(f"{k}={v:.3g}" for k, v in list(result.final_losses.items())[:3])
        rows.append([spec.model, spec.seed, result.status, result.steps, images,
                     f"{result.train_time_s:.1f}", f"{rate:.0f}", f"{result.parameters:,}",
                     *_metric_cells(result.run_dir.path), losses, str(result.run_dir.path)])
    click.echo(format_table(header, rows))
