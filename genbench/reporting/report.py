"""``genbench report``: rebuild ``results.csv`` from the run folders, then write the comparison
tables, figures and an index under ``<results>/report/``.

Layout::

    <results>/results.csv                       every metric of every run, long format
    <results>/report/report.md                  the index: tables inline, figures linked
    <results>/report/tables/<dataset>-<budget>-<split>.{csv,tex,md}
    <results>/report/figures/<table>-<metric>-vs-<param>.{png,pdf}
    <results>/report/figures/<table>-losses-<model>.{png,pdf}
    <results>/report/figures/<table>-samples.{png,pdf}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

import genbench
from genbench.core.errors import UsageError
from genbench.core.io import write_text
from genbench.reporting.aggregate import ROW_MODEL, ComparisonTable, build_tables
from genbench.reporting.collect import collect_results, write_results_csv

REPORT_DIR = "report"
# Published numbers shipped with the repository (an editable install finds them beside the package).
DEFAULT_BASELINES = Path(genbench.__file__).resolve().parent.parent / "baselines" / "published.csv"
BASELINE_COLUMNS = ["dataset", "model", "metric", "value", "std", "std_is", "unit", "setting", "source"]


@dataclass
class Report:
    results_csv: Path
    index: Path | None
    tables: list[ComparisonTable] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def load_baselines(path: str | Path | None) -> pd.DataFrame | None:
    """``baselines/published.csv``: one published number per row, each with its source."""
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        if path == DEFAULT_BASELINES:
            return None
        raise UsageError(f"--baselines {path}: no such file")
    frame = pd.read_csv(path, comment="#")
    missing = [c for c in BASELINE_COLUMNS if c not in frame.columns]
    if missing:
        raise UsageError(f"--baselines {path}: missing columns {', '.join(missing)}")
    return frame


def _numeric_parameters(table: ComparisonTable) -> list[str]:
    """Group-by keys (other than the model) with at least two distinct values: the x axes."""
    keys = []
    for key in table.group_by[1:]:
        values = {r.key.get(key) for r in table.rows if r.kind == ROW_MODEL}
        if len(values - {None, ""}) > 1:
            keys.append(key)
    return keys


def _row_label(key: dict) -> str:
    parts = [str(key.get("model", ""))]
    parts += [f"{k}={v}" for k, v in key.items() if k != "model" and v not in (None, "")]
    return " ".join(parts)


def write_report(results_dir: str | Path = "results", formats: tuple[str, ...] = ("csv", "latex", "markdown"),
                 group_by: list[str] | None = None, split: str = "test",
                 metrics: list[str] | None = None, spread: str = "std",
                 baselines: str | Path | None = DEFAULT_BASELINES, figures: bool = True,
                 frame: pd.DataFrame | None = None) -> Report:
    """Rebuild ``results.csv`` and the report of every run under ``results_dir``."""
    from genbench.reporting import tables as render

    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise UsageError(f"{results_dir} is not a folder of results")
    for fmt in formats:
        if fmt not in render.FORMATS:
            raise UsageError(f"--format: unknown format '{fmt}' (known: {', '.join(render.FORMATS)})")
    if spread not in ("std", "ci95"):
        raise UsageError(f"--spread must be std or ci95, got '{spread}'")
    frame = collect_results(results_dir) if frame is None else frame
    results_csv = write_results_csv(results_dir, frame)
    tables = build_tables(frame, group_by, split, metrics, load_baselines(baselines))
    report_dir = results_dir / REPORT_DIR
    written: list[Path] = []
    sections = []
    for table in tables:
        table_files = []
        for fmt in formats:
            path = report_dir / "tables" / f"{table.name}{render.EXTENSIONS[fmt]}"
            write_text(path, render.render(table, fmt, spread))
            table_files.append(path)
        figure_files = _table_figures(table, frame, results_dir, report_dir / "figures") if figures else []
        written += table_files + figure_files
        sections.append(_section(table, table_files, figure_files, report_dir, spread))
    if not tables:
        sections.append("No evaluated runs yet: train with `genbench run` or `genbench sweep` "
                        "(evaluation is on by default), or evaluate with `genbench evaluate`.\n")
    index = report_dir / "report.md"
    write_text(index, _index(results_dir, frame, sections))
    written.append(index)
    _remove_stale(report_dir, set(written))
    return Report(results_csv, index, tables, written)


def _table_figures(table: ComparisonTable, frame: pd.DataFrame, results_dir: Path,
                   figures_dir: Path) -> list[Path]:
    from genbench.reporting import figures

    written = []
    for parameter in _numeric_parameters(table):
        written += figures.plot_metrics_vs_parameter(table, parameter, figures_dir)
    part = frame[(frame["dataset"] == table.dataset) & (frame["budget"] == table.budget)]
    runs_by_model: dict[str, list[tuple[str, Path]]] = {}
    montage, neighbours = [], []
    for row in table.rows:
        if row.kind != ROW_MODEL:
            continue
        paths = [results_dir / p for p in part.loc[part["run_id"].isin(row.run_ids), "run_path"].unique()]
        label = _row_label(row.key)
        runs_by_model.setdefault(str(row.key.get("model")), []).extend((label, p) for p in paths)
        if paths:
            first = sorted(paths)[0]
            montage.append((label, first / "samples.png"))
            neighbours.append((label, first / "nearest_neighbours.png"))
            # A model's own figures (InfoGAN: each latent code varied), from its first seed.
            own = sorted((first / "figures").glob("*.png"))
            if own:
                stem = figures_dir / f"{table.name}-{_safe(label)}-figures"
                written += figures.sample_montage([(p.stem, p) for p in own], stem, columns=len(own))
    for model, runs in runs_by_model.items():
        written += figures.plot_loss_curves(runs, figures_dir / f"{table.name}-losses-{_safe(model)}")
    written += figures.sample_montage(montage, figures_dir / f"{table.name}-samples")
    # Each sample beside its nearest training images (the memorisation metric's panel).
    written += figures.sample_montage(neighbours, figures_dir / f"{table.name}-nearest-neighbours")
    return written


def _safe(text: str) -> str:
    """``text`` as a file-name part."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def _section(table: ComparisonTable, table_files: list[Path], figure_files: list[Path],
             report_dir: Path, spread: str) -> str:
    from genbench.reporting import tables as render

    relative = lambda p: p.relative_to(report_dir).as_posix()  # noqa: E731
    family = f", {table.family} models" if table.family else ""
    lines = [f"## {table.dataset}, {table.budget} budget, {table.split} split{family}", "",
             render.render_markdown(table, spread), "",
             "Tables: " + ", ".join(f"[{p.suffix[1:]}]({relative(p)})" for p in table_files), ""]
    for png in [p for p in figure_files if p.suffix == ".png"]:
        pdf = png.with_suffix(".pdf")
        title = png.stem.removeprefix(f"{table.name}-").replace("-", " ")
        lines += [f"### {title}", "", f"![{title}]({relative(png)})", ""]
        if pdf in figure_files:
            lines += [f"[PDF]({relative(pdf)})", ""]
    return "\n".join(lines)


