"""Settings dataclasses built from plain dicts (JSON): unknown keys are refused by name."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from .errors import ConfigurationError

__all__ = ["checked_fields"]


def checked_fields(cls: type, d: dict[str, Any] | None, what: str) -> dict[str, Any]:
    """A copy of ``d`` after checking that every key is a field of the dataclass ``cls``.

    Raises
    ------
    ConfigurationError
        Naming the unknown keys, ``what`` they were given for, and the known ones.
    """
    d = dict(d or {})
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ConfigurationError(f"Unknown {what} {sorted(unknown)}; known: {sorted(known)}.")
    return d
