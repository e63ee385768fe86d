"""The short table ``genbench run`` prints when it ends."""

from __future__ import annotations

import click


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def print_run_table(results) -> None:
    """One row per run: model, seed, status, steps, images, train time, img/s, params, losses."""
    header = ["model", "seed", "status", "steps", "images", "train s", "img/s", "params",
              "final losses", "run folder"]
    rows = []
    for spec, result in results:
        images = result.steps * spec.train.batch_size
        rate = images / result.train_time_s if result.train_time_s else 0.0
        losses = " ".join(f"{k}={v:.3g}" for k, v in list(result.final_losses.items())[:3])
        rows.append([spec.model, spec.seed, result.status, result.steps, images,
                     f"{result.train_time_s:.1f}", f"{rate:.0f}", f"{result.parameters:,}",
                     losses, str(result.run_dir.path)])
    click.echo(format_table(header, rows))