def _index(results_dir: Path, frame: pd.DataFrame, sections: list[str]) -> str:
    runs = frame.drop_duplicates("run_id")
    evaluated = frame[frame["metric"].fillna("") != ""]["run_id"].nunique()
    train_hours = pd.to_numeric(runs["train_time_s"], errors="coerce").sum() / 3600
    eval_hours = pd.to_numeric(runs["eval_time_s"], errors="coerce").sum() / 3600
    header = [
        f"# genbench report: {results_dir.name}", "",
        f"{len(runs)} runs, {evaluated} evaluated; compute {train_hours:.2f} h training + "
        f"{eval_hours:.2f} h evaluation. Every number comes from `results.csv`, rebuilt from the "
        "run folders (the source of truth) by `genbench report`; each run's `config.json` "
        "reproduces it.", "",
    ]
    unevaluated = len(runs) - evaluated
    if unevaluated:
        header += [f"{unevaluated} run(s) have no metrics yet: `genbench evaluate RUN_DIR`.", ""]
    return "\n".join(header + sections)


def _remove_stale(report_dir: Path, keep: set[Path]) -> None:
    """Tables and figures of groups that no longer exist would mislead: remove them."""
    for folder in (report_dir / "tables", report_dir / "figures"):
        if folder.is_dir():
            for path in folder.iterdir():
                if path.is_file() and path not in keep:
                    path.unlink()


def comparison_text(results_dir: str | Path, run_ids: list[str], group_by: list[str] | None = None,
                    split: str = "test", metrics: list[str] | None = None) -> str:
    """The terminal comparison table of just these runs (those a command has just made)."""
    from genbench.reporting import tables as render

    frame = collect_results(results_dir)
    parameters = frame.attrs.get("parameters", [])
    frame = frame[frame["run_id"].isin(run_ids)]
    frame.attrs["parameters"] = parameters
    built = build_tables(frame, group_by, split, metrics, None)
    if not built:
        return "no metrics to compare (runs not evaluated)"
    return "\n\n".join(render.render_text(t) for t in built)
