"""Settings dataclasses built from plain dicts (JSON): unknown keys are refused by name."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from .errors import ConfigurationError
from .options import unknown_keys_message

__all__ = ["checked_fields"]


def checked_fields(cls: type, d: dict[str, Any] | None, what: str) -> dict[str, Any]:
    """A copy of ``d`` after checking that every key is a field of the dataclass ``cls``.

    The stages' options go through :func:`theratwin.options.parse_options`, which also checks the values; this
    checks the keys of settings that convert their values themselves (``ReadOptions``, ``PlausibilityConfig``),
    with the same message.

    Raises
    ------
    ConfigurationError
        Naming the unknown keys, ``what`` they were given for, the known ones and the nearest.
    """
    d = dict(d or {})
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ConfigurationError(unknown_keys_message(what, unknown, known))
    return d
