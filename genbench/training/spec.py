"""The typed description of one run. Its content hash is the run id; its JSON is ``config.json``."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from genbench.core.errors import UsageError
from genbench.core.io import json_digest
from genbench.models.base import coerce

BUDGETS = ("smoke", "standard", "paper")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "mnist"
    image_size: int | None = None  # None: the dataset's native size
    limit: int | None = None  # first N training images


@dataclass(frozen=True)
class TrainConfig:
    """Harness settings. ``steps`` is the number of batches: every model at a budget sees
    ``steps * batch_size`` training images."""

    steps: int = 1000
    batch_size: int = 64
    log_every: int = 10  # rows of losses.csv: the mean over each interval of this many steps
    checkpoint_every: int = 500
    sample_every: int = 500
    grid_size: int = 64  # images in samples.png
    grid_seed: int = 1234  # latents of the sample grids, the same at every interval

    def validate(self) -> None:
        for name in ("steps", "batch_size", "log_every", "checkpoint_every", "sample_every", "grid_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.checkpoint_every % self.log_every:
            raise UsageError(
                f"checkpoint_every ({self.checkpoint_every}) must be a multiple of "
                f"log_every ({self.log_every})"
            )

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def with_overrides(self, values: dict[str, Any]) -> TrainConfig:
        hints = typing.get_type_hints(type(self))
        changes = {key: coerce(value, hints[key], key) for key, value in values.items()}
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class RunSpec:
    """Everything a run's numbers depend on. Device and paths are not part of it."""

    model: str
    model_config: dict[str, Any]
    data: DataConfig
    train: TrainConfig
    budget: str
    seed: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunSpec:
        return cls(
            model=values["model"],
            model_config=dict(values["model_config"]),
            data=DataConfig(**values["data"]),
            train=TrainConfig(**values["train"]),
            budget=values["budget"],
            seed=int(values["seed"]),
            extra=dict(values.get("extra", {})),
        )

    @property
    def run_id(self) -> str:
        """``<budget>-seed<seed>-<hash>``: readable, and unique for the full spec (less options
        added to a model later that hold their default: see ``OMIT_FROM_RUN_ID_AT_DEFAULT``)."""
        identity = self.to_dict()
        identity["model_config"] = _model_config_identity(self.model, self.model_config)
        return f"{self.budget}-seed{self.seed}-{json_digest(identity, 10)}"


def _model_config_identity(model: str, values: dict[str, Any]) -> dict[str, Any]:
    from genbench.models.registry import registered_config_class

    config_class = registered_config_class(model)
    return dict(values) if config_class is None else config_class.identity(values)
