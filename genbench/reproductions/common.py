"""What every reproduction shares: its registry entry, the published numbers, a resumable training
loop, cached evaluations and the table it writes.

A reproduction trains the models of one published table with the paper's settings, evaluates them
the paper's way and writes ``table.{md,csv,tex}`` and ``config.json`` into
``<out>/<schedule>/``, ours beside the published number. Its own training loop (not
:mod:`genbench.training.harness`) because the papers' data splits are not genbench's: the IWAE
trains on all 60,000 MNIST training images, Wu et al. on a fixed permutation's first 50,000.
Checkpoints, resume and the batch order still come from the harness's pieces.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from genbench.core.errors import GenbenchError, UsageError
from genbench.core.io import write_json, write_text
from genbench.core.registry import Registry
from genbench.training.checkpoint import CheckpointStore
from genbench.training.environment import provenance, rng_state, set_rng_state

SCHEDULES = ("smoke", "short", "full")
CHECKPOINT_SECONDS = 60.0  # wall time between checkpoints: an interrupted run loses at most this


@dataclass
class ReproductionContext:
    """Where and how one reproduction runs; ``folder`` is ``<out>/<schedule>/``."""

    schedule: str
    folder: Path
    device: torch.device
    seed: int = 0
    data_dir: str | None = None
    allow_download: bool = True
    progress: bool = True

    def log(self, message: str) -> None:
        if self.progress:
            print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Reproduction:
    """One published table: ``run(context)`` trains, evaluates and returns its rows."""

    name: str
    description: str
    schedules: dict[str, str]  # schedule -> what it runs and how long it takes
    run: Callable[[ReproductionContext], ReproductionReport]


REPRODUCTIONS: Registry[Reproduction] = Registry("reproduction")


def register_reproduction(name: str, description: str, schedules: dict[str, str]):
    """Register ``run(context) -> ReproductionReport`` under ``name`` (``genbench reproduce NAME``)."""
    missing = [s for s in SCHEDULES if s not in schedules]
    if missing:
        raise ValueError(f"reproduction '{name}' lacks schedules {missing}")

    def decorator(run):
        REPRODUCTIONS.add(name, Reproduction(name, description, schedules, run))
        return run

    return decorator


# --- published numbers ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Published:
    value: float
    std: float | None
    setting: str
    source: str


def published(model: str, source: str, metric: str = "log_likelihood") -> Published:
    """The number ``baselines/published.csv`` holds for ``model`` from ``source`` (a paper and table)."""
    from genbench.reporting.report import DEFAULT_BASELINES, load_baselines

    frame = load_baselines(DEFAULT_BASELINES)
    if frame is None:
        raise GenbenchError(f"{DEFAULT_BASELINES} is missing: reproductions need the published numbers "
                            "of a source checkout")
    rows = frame[(frame["model"] == model) & (frame["source"] == source) & (frame["metric"] == metric)]
    if len(rows) != 1:
        raise GenbenchError(f"{DEFAULT_BASELINES} has {len(rows)} rows for {model!r} from {source!r}, "
                            "expected one")
    row = rows.iloc[0]
    std = None if math.isnan(float(row["std"])) else float(row["std"])
    return Published(float(row["value"]), std, str(row["setting"]), str(row["source"]))


# --- resumable training --------------------------------------------------------------------------
@dataclass
class TrainingRecord:
    steps: int
    train_time_s: float
    resumed_from: int  # the step this process started at (0: a fresh run)
    losses: list[dict[str, float]] = field(default_factory=list)  # one row per log interval


def train_resumable(
    folder: Path,
    run_id: str,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    total_steps: int,
    step_fn: Callable[[int], dict[str, float]],
    description: str,
    progress: bool = True,
    log_every: int = 1000,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
) -> TrainingRecord:
    """Run ``step_fn(step)`` for ``step`` in ``[start, total_steps)``, resuming from
    ``folder/checkpoint.pt`` when one exists; returns the training time over all resumes.

    The checkpoint (every ``checkpoint_seconds`` of wall time and at the end) holds the modules,
    the optimizers, the random states and the loss log, so a resumed run draws the same numbers an
    uninterrupted one would, provided ``step_fn`` takes its batch order from the step (as
    :class:`genbench.training.harness.BatchStream` does). A checkpoint of another ``run_id`` (other
    settings) is refused. ``step_fn`` returns the step's losses (per image); the mean over each
    ``log_every`` steps goes into the log and the progress bar.
    """
    folder.mkdir(parents=True, exist_ok=True)
    store = CheckpointStore(folder / "checkpoint.pt", run_id)
    state = store.load()
    start, train_time, rows = 0, 0.0, []
    if state is not None:
        for name, module in modules.items():
            module.load_state_dict(state["model"][name])
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        set_rng_state(state["rng"])
        start, train_time, rows = state["step"], state["train_time_s"], state["losses"]
    record = TrainingRecord(start, train_time, start, rows)
    if start >= total_steps:
        return record

    def save(step: int) -> None:
        store.save({"step": step, "train_time_s": train_time, "losses": rows, "rng": rng_state(),
                    "model": {n: m.state_dict() for n, m in modules.items()},
                    "optimizers": {n: o.state_dict() for n, o in optimizers.items()}})

    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=start, desc=description, unit="step", file=sys.stderr,
               dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 60,
               disable=not progress)
    sums: dict[str, float] = {}
    tick = last_save = time.perf_counter()
    try:
        for step in range(start, total_steps):
            losses = step_fn(step)
            for name, value in losses.items():
                if not math.isfinite(value):
                    raise GenbenchError(f"{description}: loss '{name}' is {value} at step {step + 1}; "
                                        f"the last checkpoint in {folder} is kept")
                sums[name] = sums.get(name, 0.0) + value
            done = step + 1
            if done % log_every == 0 or done == total_steps:
                count = log_every if done % log_every == 0 else done % log_every
                rows.append({"step": done, **{k: v / count for k, v in sums.items()}})
                bar.set_postfix({k: f"{v:.4g}" for k, v in rows[-1].items() if k != "step"},
                                refresh=False)
                sums = {}
            bar.update(1)
            now = time.perf_counter()
            if now - last_save >= checkpoint_seconds or done == total_steps:
                train_time += now - tick
                tick = now
                # only whole log intervals are saved, so a resumed log has no half interval
                if done % log_every == 0 or done == total_steps:
                    save(done)
                    last_save = time.perf_counter()
    finally:
        bar.close()
    record.steps, record.train_time_s, record.losses = total_steps, train_time, rows
    return record


def cached(path: Path, key: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``compute()`` once: its JSON result (with ``seconds``) is kept at ``path`` under ``key``, so a
    re-run after an interruption skips the evaluations that finished."""
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            saved = None
        if isinstance(saved, dict) and saved.get("key") == key:
            return saved["result"]
    started = time.perf_counter()
    result = compute()
    result["seconds"] = round(time.perf_counter() - started, 3)
    write_json(path, {"key": key, "result": result})
    return result


