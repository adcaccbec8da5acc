"""Registries for the extension points (kinetic models, dose engines, twin models, outcome models, exporters,
pipeline stages).

A research site extends TheraTwin without forking by declaring a Python entry point in its own package::

    [project.entry-points."theratwin.dose_engines"]
    my_monte_carlo = "mysite.dose:MonteCarloEngine"

or by calling ``registry.register(name, obj)`` at run time. Built-in implementations register the same way.
Each registry states the protocol its entries implement in its own module (see e.g.
``theratwin.pipeline.Stage``) and checks it on registration, so that a plug-in missing a method is refused with
a message naming it, not when a patient is half processed. ``docs/extending.md`` has a worked example.

Plug-ins are isolated from each other and from the built-ins: an entry point that fails to import, or whose
object does not implement the protocol, is reported once as a :class:`PluginWarning` (and kept in
:attr:`Registry.failed`) and skipped; every other entry still loads.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, TypeVar

from .errors import ConfigurationError, one_line

__all__ = ["Registry", "PluginWarning", "missing_members"]

T = TypeVar("T")

log = logging.getLogger(__name__)


class PluginWarning(UserWarning):
    """An installed plug-in could not be used (it failed to import or does not implement its protocol)."""


def _protocol_members(protocol: type) -> list[str]:
    """The attribute and method names a ``typing.Protocol`` class declares (its own and its bases')."""
    names: list[str] = []
    for cls in protocol.__mro__:
        if cls.__module__ in ("typing", "typing_extensions", "builtins", "abc"):
            continue
        for name in [*getattr(cls, "__annotations__", {}), *vars(cls)]:
            if not name.startswith("_") and name not in names:
                names.append(name)
    return names


def missing_members(obj: object, protocol: type) -> list[str]:
    """Members of ``protocol`` that ``obj`` (an object, or a class instantiated without arguments) lacks.

    A class may declare a data member as an annotation that ``__init__`` fills, so for a class an annotation
    counts as present; a method must be callable.
    """
    missing = []
    annotations: dict[str, Any] = {}
    if isinstance(obj, type):
        for cls in reversed(obj.__mro__):
            annotations.update(getattr(cls, "__annotations__", {}))
    for name in _protocol_members(protocol):
        declared = getattr(protocol, name, None)
        if callable(declared):
            if not callable(getattr(obj, name, None)):
                missing.append(f"{name}()")
        elif not hasattr(obj, name) and name not in annotations:
            missing.append(name)
    return missing


def _registered_by(obj: object) -> str:
    """``"built in"`` for an object defined in TheraTwin, else the module that defines it."""
    module = getattr(obj if isinstance(obj, type) else type(obj), "__module__", "") or "?"
    return "built in" if module.split(".")[0] == "theratwin" else f"registered by {module}"


def _entry_point_origin(ep: EntryPoint) -> str:
    """``plug-in <distribution> <version> (<module:object>)`` for an entry point (its distribution if known)."""
    dist = getattr(ep, "dist", None)  # set by importlib.metadata.entry_points() (Python >= 3.10)
    package = f"{dist.name} {dist.version}" if dist is not None else ep.value.split(":")[0].split(".")[0]
    return f"plug-in {package} ({ep.value})"


class Registry(Generic[T]):
    """A named collection of plug-ins, filled by ``register`` and by the entry-point group ``group``.

    Parameters
    ----------
    group
        Entry-point group read lazily on first lookup, e.g. ``"theratwin.dose_engines"``.
    kind
        What the entries are, for error messages (e.g. ``"dose engine"``).
    protocol
        The ``typing.Protocol`` class the entries implement, or a tuple of alternative protocols (an entry
        implements one of them); ``register`` refuses an entry that lacks a member. None: no check.

    Examples
    --------
    >>> from typing import Protocol
    >>> class Greeter(Protocol):
    ...     def greet(self, who: str) -> str: ...
    >>> class Hello:
    ...     def greet(self, who: str) -> str:
    ...         return f"hello {who}"
    >>> greeters = Registry("theratwin.example_greeters", "greeter", protocol=Greeter)
    >>> greeters.register("hello", Hello())  # doctest: +ELLIPSIS
    <...Hello object at ...>
    >>> greeters.get("HELLO").greet("world")
    'hello world'
    >>> greeters.register("silent", object())
    Traceback (most recent call last):
    ...
    theratwin.errors.ConfigurationError: The greeter 'silent' (builtins.object) does not implement the greeter protocol (...Greeter): it lacks greet().
    """

    def __init__(self, group: str, kind: str, protocol: type | tuple[type, ...] | None = None) -> None:
        self.group = group
        self.kind = kind
        self.protocols: tuple[type, ...] = () if protocol is None else (
            protocol if isinstance(protocol, tuple) else (protocol,))
        self._entries: dict[str, T] = {}
        self._loaded_entry_points = False
        #: Entry points that could not be used: name -> one-line reason.
        self.failed: dict[str, str] = {}
        # name -> where the entry (or the failed entry point) comes from, see ``origin``
        self._origins: dict[str, str] = {}

    def check(self, name: str, obj: object) -> None:
        """Raise :class:`~theratwin.errors.ConfigurationError` when ``obj`` does not implement the protocol."""
        if not self.protocols:
            return
        gaps = [missing_members(obj, protocol) for protocol in self.protocols]
        if all(gaps):
            cls = obj if isinstance(obj, type) else type(obj)
            what = f"{cls.__module__}.{cls.__name__}"
            lacks = " or ".join(
                f"{', '.join(missing)} of {protocol.__module__}.{protocol.__qualname__}"
                for protocol, missing in zip(self.protocols, gaps, strict=True)
            ) if len(gaps) > 1 else ", ".join(gaps[0])
            protocols = " / ".join(f"{p.__module__}.{p.__qualname__}" for p in self.protocols)
            raise ConfigurationError(
                f"The {self.kind} '{name}' ({what}) does not implement the {self.kind} protocol "
                f"({protocols}): it lacks {lacks}."
            )

    def register(self, name: str, obj: T | None = None, *, replace: bool = False) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted.

        Raises
        ------
        ConfigurationError
            ``name`` is taken by another entry (and ``replace`` is False), or ``obj`` does not implement the
            registry's protocol.
        """

        def _do(item: T) -> T:
            key = name.lower()
            if key in self._entries and not replace and self._entries[key] is not item:
                raise ConfigurationError(
                    f"A {self.kind} named '{name}' is already registered; pass replace=True to override it."
                )
            self.check(name, item)
            self._entries[key] = item
            self._origins[key] = _registered_by(item)
            return item

        if obj is None:
            return _do
        return _do(obj)

    def unregister(self, name: str) -> None:
        """Remove an entry (used by tests that register temporary plug-ins)."""
        self._entries.pop(name.lower(), None)
        self._origins.pop(name.lower(), None)

    def _load_entry_points(self) -> None:
        if self._loaded_entry_points:
            return
        self._loaded_entry_points = True
        for ep in entry_points(group=self.group):
            if ep.name.lower() in self._entries:
                continue
            self._origins[ep.name.lower()] = _entry_point_origin(ep)
            try:
                obj = ep.load()
                self.check(ep.name, obj)
            except Exception as exc:  # any error of a third-party package: it must not break the built-ins
                reason = one_line(f"{type(exc).__name__}: {exc}").rstrip(".")
                self.failed[ep.name.lower()] = reason
                message = (f"The {self.kind} plug-in '{ep.name}' ({ep.value}, entry-point group '{self.group}') "
                           f"was skipped: {reason}. Fix or uninstall the package that provides it.")
                log.warning(message)
                warnings.warn(message, PluginWarning, stacklevel=3)
                continue
            self._entries[ep.name.lower()] = obj

    def get(self, name: str) -> T:
        """Return the entry called ``name`` (case-insensitive)."""
        self._load_entry_points()
        try:
            return self._entries[name.lower()]
        except KeyError:
            broken = self.failed.get(name.lower())
            if broken is not None:
                raise ConfigurationError(
                    f"The {self.kind} '{name}' is installed but could not be used: {broken}."
                ) from None
            raise ConfigurationError(
                f"Unknown {self.kind} '{name}'. Available: {', '.join(sorted(self._entries)) or 'none'}."
            ) from None

    def origin(self, name: str) -> str:
        """Where the entry (or the plug-in that failed to load) called ``name`` comes from.

        Returns
        -------
        str
            ``"built in"`` for TheraTwin's own entries; ``"plug-in <distribution> <version> (<module:object>)"``
            for an entry point; ``"registered by <module>"`` for an entry registered at run time by other code.

        Raises
        ------
        ConfigurationError
            No entry and no failed plug-in has this name.
        """
        self._load_entry_points()
        try:
            return self._origins[name.lower()]
        except KeyError:
            raise ConfigurationError(f"Unknown {self.kind} '{name}'.") from None

    def names(self) -> list[str]:
        """Names of all entries, built-in and plug-in."""
        self._load_entry_points()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_entry_points()
        return isinstance(name, str) and name.lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
