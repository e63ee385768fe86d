"""The plots of a report: metrics against a swept parameter, training losses, sample grids.

Figures are built with matplotlib's object API (:class:`~matplotlib.figure.Figure`, never
``pyplot``), so no global backend or figure registry is touched and plotting works headless. Every
public ``plot_*`` function writes a PNG (dpi 150) and a PDF through :func:`genbench.core.io.write_bytes`
(atomic) and returns the written paths.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from genbench.core.io import write_bytes
from genbench.reporting.aggregate import (
    ROW_MODEL,
    ROW_REFERENCE,
    ComparisonTable,
    MetricColumn,
    Row,
    declared_order,
)
from genbench.training.rundir import RunDir

DPI = 150
PANEL = (4.0, 3.0)  # inches per subplot
ARROWS = {"higher": " (↑ better)", "lower": " (↓ better)"}
LOSS_INDEX_COLUMNS = ("step", "images", "time_s")


def _save(fig: Figure, stem: Path) -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.pdf`` atomically; return both paths."""
    paths = []
    for fmt in ("png", "pdf"):
        buffer = io.BytesIO()
        # No creation date in the PDF: the same figure gives the same bytes.
        metadata = {"CreationDate": None} if fmt == "pdf" else None
        fig.savefig(buffer, format=fmt, dpi=DPI, metadata=metadata)
        path = stem.with_name(f"{stem.name}.{fmt}")
        write_bytes(path, buffer.getvalue())
        paths.append(path)
    return paths


def _grid(n: int, max_columns: int) -> tuple[int, int]:
    columns = max(1, min(n, max_columns))
    return math.ceil(n / columns), columns


def _figure_legend(fig: Figure, axes) -> None:
    """One legend for all ``axes`` (each label once), outside on the right."""
    legend: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    if legend:
        fig.legend(list(legend.values()), list(legend), loc="outside right upper", fontsize="small")


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            and math.isfinite(float(value)))


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (float, np.floating)) else str(value)


# --- metrics against a parameter -------------------------------------------------------------


def _line_of(table: ComparisonTable, parameter: str, row: Row) -> tuple:
    """The line ``row`` belongs to: its values of the group-by keys other than ``parameter``."""
    return tuple(row.key.get(k) for k in table.group_by if k != parameter)


def _plotted_rows(table: ComparisonTable, parameter: str) -> list[Row]:
    """The model rows on the plot: those of the lines run at two or more values of
    ``parameter``. A model trained at one latent size is a point, not a curve against it, and
    would only crowd the swept models' plot; when no line has two values (``--group-by`` on a
    parameter that differs only between models), every model row is kept."""
    rows = [r for r in table.rows if r.kind == ROW_MODEL]
    values: dict[tuple, set] = defaultdict(set)
    for row in rows:
        if row.key.get(parameter) not in (None, ""):
            values[_line_of(table, parameter, row)].add(row.key.get(parameter))
    swept = {line for line, xs in values.items() if len(xs) > 1}
    return [r for r in rows if _line_of(table, parameter, r) in swept] if swept else rows


def _line_keys(table: ComparisonTable, parameter: str) -> list[tuple]:
    """The lines of a plot, in table order (see :func:`_plotted_rows`)."""
    return list(dict.fromkeys(_line_of(table, parameter, r) for r in _plotted_rows(table, parameter)))


def _line_label(table: ComparisonTable, parameter: str, line: tuple) -> str:
    others = [k for k in table.group_by if k != parameter]
    parts = [str(v) if k == "model" else f"{k}={_fmt(v)}"
             for k, v in zip(others, line) if v not in (None, "")]
    return ", ".join(parts) or "models"


