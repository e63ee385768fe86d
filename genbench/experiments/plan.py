"""From user input to run specs: ``--set`` overrides, seed lists and sweep specs.

Everything here validates before anything trains: a sweep with a typo fails in milliseconds, not
after its first cell.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from genbench.core.errors import UsageError
from genbench.core.registry import closest


def _one_line(text: str) -> str:
    """``text`` as typed, or escaped (``\\n``, ``\\x1e``) when it holds a line break or another
    unprintable character: error messages stay on one line."""
    return text if text.isprintable() else repr(text)[1:-1]


def split_list(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


MAX_SEEDS = 1000


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or a range ``"0:3"`` (0, 1, 2) into distinct integers in ``0..2**32-1``
    (numpy's seed range), at most :data:`MAX_SEEDS` of them, in order."""
    text = text.strip()
    shown = _one_line(text)
    try:
        if re.fullmatch(r"\d+:\d+", text):
            start, stop = (int(p) for p in text.split(":"))
            if stop - start > MAX_SEEDS:
                raise UsageError(f"--seeds: more than {MAX_SEEDS} seeds in '{shown}'")
            seeds = list(range(start, stop))
        else:
            seeds = [int(s) for s in split_list(text)]
    except ValueError:  # not an integer, or one of more than 4300 digits
        raise UsageError("--seeds expects comma-separated integers or a range like 0:3, "
                         f"got '{shown}'") from None
    if not seeds:
        raise UsageError(f"--seeds: no seed in '{shown}'")
    if any(s < 0 for s in seeds):
        raise UsageError(f"--seeds: seeds must be >= 0, got '{shown}'")
    if any(s >= 2**32 for s in seeds):
        raise UsageError(f"--seeds: seeds must be below 2**32 = {2**32}, got '{shown}'")
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds: a seed is repeated in '{shown}'")
    return seeds


