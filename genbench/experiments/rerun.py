"""Regenerate a run from its saved ``config.json`` and compare its metrics with the saved ones.

Every row of every table comes from a run folder whose ``config.json`` holds the full
:class:`~genbench.training.RunSpec`; ``genbench rerun RUN_DIR --out OTHER`` trains that spec again
from scratch in ``OTHER`` (same seed, same torch thread count as the original training), evaluates
the metrics the original has, and prints both side by side. On the same CPU, torch version and
thread count, seeded training and evaluation give the same numbers bit for bit; across CPUs
(vector instruction sets) and torch versions float32 rounding differs, and a training run of a few
hundred steps amplifies that, so the comparison takes a tolerance.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genbench.core.errors import UsageError


@dataclass
class MetricComparison:
    metric: str
    saved: float | None
    regenerated: float | None
    tolerance: float  # relative, on |saved|, with an absolute floor of the same size

    @property
    def difference(self) -> float | None:
        if self.saved is None or self.regenerated is None:
            return None
        return self.regenerated - self.saved

    @property
    def agrees(self) -> bool:
        if self.saved is None or self.regenerated is None:
            return self.saved is None and self.regenerated is None
        return math.isclose(self.regenerated, self.saved, rel_tol=self.tolerance,
                            abs_tol=self.tolerance)


@dataclass
class RerunResult:
    original: Path
    regenerated: Path
    comparisons: list[MetricComparison] = field(default_factory=list)
    caveats: list[str] = field(default_factory=list)  # why exact agreement is not expected

    @property
    def agrees(self) -> bool:
        return all(c.agrees for c in self.comparisons)


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path.parent} has no {path.name}: it is not a genbench run folder "
                         f"({what})") from None
    except json.JSONDecodeError as error:
        raise UsageError(f"{path} is not valid JSON ({error})") from None


def saved_values(run_dir: str | Path) -> dict[str, float | None]:
    """The metric values of ``run_dir/metrics.json``: ``{metric: value}`` (None: not applicable)."""
    document = _read_json(Path(run_dir) / "metrics.json", "train and evaluate it first")
    return {name: (None if entry.get("value") is None else float(entry["value"]))
            for name, entry in document.get("metrics", {}).items()}


def rerun(run_dir: str | Path, out: str | Path, metrics: list[str] | None = None,
          tolerance: float = 1e-6, device: str = "cpu", data_dir: str | None = None,
          allow_download: bool = True, progress: bool = True) -> RerunResult:
    """Train ``run_dir``'s saved spec again into ``out`` and compare ``metrics`` (default: every
    metric the original has) within ``tolerance`` (relative, with the same absolute floor)."""
    import torch

    from genbench.experiments.execute import ExecutionOptions, run_cell
    from genbench.training import RunDir, RunSpec

    original = Path(run_dir)
    config = _read_json(original / "config.json", "no saved spec")
    spec = RunSpec.from_dict(config)
    target = RunDir.for_spec(out, spec).path
    if target.resolve() == original.resolve():
        raise UsageError(f"--out must differ from the folder that holds {original}: the rerun "
                         "would find the original run and skip it")
    saved = saved_values(original)
    names = metrics or [name for name, value in saved.items() if value is not None]
    unknown = [name for name in names if name not in saved]
    if unknown:
        raise UsageError(f"{original} has no saved value for {', '.join(unknown)} "
                         f"(it has: {', '.join(saved) or 'none'})")
    threads = config.get("torch_threads")
    previous = torch.get_num_threads()
    if threads:  # parallel reductions round differently with another thread count
        torch.set_num_threads(int(threads))
    try:
        outcome = run_cell(spec, ExecutionOptions(out=str(out), device=device, data_dir=data_dir,
                                                  allow_download=allow_download, metrics=names,
                                                  progress=progress))
    finally:
        torch.set_num_threads(previous)
    regenerated = saved_values(outcome.run_path)
    comparisons = [MetricComparison(name, saved[name], regenerated.get(name), tolerance)
                   for name in names]
    return RerunResult(original, outcome.run_path, comparisons, _caveats(config))


def _caveats(config: dict[str, Any]) -> list[str]:
    stretches = config.get("thread_history") or []
    if len({stretch["torch_threads"] for stretch in stretches}) < 2:
        return []
    described = ", ".join(f"{stretch['torch_threads']} from step {stretch['from_step']}"
                          for stretch in stretches)
    return [f"the original was resumed with other torch thread counts ({described}) and the "
            f"rerun used {config.get('torch_threads')} throughout: expect agreement within "
            "float32 rounding amplified by training, not bit for bit"]


def comparison_rows(result: RerunResult) -> list[list[str]]:
    def number(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.8g}"

    return [[c.metric, number(c.saved), number(c.regenerated), number(c.difference),
             "yes" if c.agrees else "NO"] for c in result.comparisons]