def _x_positions(table: ComparisonTable, parameter: str) -> dict[Any, float] | None:
    """None when every value of ``parameter`` is a number (plot them as they are); otherwise a
    position per value for a categorical axis: in the order the models' configs declare (layers
    from input to output), else numbers first, in order, then the rest by name."""
    rows = _plotted_rows(table, parameter)
    values = {r.key.get(parameter) for r in rows} - {None, ""}
    if all(_is_number(v) for v in values):
        return None
    declared = declared_order(list(dict.fromkeys(r.key.get("model") for r in rows)), parameter) or []
    order = sorted(values, key=lambda v: (
        (0, declared.index(v), 0.0, "") if v in declared
        else (1, 0, float(v), "") if _is_number(v) else (2, 0, 0.0, str(v))))
    return {v: float(i) for i, v in enumerate(order)}


def _has_values(table: ComparisonTable, metric: str, parameter: str) -> bool:
    return any(metric in r.cells and r.cells[metric].available
               for r in _plotted_rows(table, parameter))


def _ylabel(column: MetricColumn) -> str:
    unit = f" [{column.header_unit}]" if column.header_unit else ""
    return f"{column.label}{ARROWS.get(column.direction, '')}{unit}"


def _draw_metric(ax: Axes, table: ComparisonTable, column: MetricColumn, parameter: str) -> None:
    """One metric of ``table`` against ``parameter`` into ``ax``: a line with error bars (std
    over seeds) per combination of the other group-by values, the real-data value dashed."""
    lines = _line_keys(table, parameter)
    positions = _x_positions(table, parameter)
    points: dict[tuple, list[tuple[float, float, float]]] = defaultdict(list)
    for row in _plotted_rows(table, parameter):
        cell = row.cells.get(column.name)
        x = row.key.get(parameter)
        if cell is None or not cell.available or x in (None, ""):
            continue
        x = float(x) if positions is None else positions[x]
        std = np.nan if cell.std is None else cell.std
        points[_line_of(table, parameter, row)].append((x, cell.mean, std))
    xs_all: set[float] = set()
    for i, line in enumerate(lines):  # colours follow the table's line order, in every subplot
        if not points[line]:
            continue
        x, y, err = (np.array(v) for v in zip(*sorted(points[line])))
        xs_all.update(x.tolist())
        ax.errorbar(x, y, yerr=None if np.isnan(err).all() else err, marker="o", capsize=3,
                    color=f"C{i % 10}", label=_line_label(table, parameter, line))
    for row in table.rows:
        cell = row.cells.get(column.name)
        if row.kind == ROW_REFERENCE and cell is not None and cell.available:
            ax.axhline(cell.mean, linestyle="--", color="grey", label="real data")
            break
    ticks = sorted(xs_all)
    if positions is None and ticks and ticks[0] > 0 and ticks[-1] / ticks[0] >= 10:
        ax.set_xscale("log")
    if positions is None:
        ax.set_xticks(ticks, [_fmt(int(t) if float(t).is_integer() else t) for t in ticks])
    else:
        names = {p: _fmt(v) for v, p in positions.items()}
        ax.set_xticks(ticks, [names[t] for t in ticks])
    if _crowded(ax, ticks, [label.get_text() for label in ax.get_xticklabels()]):
        ax.tick_params(axis="x", labelrotation=45)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel(parameter)
    ax.set_ylabel(_ylabel(column))
    ax.grid(True, alpha=0.3)


# Space kept between neighbouring level tick labels, inches; a character is about 0.6 em wide.
TICK_LABEL_GAP = 0.05
CHARACTER_WIDTH_EM = 0.6


def _crowded(ax: Axes, ticks: list[float], labels: list[str]) -> bool:
    """Whether two neighbouring x tick labels would overlap side by side on ``ax`` (100 beside
    128 on a log axis in a small panel), judged from the axis width and the labels' lengths."""
    if len(ticks) < 2:
        return False
    where = np.log10(ticks) if ax.get_xscale() == "log" else np.asarray(ticks, dtype=float)
    span = where[-1] - where[0]
    if span <= 0:
        return False
    axis_inches = ax.get_position().width * ax.figure.get_figwidth()
    em = ax.xaxis.get_ticklabels()[0].get_fontsize() / 72 if ax.xaxis.get_ticklabels() else 10 / 72
    gaps = np.diff(where) / span * axis_inches
    needed = [(len(a) + len(b)) / 2 * CHARACTER_WIDTH_EM * em + TICK_LABEL_GAP
              for a, b in zip(labels, labels[1:])]
    return bool(any(gap < need for gap, need in zip(gaps, needed)))