def parse_overrides(pairs: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``("latent_dim=500", "gvae.dropout=0.2")`` into a dict; a key given twice is an error."""
    overrides: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--set expects key=value, got '{_one_line(pair)}'")
        if key in overrides:
            raise UsageError(f"--set {_one_line(key)} is given twice")
        overrides[key] = value.strip()
    return overrides


@dataclass(frozen=True)
class SweepAxis:
    """One swept key and its values as typed, e.g. ``latent_dim`` = (100, 500, 1000)."""

    key: str
    values: tuple[str, ...]  # as written (or expanded from a range); typed per model later

    @property
    def bare_key(self) -> str:
        return self.key.rpartition(".")[2]


_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_INTEGER = r"[-+]?\d+"


def _expand_range(text: str, key: str) -> list[str]:
    """``start:stop:xF`` (geometric, factor F) or ``start:stop:+S`` / ``start:stop:S``
    (arithmetic, step S): every value from start up to stop inclusive. Integers are computed
    exactly; floats get a relative tolerance of 1e-9 at the stop (so 0.1:0.3:+0.1 ends at 0.3)."""
    shown = f"sweep {key}={_one_line(text)}"
    match = re.fullmatch(rf"({_NUMBER}):({_NUMBER}):(x|\*|\+)?({_NUMBER})", text)
    if not match:
        raise UsageError(f"{shown}: a range is start:stop:xFACTOR or start:stop:+STEP, "
                         "e.g. 100:1000:x10 or 0.1:0.5:+0.1")
    start_s, stop_s, kind, step_s = match.groups()
    start, stop, step = float(start_s), float(stop_s), float(step_s)
    for number, written in ((start, start_s), (stop, stop_s), (step, step_s)):
        if not math.isfinite(number):
            raise UsageError(f"{shown}: {written} is not a finite number")
    whole = [bool(re.fullmatch(_INTEGER, s)) for s in (start_s, stop_s, step_s)]
    geometric = kind in ("x", "*")
    integer = whole[0] and whole[1] and (geometric or whole[2])
    if geometric and (step <= 1 or start <= 0):
        raise UsageError(f"{shown}: a geometric range needs start > 0 and factor > 1")
    if not geometric and step <= 0:
        raise UsageError(f"{shown}: the step must be positive")
    if stop < start:
        raise UsageError(f"{shown}: stop is below start")
    tolerance = 1e-9 * max(abs(start), abs(stop), 1.0)
    if all(whole):  # exact integer arithmetic, however large the numbers
        start, stop, step, tolerance = int(start_s), int(stop_s), int(step_s), 0
    values, value = [], start
    while value <= stop + tolerance:
        if len(values) == 1000:
            raise UsageError(f"{shown}: more than 1000 values")
        values.append(min(value, stop))  # past stop only within the tolerance: stop itself
        if values[-1] == stop:
            break
        try:
            value = start * step ** len(values) if geometric else start + step * len(values)
        except OverflowError:  # a float power beyond 1e308: past any finite stop
            break
    if integer:  # rounded when the factor is not whole, e.g. 100:1000:x1.5
        return [str(min(int(round(v)), int(stop_s))) for v in values]
    return [repr(min(float(f"{v:.12g}"), stop)) for v in values]


def parse_sweep_spec(text: str) -> SweepAxis:
    """``key=v1,v2,...`` or ``key=start:stop:xF`` into a :class:`SweepAxis` (untyped values)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep:
        raise UsageError(f"sweep spec '{_one_line(text)}' has no '=': write key=v1,v2,... "
                         "e.g. latent_dim=100,500,1000")
    if not key or not re.fullmatch(r"[A-Za-z_][\w-]*(\.[A-Za-z_]\w*)?", key):
        raise UsageError(f"sweep spec '{_one_line(text)}': '{_one_line(key)}' is not a config key; "
                         "write key=v1,v2,...")
    parts = [p.strip() for p in raw.split(",")]
    if not raw.strip() or any(not p for p in parts):
        raise UsageError(f"sweep spec '{_one_line(text)}': empty value; write {key}=v1,v2,...")
    values: list[str] = []
    for part in parts:
        values.extend(_expand_range(part, key) if part.count(":") == 2 else [part])
    duplicates = sorted(v for v, count in Counter(values).items() if count > 1)
    if duplicates:
        raise UsageError(f"sweep spec '{_one_line(text)}': value {_one_line(duplicates[0])} is given twice")
    return SweepAxis(key, tuple(values))


def parse_sweep_specs(texts: list[str] | tuple[str, ...]) -> list[SweepAxis]:
    if not texts:
        raise UsageError("sweep needs at least one spec, e.g. "
                         "genbench sweep latent_dim=100,500,1000 --models gvae")
    axes = [parse_sweep_spec(t) for t in texts]
    keys = [a.key for a in axes]
    for key in keys:
        if keys.count(key) > 1:
            raise UsageError(f"sweep key '{key}' is given twice; list all its values in one spec")
    return axes


def check_sweep_keys(axes: list[SweepAxis], models: list[str], overrides: dict[str, str]) -> None:
    """Every unscoped swept key must exist for every model of the sweep (or be a harness
    setting); a scoped ``model.key`` must name a swept model and one of its keys."""
    from genbench.models import get_model_class
    from genbench.training.spec import TrainConfig

    train_keys = TrainConfig.field_names()
    for axis in axes:
        if axis.key in overrides:
            raise UsageError(f"'{axis.key}' is both swept and set with --set; drop one")
        scope, dot, bare = axis.key.rpartition(".")
        targets = [scope] if dot else models
        if dot and scope not in models:
            raise UsageError(f"sweep {axis.key}: '{scope}' is not one of the models swept "
                             f"({', '.join(models)})")
        if bare in train_keys and not dot:
            continue
        for model in targets:
            fields = get_model_class(model).config_class.field_names()
            if bare in fields:
                continue
            hint = closest(bare, fields + train_keys) or f"; its keys: {', '.join(fields + train_keys)}"
            owners = [m for m in models if bare in get_model_class(m).config_class.field_names()]
            if owners and not dot:
                hint += f"; to sweep it for {owners[0]} only, write {owners[0]}.{bare}=..."
            raise UsageError(f"sweep key '{bare}' is not a config key of model '{model}'{hint}")


def build_specs(models, dataset, budget, seeds, overrides, image_size=None, limit=None):
    """One :class:`RunSpec` per model and seed, with typed, validated overrides.

    A key applies to every model whose config has it (``model.key`` scopes it to one model) and
    to the harness settings (``steps``, ``batch_size``...). A key that nothing has is an error.
    """
    from genbench.data import get_dataset
    from genbench.data.loading import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
    from genbench.models import get_model_class
    from genbench.training import DataConfig, RunSpec
    from genbench.training.budgets import train_config_for

    info = get_dataset(dataset)
    classes = {name: get_model_class(name) for name in models}
    train_base = train_config_for(budget)
    train_keys = set(train_base.field_names())
    known = set(train_keys)
    for name, cls in classes.items():
        known |= set(cls.config_class.field_names())
        known |= {f"{name}.{key}" for key in cls.config_class.field_names()}
    for key in overrides:
        scope, dot, _ = key.rpartition(".")
        if dot and scope not in classes:
            raise UsageError(f"--set {_one_line(key)}: '{_one_line(scope)}' is not one of the models run "
                             f"({', '.join(models)})")
        if key not in known:
            raise UsageError(f"--set: unknown config key '{_one_line(key)}'{closest(key, sorted(known))}")

    train = train_base.with_overrides({k: v for k, v in overrides.items() if k in train_keys})
    train.validate()
    if image_size is not None and not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise UsageError(f"--image-size {image_size} is outside {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE}")
    size = image_size or info.native_size
    image_shape = (info.channels, size, size)
    specs = []
    for name, cls in classes.items():
        fields = set(cls.config_class.field_names())
        mine = {k: v for k, v in overrides.items() if k in fields}
        mine |= {k.split(".", 1)[1]: v for k, v in overrides.items() if k.startswith(f"{name}.")}
        config = cls.config_class().with_overrides(mine)
        config.check(image_shape)
        for seed in seeds:
            specs.append(RunSpec(
                model=name, model_config=config.to_dict(),
                data=DataConfig(dataset=dataset, image_size=image_size, limit=limit),
                train=train, budget=budget, seed=seed,
            ))
    return specs


@dataclass(frozen=True)
class SweepCell:
    spec: Any  # RunSpec
    values: dict[str, Any]  # the swept keys (bare) and this cell's typed values


def plan_sweep(axes: list[SweepAxis], models: list[str], dataset: str, budget: str,
               seeds: list[int], overrides: dict[str, str] | None = None,
               image_size: int | None = None, limit: int | None = None) -> list[SweepCell]:
    """The cartesian product of the axes' values, times models, times seeds: one cell each,
    all validated (types, ranges) before returning. Cells of a model are ordered by value, then
    seed, so an interrupted sweep has finished whole settings first."""
    overrides = dict(overrides or {})
    check_sweep_keys(axes, models, overrides)
    cells: list[SweepCell] = []
    seen: set[str] = set()
    for combination in itertools.product(*(axis.values for axis in axes)):
        chosen = {axis.key: value for axis, value in zip(axes, combination)}
        for model in models:
            mine = {k: v for k, v in chosen.items() if "." not in k or k.startswith(f"{model}.")}
            try:
                specs = build_specs([model], dataset, budget, seeds, overrides | mine, image_size, limit)
            except UsageError as error:
                raise UsageError(f"sweep {model}: {error}") from None
            for spec in specs:
                if spec.run_id in seen:  # a value scoped to another model: same run
                    continue
                seen.add(spec.run_id)
                typed = {}
                for axis in axes:
                    bare = axis.bare_key
                    source = spec.model_config if bare in spec.model_config else spec.train.__dict__
                    typed[bare] = source.get(bare)
                cells.append(SweepCell(spec, typed))
    return cells
