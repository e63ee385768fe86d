"""What every genbench model is: a typed config, networks, optimizers and one training step.

A model file defines a config dataclass and a :class:`GenerativeModel` subclass registered with
``@register_model("name")``. The harness owns the loop (device, mixed precision, checkpoints,
logging); the model owns what happens inside one step, so GANs with several optimizers and critic
steps need no special cases in the loop.

Latent-variable models also expose the likelihood protocol the metrics build on
(:class:`genbench.metrics.protocol.LikelihoodModel`): ``prior()``, ``observation_model(z)`` and,
with an encoder, ``approximate_posterior(x)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import typing
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from genbench.core.errors import UsageError
from genbench.core.registry import closest

# Field metadata for an option added to a model after runs of it were published: at its default
# the field stays out of the run id (RunSpec.run_id), so those runs keep their folder names and
# `genbench run` still finds them; any other value is part of the id as usual.
OMIT_FROM_RUN_ID_AT_DEFAULT = {"run_id": "omit at default"}


@dataclasses.dataclass
class ModelConfig:
    """Base of every model config. Subclasses add typed fields with defaults and ``validate``."""

    def validate(self, image_shape: tuple[int, int, int]) -> None:
        """Raise :class:`UsageError` naming the field and a valid value when the config is wrong.

        Models check their own fields here; :meth:`check` runs the rules every model shares
        first, so a model cannot forget them."""

    def check(self, image_shape: tuple[int, int, int]) -> None:
        """The shared rules for conventionally named fields, then the model's :meth:`validate`."""
        for name in self.field_names():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            rule = _shared_rule(name)
            if rule is not None and not rule[0](value):
                raise UsageError(f"{name} must be {rule[1]}, got {value}")
        self.validate(image_shape)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def later_defaults(cls) -> dict[str, Any]:
        """The fields marked :data:`OMIT_FROM_RUN_ID_AT_DEFAULT`, with their defaults."""
        return {f.name: f.default for f in dataclasses.fields(cls)
                if f.metadata == OMIT_FROM_RUN_ID_AT_DEFAULT}

    @classmethod
    def identity(cls, values: dict[str, Any]) -> dict[str, Any]:
        """``values`` (a saved ``model_config``) less the fields added later that hold their
        default: what the run id hashes."""
        later = cls.later_defaults()
        return {key: value for key, value in values.items()
                if not (key in later and value == later[key])}

    @classmethod
    def completed(cls, values: dict[str, Any]) -> dict[str, Any]:
        """``values`` with the fields added later filled in at their defaults: a config saved
        before a field existed ran with what is now its default."""
        return cls.later_defaults() | values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Build from a saved ``config.json`` or overrides; values are coerced to the field types."""
        return cls().with_overrides(values)

    def with_overrides(self, values: dict[str, Any]) -> ModelConfig:
        hints = typing.get_type_hints(type(self))
        names = self.field_names()
        changes = {}
        for key, raw in values.items():
            if key not in names:
                raise UsageError(
                    f"unknown config key {key!r} for {type(self).__name__}{closest(key, names)}"
                )
            changes[key] = coerce(raw, hints[key], key)
        return dataclasses.replace(self, **changes)


INT_RANGE = range(-(2**63), 2**63)  # what a tensor, a seed or a JSON reader takes


def _shared_rule(name: str):
    """(predicate, wording) for field names whose meaning every model shares."""
    if name in ("beta1", "beta2"):  # Adam's moment decay rates
        return (lambda v: 0 <= v < 1), "in [0, 1)"
    if name == "dropout":
        return (lambda v: 0 <= v < 1), "in [0, 1)"
    if name == "latent_dim" or name.endswith("_width") or name.endswith("_steps"):
        return (lambda v: v >= 1), ">= 1"
    if name == "learning_rate":
        return (lambda v: v > 0), "> 0"
    if name.endswith("_weight"):
        return (lambda v: v >= 0), ">= 0"
    return None


def coerce(raw: Any, annotation: Any, key: str) -> Any:
    """Convert a CLI string (or a JSON value) to ``annotation``; fail with a one-line message.

    Floats must be finite and ints must fit in 64 bits: ``nan``, ``1e400`` or
    ``99999999999999999999`` are usage errors here, before any model's ``validate`` compares them.
    """
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union or (origin is not None and type(None) in args):
        if raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null")):
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(raw, inner[0], key)
    if origin is Literal:
        value = raw if not isinstance(raw, str) else _literal_from_str(raw, args)
        if value not in args:
            choices = ", ".join(map(str, args))
            raise UsageError(f"{key}={raw!r} is not one of: {choices}")
        return value
    if origin is tuple:
        items = raw.split(",") if isinstance(raw, str) else list(raw)
        return tuple(coerce(item, args[0], key) for item in items)
    try:
        if annotation is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if annotation is int:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError(raw)
            value = int(raw)
            if value not in INT_RANGE:
                raise UsageError(f"{key}={raw!r} is out of range: a 64-bit integer is at most {2**63 - 1}")
            return value
        if annotation is float:
            value = float(raw)
            if not math.isfinite(value):
                raise UsageError(f"{key}={raw!r} is not a finite number")
            return value
        if annotation is str:
            return str(raw)
    except (ValueError, TypeError):  # TypeError: a JSON list or null where a number belongs
        raise UsageError(f"{key}={raw!r} is not a valid {annotation.__name__}") from None
    return raw


def _literal_from_str(raw: str, choices: tuple) -> Any:
    for choice in choices:
        if str(choice) == raw:
            return choice
    return raw


def require(condition: bool, message: str) -> None:
    """Config validation helper: raise a usage error unless ``condition`` holds."""
    if not condition:
        raise UsageError(message)


class StepContext:
    """What the harness lends a model for one training step: device, autocast and scaled backward.

    On CUDA with mixed precision, losses are scaled by one ``GradScaler`` shared by all of the
    model's optimizers (the harness calls ``scaler.update()`` once per step); elsewhere the calls
    are plain ``backward`` and ``optimizer.step``.
    """

    def __init__(self, device: torch.device, scaler: torch.amp.GradScaler | None = None,
                 ranks=None):
        self.device = device
        self.scaler = scaler
        self.ranks = ranks  # data-parallel ranks (genbench.training.distributed.Ranks) or None

    @property
    def amp(self) -> bool:
        return self.scaler is not None and self.scaler.is_enabled()

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp:
            return torch.autocast(device_type=self.device.type, dtype=torch.float16)
        return contextlib.nullcontext()

    def full_precision(self) -> contextlib.AbstractContextManager:
        """Turn autocast off for a block (gradient penalties, log-probabilities)."""
        if self.amp:
            return torch.autocast(device_type=self.device.type, enabled=False)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, inputs=None, retain_graph: bool = False) -> None:
        if self.amp:
            loss = self.scaler.scale(loss)
        loss.backward(inputs=list(inputs) if inputs is not None else None, retain_graph=retain_graph)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()``; with several data-parallel ranks, the gradients of its parameters
        are averaged over the ranks first."""
        if self.ranks is not None and self.ranks.distributed:
            from genbench.training.distributed import average_gradients

            average_gradients([p for g in optimizer.param_groups for p in g["params"]], self.ranks)
        if self.amp:
            self.scaler.step(optimizer)
        else:
            optimizer.step()


