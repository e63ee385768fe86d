"""The model registry: ``@register_model("name")`` in each model's file, plus entry points.

Third-party packages add models without editing genbench by declaring an entry point in the
``genbench.models`` group whose object is a model class (it may also register itself)::

    [project.entry-points."genbench.models"]
    mymodel = "mypackage.models:MyModel"
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

from genbench.core.registry import Registry

MODELS: Registry[type] = Registry("model")
ENTRY_POINT_GROUP = "genbench.models"
_plugins_loaded = False


def register_model(name: str):
    """Class decorator: register a model class under ``name`` (twice is an error)."""

    def decorator(cls):
        cls.name = name
        MODELS.add(name, cls)
        return cls

    return decorator


def load_plugins() -> None:
    """Import the models that other installed packages declare as entry points (once)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in MODELS:
            continue
        try:
            cls = entry.load()
        except Exception as error:  # a broken plugin must not break genbench itself
            print(f"genbench: could not load model plugin '{entry.name}': {error}", file=sys.stderr)
            continue
        if entry.name not in MODELS:
            cls.name = getattr(cls, "name", "") or entry.name
            MODELS.add(entry.name, cls)


def get_model_class(name: str) -> type:
    load_plugins()
    return MODELS.get(name)


def registered_config_class(name: str) -> type | None:
    """The config dataclass of model ``name``, or None when no such model is registered here (a
    saved run of a plugin that is not installed)."""
    load_plugins()
    return MODELS.get(name).config_class if name in MODELS else None


def model_names() -> list[str]:
    load_plugins()
    return MODELS.names()