def _footer(table: ComparisonTable, metrics: list[str]) -> str:
    text = f"{table.dataset}, {table.budget} budget, {table.split} split; mean ± std over seeds"
    extractors = list(dict.fromkeys(table.feature_extractors[m] for m in metrics
                                    if table.feature_extractors.get(m)))
    return text + (f"; features: {', '.join(extractors)}" if extractors else "")


def metric_vs_parameter_figure(table: ComparisonTable, metric: str, parameter: str) -> Figure:
    """The figure of one metric against ``parameter`` (one of ``table.group_by``), unsaved."""
    if parameter not in table.group_by:
        raise ValueError(f"{parameter!r} is not a group-by key of {table.name} "
                         f"({', '.join(table.group_by)})")
    column = table.column(metric)
    fig = Figure(figsize=(PANEL[0] + 1.5, PANEL[1] + 0.5), constrained_layout=True)
    ax = fig.subplots()
    _draw_metric(ax, table, column, parameter)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    fig.suptitle(f"{column.label} vs {parameter}")
    ax.set_title(_footer(table, [metric]), fontsize="small", color="dimgrey")
    return fig


def metrics_overview_figure(table: ComparisonTable, metrics: list[str], parameter: str) -> Figure:
    """All ``metrics`` against ``parameter`` as a grid of subplots with one shared legend."""
    nrows, ncols = _grid(len(metrics), 3)
    fig = Figure(figsize=(PANEL[0] * ncols + 1.5, PANEL[1] * nrows + 0.6), constrained_layout=True)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, metric in zip(axes, metrics):
        column = table.column(metric)
        _draw_metric(ax, table, column, parameter)
        ax.set_title(column.label)
    for ax in axes[len(metrics):]:
        ax.remove()
    _figure_legend(fig, axes[:len(metrics)])
    fig.suptitle(f"{table.name}: metrics vs {parameter}")
    fig.supxlabel(_footer(table, metrics), fontsize="small", color="dimgrey")
    return fig


def plot_metrics_vs_parameter(table: ComparisonTable, parameter: str, out_dir: Path) -> list[Path]:
    """Per metric with at least one model value, ``<name>-<metric>-vs-<parameter>.png/.pdf``, and
    an overview of them all, ``<name>-metrics-vs-<parameter>.png/.pdf``, in ``out_dir``."""
    out_dir = Path(out_dir)
    metrics = [c.name for c in table.columns if _has_values(table, c.name, parameter)]
    paths: list[Path] = []
    for metric in metrics:
        fig = metric_vs_parameter_figure(table, metric, parameter)
        paths += _save(fig, out_dir / f"{table.name}-{metric}-vs-{parameter}")
    if metrics:
        fig = metrics_overview_figure(table, metrics, parameter)
        paths += _save(fig, out_dir / f"{table.name}-metrics-vs-{parameter}")
    return paths


# --- training losses -------------------------------------------------------------------------


def _read_losses(run: Path) -> dict[str, np.ndarray]:
    """``losses.csv`` as float columns (empty cells are NaN); {} when the run has none."""
    rows = RunDir(run).read_losses()
    if not rows:
        return {}

    def number(text: str | None) -> float:
        try:
            return float(text) if text not in (None, "") else np.nan
        except ValueError:
            return np.nan

    return {name: np.array([number(r.get(name)) for r in rows]) for name in rows[0]}


def _loss_scale(values: np.ndarray) -> str:
    """"log" for positive values over more than 3 decades, "symlog" when such a range also holds
    negative values, else "linear"."""
    values = values[np.isfinite(values)]
    magnitudes = np.abs(values[values != 0])
    if not len(magnitudes) or magnitudes.max() / magnitudes.min() <= 1e3:
        return "linear"
    if (values > 0).all():
        return "log"
    return "symlog" if (values < 0).any() else "linear"


