"""Named parts that modules register when they are imported: methods, trainers, benchmarks.

Each kind of part lives in a package, one module per part; a `Registry` imports every module of
its package (and those other packages declare under its entry-point group) the first time it is
asked, so nothing depends on which module happened to be imported first.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Parts by name. `package`: where their modules live; `skip`: its modules that hold no part;
    `entry_points`: the entry-point group through which other packages add parts (None: none)."""

    def __init__(self, package: str, skip: tuple[str, ...] = (), entry_points: str | None = None):
        self.package, self.skip, self.entry_points = package, skip, entry_points
        self.items: dict[str, T] = {}
        self._discovered = False

    def register(self, name: str, part: T) -> T:
        self.items[name] = part
        return part

    def all(self) -> dict[str, T]:
        """Every part by name, after importing the modules that register them (once)."""
        if not self._discovered:
            self._discovered = True
            package = importlib.import_module(self.package)
            for info in pkgutil.iter_modules(package.__path__):
                if info.name not in self.skip and not info.name.startswith("_"):
                    importlib.import_module(f"{self.package}.{info.name}")
            if self.entry_points:
                from importlib.metadata import entry_points

                for entry in entry_points(group=self.entry_points):
                    entry.load()
        return self.items