# --- the table -----------------------------------------------------------------------------------
@dataclass
class Row:
    """One line of a reproduction table: our estimate beside the published one."""

    model: str
    estimate: str  # what was measured, e.g. "test NLL, IS k=5000"
    unit: str
    direction: str  # "higher" or "lower" is better
    ours: float | None
    ours_error: float | None  # standard error of the mean over test examples
    published: float | None = None
    published_std: float | None = None
    settings: str = ""
    train_s: float | None = None
    eval_s: float | None = None
    source: str = ""

    @property
    def difference(self) -> float | None:
        if self.ours is None or self.published is None:
            return None
        return self.ours - self.published


@dataclass
class ReproductionReport:
    title: str
    rows: list[Row]
    notes: list[str]
    config: dict[str, Any]


def _number(value: float | None, error: float | None = None) -> str:
    from genbench.reporting.tables import format_value

    if value is None:
        return "–"
    text, spread = format_value(value, error)
    return f"{text} ± {spread}" if spread else text


def _difference(row: Row) -> str:
    if row.difference is None:
        return "–"
    return f"{row.difference:+.2f}"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def _compute(row: Row) -> str:
    parts = []
    if row.train_s is not None:
        parts.append(f"train {_duration(row.train_s)}")
    if row.eval_s is not None:
        parts.append(f"eval {_duration(row.eval_s)}")
    return ", ".join(parts) or "–"


HEADER = ["model", "estimate", "ours", "published", "ours − published", "settings", "compute"]


