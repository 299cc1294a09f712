"""One registry mechanism for everything chosen by name: image backbones, temporal heads, face detectors,
depth architectures, dataset adapters and mini presets (timm's `register_model`/`create_model`/
`list_models`, as one small class).

A `Registry` is a dict from name to entry, so it reads like one; `register` adds a function under its
own name (as a decorator) or any entry under a given name, `entry` says what exists when a name is unknown.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Registry(dict[str, T]):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, entry: T, name: str | None = None) -> T:
        """Add `entry` under `name` (default: its `__name__`); usable as a decorator. Returns the entry."""
        name = name or getattr(entry, "__name__", None)
        if not name:
            raise ValueError(f"a {self.kind} needs a name to be registered")
        if name in self:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self[name] = entry
        return entry

    def named(self, name: str) -> Callable[[T], T]:
        """Decorator registering the decorated entry under `name`."""
        return lambda entry: self.register(entry, name)

    def entry(self, name: str) -> T:
        """The entry `name`; an unknown name raises with the known ones (dict.get stays the dict's own)."""
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; choose from {', '.join(self.names())}")
        return self[name]

    def names(self) -> list[str]:
        return sorted(self)
