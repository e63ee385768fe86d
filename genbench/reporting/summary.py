"""Plain-text tables for the terminal: runs just trained, metrics just computed."""

from __future__ import annotations

import click


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


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


def print_run_table(outcomes) -> None:
    """One row per run: model, seed, status, steps, images, train time, img/s, params, losses."""
    header = ["model", "seed", "status", "steps", "images", "train s", "img/s", "params",
              "final losses", "run folder"]
    rows = []
    for outcome in outcomes:
        spec = outcome.spec
        images = outcome.steps * spec.train.batch_size
        rate = images / outcome.train_time_s if outcome.train_time_s else 0.0
        losses = " ".join(f"{k}={v:.3g}" for k, v in list(outcome.final_losses.items())[:3])
        rows.append([spec.model, spec.seed, outcome.status, outcome.steps, images,
                     f"{outcome.train_time_s:.1f}", f"{rate:.0f}", f"{outcome.parameters:,}",
                     losses or outcome.error[:60], str(outcome.run_path)])
    click.echo(format_table(header, rows))