def plot_loss_curves(runs: list[tuple[str, Path]], out_stem: Path) -> list[Path]:
    """Training losses against step, a subplot per loss column; runs sharing a label (seeds)
    share a colour, drawn thin and translucent, with their mean over common steps drawn solid.
    Runs without ``losses.csv`` are skipped; returns [] when nothing is left to plot."""
    curves = [(label, table) for label, run in runs if (table := _read_losses(Path(run)))
              and "step" in table]
    columns = list(dict.fromkeys(c for _, t in curves for c in t if c not in LOSS_INDEX_COLUMNS))
    if not columns:
        return []
    by_label: dict[str, list[dict[str, np.ndarray]]] = defaultdict(list)
    for label, table in curves:
        by_label[label].append(table)
    nrows, ncols = _grid(len(columns), 3)
    fig = Figure(figsize=(PANEL[0] * ncols + 1.5, PANEL[1] * nrows), constrained_layout=True)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, name in zip(axes, columns):
        for i, (label, tables) in enumerate(by_label.items()):
            colour, seeds = f"C{i % 10}", [t for t in tables if name in t]
            common = sorted(set.intersection(*(set(t["step"].tolist()) for t in seeds))) \
                if len(seeds) > 1 else []
            for k, t in enumerate(seeds):
                thin = len(seeds) > 1
                ax.plot(t["step"], t[name], color=colour, lw=0.8 if thin else 1.5,
                        alpha=0.4 if thin else 1.0, label="_nolegend_" if common or k else label)
            if common:  # the mean over seeds, on the steps they all logged
                mean = [np.nanmean([t[name][t["step"] == s][0] for t in seeds]) for s in common]
                ax.plot(common, mean, color=colour, lw=1.8, label=label)
        values = np.concatenate([t[name] for _, t in curves if name in t])
        scale = _loss_scale(values)
        if scale == "symlog":  # linear within the decade of the smallest tenth of magnitudes
            magnitudes = np.abs(values[np.isfinite(values) & (values != 0)])
            linthresh = 10.0 ** math.floor(math.log10(np.percentile(magnitudes, 10)))
            ax.set_yscale("symlog", linthresh=linthresh)
        else:
            ax.set_yscale(scale)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    for ax in axes[len(columns):]:
        ax.remove()
    seeded = any(len(tables) > 1 for tables in by_label.values())
    fig.suptitle("training losses" + ("; thin: single seeds, thick: their mean" if seeded else ""))
    _figure_legend(fig, axes[:len(columns)])
    return _save(fig, Path(out_stem))


# --- samples ---------------------------------------------------------------------------------


def sample_montage(entries: list[tuple[str, Path]], out_stem: Path, columns: int = 4) -> list[Path]:
    """The ``samples.png`` grids of several runs side by side, ``columns`` panels a row, each
    titled with its label. Missing files are skipped; returns [] when none is left."""
    from matplotlib.image import imread

    if columns < 1:
        raise ValueError(f"columns must be at least 1, got {columns}")
    found = [(label, Path(path)) for label, path in entries if Path(path).is_file()]
    if not found:
        return []
    nrows, ncols = _grid(len(found), columns)
    fig = Figure(figsize=(3.0 * ncols, 3.3 * nrows), constrained_layout=True)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (label, path) in zip(axes, found):
        image = imread(path)  # [H, W] or [H, W, 3|4]
        # PNGs read as floats in [0, 1]: pin grey levels to that range, never contrast-stretch.
        grey = {"cmap": "gray", "vmin": 0.0, "vmax": 1.0} if image.ndim == 2 else {}
        ax.imshow(image, interpolation="nearest", **grey)
        ax.set_title(label, fontsize="small")
        ax.set_axis_off()
    for ax in axes[len(found):]:
        ax.remove()
    return _save(fig, Path(out_stem))
