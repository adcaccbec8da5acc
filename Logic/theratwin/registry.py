"""Registries for the extension points (kinetic models, dose engines, twin models, outcome models, exporters,
pipeline stages).

A research site extends TheraTwin without forking by declaring a Python entry point in its own package::

    [project.entry-points."theratwin.dose_engines"]
    my_monte_carlo = "mysite.dose:MonteCarloEngine"

or by calling ``registry.register(name, obj)`` at run time. Built-in implementations register the same way.
Each registry states the protocol its entries implement in its own module (see e.g.
``theratwin.pipeline.Stage``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from .errors import ConfigurationError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of plug-ins, filled by ``register`` and by the entry-point group ``group``.

    Parameters
    ----------
    group
        Entry-point group read lazily on first lookup, e.g. ``"theratwin.dose_engines"``.
    kind
        What the entries are, for error messages (e.g. ``"dose engine"``).
    """

    def __init__(self, group: str, kind: str) -> None:
        self.group = group
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._loaded_entry_points = False

    def register(self, name: str, obj: T | None = None, *, replace: bool = False) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""

        def _do(item: T) -> T:
            key = name.lower()
            if key in self._entries and not replace and self._entries[key] is not item:
                raise ConfigurationError(
                    f"A {self.kind} named '{name}' is already registered; pass replace=True to override it."
                )
            self._entries[key] = item
            return item

        if obj is None:
            return _do
        return _do(obj)

    def unregister(self, name: str) -> None:
        """Remove an entry (used by tests that register temporary plug-ins)."""
        self._entries.pop(name.lower(), None)

    def _load_entry_points(self) -> None:
        if self._loaded_entry_points:
            return
        self._loaded_entry_points = True
        for ep in entry_points(group=self.group):
            if ep.name.lower() in self._entries:
                continue
            try:
                self._entries[ep.name.lower()] = ep.load()
            except Exception as exc:  # a broken plug-in must not break the built-ins
                raise ConfigurationError(
                    f"The {self.kind} plug-in '{ep.name}' ({ep.value}) of entry-point group '{self.group}' "
                    f"failed to load: {exc}. Fix or uninstall the package that provides it."
                ) from exc

    def get(self, name: str) -> T:
        """Return the entry called ``name`` (case-insensitive)."""
        self._load_entry_points()
        try:
            return self._entries[name.lower()]
        except KeyError:
            raise ConfigurationError(
                f"Unknown {self.kind} '{name}'. Available: {', '.join(sorted(self._entries)) or 'none'}."
            ) from None

    def names(self) -> list[str]:
        """Names of all entries, built-in and plug-in."""
        self._load_entry_points()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_entry_points()
        return isinstance(name, str) and name.lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
