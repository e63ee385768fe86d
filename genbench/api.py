"""The Python API, mirroring the command line for notebooks::

    import genbench
    genbench.run(["gvae", "vae"], dataset="mnist", budget="smoke")
    genbench.sweep({"latent_dim": [100, 500, 1000]}, models=["gvae"], seeds=[0, 1])
    report = genbench.report("results")

Each returns plain objects (outcomes per run, a :class:`~genbench.reporting.report.Report`); the
command line calls these same functions and only adds printing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genbench.core.errors import UsageError
from genbench.experiments.execute import CellOutcome, ExecutionOptions, execute
from genbench.experiments.executors import ExecutorOptions, check_executor_available, execute_with
from genbench.experiments.plan import (
    SweepAxis,
    build_specs,
    parse_overrides,
    parse_sweep_spec,
    parse_sweep_specs,
    plan_sweep,
)
from genbench.reporting.report import Report, write_report


@dataclass
class RunBatch:
    """What :func:`run` and :func:`sweep` return: one outcome per cell, the swept keys, and the
    report written at the end (``None`` when ``report=False``)."""

    outcomes: list[CellOutcome]
    parameters: list[str]
    report: Report | None

    @property
    def run_ids(self) -> list[str]:
        return [o.spec.run_id for o in self.outcomes]

    @property
    def failed(self) -> list[CellOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


def _models(models: str | Iterable[str]) -> list[str]:
    names = [m.strip() for m in (models.split(",") if isinstance(models, str) else models) if m.strip()]
    if not names:
        raise UsageError("--models needs at least one model name")
    if len(set(names)) != len(names):
        raise UsageError(f"--models: a model is listed twice in {','.join(names)}")
    return names


def _overrides(overrides: Mapping[str, Any] | Iterable[str] | None) -> dict[str, str]:
    if overrides is None:
        return {}
    if isinstance(overrides, Mapping):
        return {str(k): str(v) for k, v in overrides.items()}
    return parse_overrides(list(overrides))


def _axes(specs: Mapping[str, Iterable[Any]] | Iterable[str] | str) -> list[SweepAxis]:
    if isinstance(specs, str):
        return [parse_sweep_spec(specs)]
    if isinstance(specs, Mapping):
        texts = [f"{k}={','.join(str(v) for v in values)}" for k, values in specs.items()]
        return parse_sweep_specs(texts)
    return parse_sweep_specs(list(specs))


def _options(out, device, data_dir, download, evaluate, metrics, fresh, progress, tensorboard,
             jobs, keep_going) -> ExecutionOptions:
    if metrics is not None:
        from genbench.evaluation import METRICS

        metrics = [m.strip() for m in (metrics.split(",") if isinstance(metrics, str) else metrics)]
        for name in metrics:
            METRICS.get(name)  # unknown names fail before anything trains
    return ExecutionOptions(out=str(out), device=device, data_dir=data_dir,
                            allow_download=download, evaluate=evaluate, metrics=metrics,
                            fresh=fresh, progress=progress, tensorboard=tensorboard, jobs=jobs,
                            keep_going=keep_going)


def _check_writable(out: Path) -> None:
    from genbench.core.errors import GenbenchError

    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".genbench-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise GenbenchError(f"cannot write to output folder {out}: {error.strerror}") from None


def _executor(name: str, values: Mapping[str, Any] | None, jobs: int) -> ExecutorOptions:
    import dataclasses
    import difflib

    known = [f.name for f in dataclasses.fields(ExecutorOptions) if f.name != "name"]
    for key in sorted(set(values or {}) - set(known)):
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(known)}"
        raise UsageError(f"unknown executor option '{key}'; {hint}")
    executor = ExecutorOptions(name, **dict(values or {}))
    executor.validate()
    if jobs > 1 and name != "local":
        raise UsageError(f"--jobs runs cells on this machine; with --executor {name} give "
                         "--cpus-per-cell instead")
    check_executor_available(name)
    return executor


def run(models: str | Iterable[str], dataset: str = "mnist", budget: str = "smoke",
        seeds: Iterable[int] = (0,), overrides: Mapping[str, Any] | Iterable[str] | None = None,
        out: str | Path = "results", *, device: str = "auto", data_dir: str | None = None,
        image_size: int | None = None, limit: int | None = None, download: bool = True,
        evaluate: bool = True, metrics: str | Iterable[str] | None = None, fresh: bool = False,
        progress: bool = True, tensorboard: bool = False, jobs: int = 1,
        report: bool = True) -> RunBatch:
    """Train (resume, or skip) and evaluate each model for each seed; then rebuild the report of
    ``out``. Same behaviour as ``genbench run``."""
    specs = build_specs(_models(models), dataset, budget, list(seeds), _overrides(overrides),
                        image_size, limit)
    options = _options(out, device, data_dir, download, evaluate, metrics, fresh, progress,
                       tensorboard, jobs, keep_going=False)
    _check_writable(Path(out))
    outcomes = execute(specs, options)
    written = write_report(out) if report else None
    return RunBatch(outcomes, [], written)


def sweep(specs: Mapping[str, Iterable[Any]] | Iterable[str] | str, models: str | Iterable[str],
          dataset: str = "mnist", budget: str = "smoke", seeds: Iterable[int] = (0, 1, 2),
          overrides: Mapping[str, Any] | Iterable[str] | None = None, out: str | Path = "results",
          *, device: str = "auto", data_dir: str | None = None, image_size: int | None = None,
          limit: int | None = None, download: bool = True, evaluate: bool = True,
          metrics: str | Iterable[str] | None = None, fresh: bool = False, progress: bool = True,
          tensorboard: bool = False, jobs: int = 1, report: bool = True, executor: str = "local",
          executor_options: Mapping[str, Any] | None = None) -> RunBatch:
    """The cartesian product of the specs' values × models × seeds, one ordinary run folder per
    cell. ``specs`` is ``{"latent_dim": [100, 500]}`` or ``["latent_dim=100,500"]``. Re-running
    skips finished cells and resumes unfinished ones; a failed cell does not stop the others.

    ``executor`` is ``"local"``, ``"ray"`` or ``"slurm"``; ``executor_options`` holds fields of
    :class:`~genbench.experiments.executors.ExecutorOptions` (``{"cpus_per_cell": 2}``)."""
    axes = _axes(specs)
    cells = plan_sweep(axes, _models(models), dataset, budget, list(seeds), _overrides(overrides),
                       image_size, limit)
    options = _options(out, device, data_dir, download, evaluate, metrics, fresh, progress,
                       tensorboard, jobs, keep_going=True)
    where = _executor(executor, executor_options, jobs)
    _check_writable(Path(out))
    outcomes = execute_with([cell.spec for cell in cells], options, where)
    written = write_report(out) if report else None
    return RunBatch(outcomes, list(dict.fromkeys(axis.bare_key for axis in axes)), written)


def report(results_dir: str | Path = "results", formats: str | Iterable[str] = ("csv", "latex", "markdown"),
           group_by: str | Iterable[str] | None = None, split: str = "test",
           metrics: str | Iterable[str] | None = None, spread: str = "std",
           baselines: str | Path | None = "default", figures: bool = True) -> Report:
    """Rebuild ``results.csv`` from the run folders and write tables, figures and ``report.md``
    under ``<results_dir>/report/``. ``baselines="default"`` joins the repository's published
    numbers when present; ``None`` leaves them out."""
    from genbench.reporting.report import DEFAULT_BASELINES

    as_list = lambda v: [s.strip() for s in (v.split(",") if isinstance(v, str) else v) if s.strip()]  # noqa: E731
    return write_report(results_dir, tuple(as_list(formats)),
                        as_list(group_by) if group_by is not None else None, split,
                        as_list(metrics) if metrics is not None else None, spread,
                        DEFAULT_BASELINES if baselines == "default" else baselines, figures)