def _cells(row: Row) -> list[str]:
    arrow = {"higher": "↑", "lower": "↓"}.get(row.direction, "")
    return [row.model, f"{row.estimate} [{row.unit}] {arrow}".strip(), _number(row.ours, row.ours_error),
            _number(row.published, row.published_std), _difference(row), row.settings, _compute(row)]


def render_markdown(report: ReproductionReport, schedule: str) -> str:
    def escape(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [f"**{report.title}**, schedule `{schedule}`. Ours: mean ± standard error over test "
             "examples; published: as printed in the paper.", "",
             "| " + " | ".join(HEADER) + " |", "|" + "|".join([":---", ":---"] + ["---:"] * 3
                                                           + [":---", "---:"]) + "|"]
    lines += ["| " + " | ".join(escape(c) for c in _cells(row)) + " |" for row in report.rows]
    lines += [""] + [f"- {note}" for note in report.notes]
    return "\n".join(lines) + "\n"


def render_csv(report: ReproductionReport) -> str:
    """Full-precision numbers: one line per row, the difference computed, seconds as numbers."""
    fields = ["model", "estimate", "unit", "direction", "ours", "ours_error", "published",
              "published_std", "difference", "settings", "train_s", "eval_s", "source"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(fields)
    for row in report.rows:
        values = asdict(row) | {"difference": row.difference}
        writer.writerow(["" if values[f] is None else values[f] for f in fields])
    return buffer.getvalue()


def render_latex(report: ReproductionReport, schedule: str) -> str:
    """A booktabs table (``\\usepackage{booktabs}``), the notes in its caption."""
    from genbench.reporting.tables import latex_escape

    caption = latex_escape(f"{report.title}, schedule {schedule}. Ours: mean ± standard error over test "
                           "examples. " + " ".join(report.notes))
    out = [r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{caption}}}",
           r"\begin{tabular}{llrrrlr}", r"\toprule", " & ".join(map(latex_escape, HEADER)) + r" \\",
           r"\midrule"]
    out += [" & ".join(latex_escape(c) for c in _cells(row)) + r" \\" for row in report.rows]
    out += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(out) + "\n"


def write_report(report: ReproductionReport, context: ReproductionContext, name: str,
                 wall_s: float) -> list[Path]:
    """``table.md``, ``table.csv``, ``table.tex`` and ``config.json`` in ``context.folder``."""
    folder = context.folder
    files = {folder / "table.md": render_markdown(report, context.schedule),
             folder / "table.csv": render_csv(report),
             folder / "table.tex": render_latex(report, context.schedule)}
    for path, text in files.items():
        write_text(path, text)
    config = {"reproduction": name, "schedule": context.schedule, "seed": context.seed,
              # this invocation only: a resumed run's training and evaluation times are in the
              # reproduction's own entries (train_time_s, evaluation seconds, compute_s)
              "invocation_wall_time_s": round(wall_s, 1), **report.config,
              **provenance(context.device)}
    write_json(folder / "config.json", config)
    return [*files, folder / "config.json"]


def run_reproduction(name: str, schedule: str, out: str | Path | None, device: torch.device,
                     seed: int = 0, data_dir: str | None = None, allow_download: bool = True,
                     progress: bool = True, fresh: bool = False) -> tuple[ReproductionReport, list[Path]]:
    """Train, evaluate and write the table of the reproduction ``name`` at ``schedule``.

    Output goes to ``<out>/<schedule>/`` (``out`` defaults to ``results/reproductions/<name>``);
    re-running resumes the training from its checkpoint and skips finished evaluations,
    ``fresh`` deletes that folder first.
    """
    from genbench.core.locking import run_lock

    reproduction = REPRODUCTIONS.get(name)
    if schedule not in reproduction.schedules:
        raise UsageError(f"unknown schedule '{schedule}' (known: {', '.join(reproduction.schedules)})")
    if seed < 0:
        raise UsageError(f"--seed must be >= 0, got {seed}")
    base = Path(out) if out is not None else Path("results") / "reproductions" / name
    folder = base / (schedule if seed == 0 else f"{schedule}-seed{seed}")
    with run_lock(folder):
        if fresh and folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        context = ReproductionContext(schedule, folder, device, seed, data_dir, allow_download, progress)
        started = time.perf_counter()
        report = reproduction.run(context)
        files = write_report(report, context, name, time.perf_counter() - started)
    return report, files