def as_class_labels(labels, n: int, num_classes: int, device) -> torch.Tensor:
    """Class labels as int64 ``[n]`` on ``device``; a one-line :class:`UsageError` when they do
    not fit (not one per image, or a class outside ``0..num_classes-1``). Shared by the
    class-conditional models."""
    labels = torch.as_tensor(labels).to(device).long().reshape(-1)
    if labels.numel() != n:
        raise UsageError(f"labels must have one entry per image: got {labels.numel()} for {n}")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise UsageError(f"labels must be in 0..{num_classes - 1}, got "
                         f"{int(labels.min())}..{int(labels.max())}; set num_classes to the "
                         "dataset's number of classes (--set num_classes=...)")
    return labels


def evaluating(method: Callable) -> Callable:
    """Run a method with the model in eval mode (batch norm, dropout), restoring the mode after."""

    @functools.wraps(method)
    def wrapper(self: nn.Module, *args, **kwargs):
        was_training = self.training
        self.train(False)
        try:
            return method(self, *args, **kwargs)
        finally:
            self.train(was_training)

    return wrapper


class GenerativeModel(nn.Module):
    """Base class of the reference models (user models need only the protocols, not this class).

    Subclasses set ``config_class`` and ``loss_names`` and implement :meth:`train_step`
    and :meth:`sample`. Networks are submodules; optimizers are built by :meth:`build_optimizers`
    after the model is on its device.
    """

    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    loss_names: ClassVar[tuple[str, ...]] = ()
    # False for models fitted in closed form from streamed sums (ppca): no data-parallel training.
    trains_by_gradient: ClassVar[bool] = True
    # Class-conditional models: the harness calls ``train_step(batch, step, ctx, labels=[B])``
    # with int64 labels, and ``sample(n, generator)`` must draw labels itself (uniformly), so every
    # sample-based metric works unchanged; ``num_classes`` comes from the dataset.
    conditional: ClassVar[bool] = False
    name: ClassVar[str] = ""

    def __init__(self, config: ModelConfig, image_shape: tuple[int, int, int]):
        super().__init__()
        config.check(image_shape)
        self.config = config
        self.image_shape = tuple(image_shape)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    @classmethod
    def description(cls) -> str:
        """The docstring's first sentence, on one line (for ``genbench list models``)."""
        paragraph = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
        end = paragraph.find(". ")
        return paragraph if end < 0 else paragraph[: end + 1]

    @property
    def device(self) -> torch.device:
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Create ``self.optimizers`` (name → optimizer); called once the model is on its device."""
        return {}

    def train_step(self, batch: torch.Tensor, step: int, ctx: StepContext) -> dict[str, float]:
        """One update on ``batch`` (``[B, C, H, W]`` in ``[-1, 1]``); returns losses by name."""
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` new images ``[n, C, H, W]`` in ``[-1, 1]``, drawn with ``generator`` if given."""
        raise NotImplementedError

    def optimizer_state(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])

    def randn(self, *shape: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Standard normal noise on the model's device; with a CPU ``generator`` drawn on the CPU
        and moved, so a seeded grid looks the same on every device."""
        if generator is not None:
            return torch.randn(*shape, generator=generator).to(self.device)
        return torch.randn(*shape, device=self.device)


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    for parameter in module.parameters():
        parameter.requires_grad_(flag)
