"""A name → object registry with helpful errors (the timm pattern)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from genbench.core.errors import UsageError

T = TypeVar("T")


def closest(name: str, choices: list[str]) -> str:
    """``"; did you mean 'x'?"`` when a close choice exists, else an empty string."""
    match = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else ""


class Registry(Generic[T]):
    """Holds named entries of one kind (models, datasets, metrics)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._entries[name] = obj

    def get(self, name: str) -> T:
        if name not in self._entries:
            known = ", ".join(sorted(self._entries))
            raise UsageError(
                f"unknown {self.kind} '{name}'{closest(name, list(self._entries))} "
                f"(known: {known})"
            )
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
