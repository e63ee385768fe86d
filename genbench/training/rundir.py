"""A run's folder: the one place that knows its file names and how they are written."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from genbench.core.io import write_json, write_text

STATUS_COMPLETE = "complete"
STATUS_RUNNING = "running"
STATUS_FAILED = "failed"


class RunDir:
    """``<out>/<dataset>/<model>/<run-id>/`` with ``config.json``, ``checkpoint.pt``,
    ``losses.csv``, ``samples.png`` and ``samples/step_XXXXXXX.png``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def for_spec(cls, out: str | Path, spec) -> RunDir:
        return cls(Path(out) / spec.data.dataset / spec.model / spec.run_id)

    config_path = property(lambda self: self.path / "config.json")
    checkpoint_path = property(lambda self: self.path / "checkpoint.pt")
    losses_path = property(lambda self: self.path / "losses.csv")
    samples_path = property(lambda self: self.path / "samples.png")
    samples_dir = property(lambda self: self.path / "samples")
    figures_dir = property(lambda self: self.path / "figures")  # the model's own figures, if any

    def read_config(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.config_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def write_config(self, config: dict[str, Any]) -> None:
        write_json(self.config_path, config)

    def is_complete(self) -> bool:
        config = self.read_config()
        return bool(config) and config.get("status") == STATUS_COMPLETE

    def read_losses(self) -> list[dict[str, str]]:
        if not self.losses_path.is_file():
            return []
        with open(self.losses_path, newline="") as handle:
            return list(csv.DictReader(handle))

    def write_losses(self, columns: list[str], rows: list[dict[str, Any]]) -> None:
        """Rewrite ``losses.csv`` whole (atomically): it stays consistent with the checkpoint."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
        write_text(self.losses_path, buffer.getvalue())
