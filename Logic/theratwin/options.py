"""Stage options: one way to turn ``PipelineConfig.stage_options[stage]`` (plain JSON) into a checked dataclass.

Every pipeline stage declares its options as a frozen dataclass, the stage's ``Options`` attribute, and reads
them with :func:`parse_options`; so do plug-in stages (``docs/extending.md``). The function

* refuses unknown keys, naming the stage, the key, the known keys and the nearest known name
  (``Unknown kinetics options ['sytem_fwhm_mm'] (did you mean 'system_fwhm_mm'?); known: ...``);
* checks every value against the field's annotation -- ``bool``, ``int``, ``float``, ``str``, ``X | None``,
  ``Literal[...]`` choices, ``tuple[X, ...]``, ``list[X]``, ``dict[str, X]`` -- and converts what JSON cannot
  say (lists become tuples where a tuple is declared, an int is a valid float, an integral float a valid int);
* lets the dataclass's ``__post_init__`` check values that depend on each other or on a registry, and puts the
  stage's name in front of its message.

Defaults stay where they are documented: in the dataclass.
"""

from __future__ import annotations

import difflib
import numbers
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import fields, is_dataclass
from typing import Any, Literal, TypeVar, Union

import numpy as np

from .errors import ConfigurationError

__all__ = ["parse_options", "suggest", "unknown_keys_message"]

T = TypeVar("T")


class _Invalid(Exception):
    """A value does not match its annotation (turned into a ConfigurationError naming the option)."""


def suggest(name: str, known: Iterable[str]) -> str | None:
    """The known name closest to ``name`` (difflib ratio >= 0.6, else a known name containing it), or None."""
    known = list(known)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return close[0]
    lowered = name.lower()
    containing = [k for k in known if lowered and (lowered in k.lower() or k.lower() in lowered)]
    return containing[0] if len(containing) == 1 else None


def unknown_keys_message(what: str, unknown: Iterable[str], known: Iterable[str]) -> str:
    """``Unknown <what> ['x'] (did you mean 'y'?); known: a, b.`` -- one line, the keys sorted."""
    unknown, known = sorted(unknown), sorted(known)
    hints = [f"'{u}' -> '{s}'" if len(unknown) > 1 else f"'{s}'"
             for u in unknown if (s := suggest(u, known)) is not None]
    hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
    return f"Unknown {what} {unknown}{hint}; known: {', '.join(known) or 'none'}."


def parse_options(cls: type[T], mapping: Mapping[str, Any] | None, *, stage: str) -> T:
    """Build the options dataclass ``cls`` of ``stage`` from a plain mapping (JSON), checking every key and value.

    Parameters
    ----------
    cls
        A dataclass whose fields are the options, with their defaults and type annotations.
    mapping
        ``{option: value}`` as given (``PipelineConfig.stage_options[stage]``); None or empty: all defaults.
    stage
        The stage's name, put into every message.

    Returns
    -------
    cls
        The options.

    Raises
    ------
    ConfigurationError
        On an unknown key (with the known ones and a suggestion), a value of the wrong type or out of its
        choices, or a value the dataclass refuses; one line naming ``stage_options['<stage>']``.

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Options:
    ...     voxel_mm: tuple[float, ...] = (4.8, 4.8, 4.8)
    ...     method: Literal["dvk", "led"] = "dvk"
    >>> parse_options(Options, {"voxel_mm": [4, 4, 4]}, stage="demo")
    Options(voxel_mm=(4.0, 4.0, 4.0), method='dvk')
    >>> parse_options(Options, {"methd": "led"}, stage="demo")
    Traceback (most recent call last):
    ...
    theratwin.errors.ConfigurationError: Unknown demo options ['methd'] (did you mean 'method'?); known: method, voxel_mm.
    """
    if not (isinstance(cls, type) and is_dataclass(cls)):
        raise TypeError(f"parse_options needs a dataclass type; got {cls!r}")
    where = f"stage_options['{stage}']"
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, Mapping):
        raise ConfigurationError(f"{where} must be a mapping of option names to values; got "
                                 f"{type(mapping).__name__} {_short(mapping)}.")
    names = [f.name for f in fields(cls) if f.init]
    bad_names = [k for k in mapping if not isinstance(k, str)]
    unknown = {str(k) for k in mapping if str(k) not in names} | {str(k) for k in bad_names}
    if unknown:
        raise ConfigurationError(unknown_keys_message(f"{stage} options", unknown, names))
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in mapping.items():
        try:
            values[key] = _coerce(value, hints.get(key, Any))
        except _Invalid as exc:
            raise ConfigurationError(f"{where}['{key}'] must be {exc}; got {_short(value)}.") from None
    try:
        return cls(**values)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where}: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{where}: {exc}") from exc


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _describe(tp: Any) -> str:
    """A reader's name for a type annotation ("a number", "one of 'a', 'b'", ...)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return "any value"
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "a whole number"
    if tp is float:
        return "a number"
    if tp is str:
        return "text"
    if origin in (tuple, list) or tp in (tuple, list):
        inner = [a for a in args if a is not Ellipsis]
        if origin is tuple and inner and Ellipsis not in args:
            return f"a list of {len(inner)} values ({', '.join(_describe(a) for a in inner)})"
        return f"a list of {_plural(_describe(inner[0])) if inner else 'values'}"
    if origin is dict or tp is dict:
        return "a mapping" + (f" of {_plural(_describe(args[1]))}" if len(args) == 2 and args[1] is not Any else "")
    return getattr(tp, "__name__", str(tp))


def _plural(description: str) -> str:
    """"a number" -> "numbers", "text" -> "texts" (the items of a list)."""
    if description.startswith("a ") and " or " not in description and " of " not in description:
        return description[2:] + "s"
    return {"text": "texts", "true or false": "true/false values"}.get(description, f"values ({description})")


def _coerce(value: Any, tp: Any) -> Any:
    """``value`` checked against the annotation ``tp`` (and converted: list -> tuple, int -> float ...)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any or isinstance(tp, TypeVar):
        return value
    if tp is type(None):
        if value is None:
            return None
        raise _Invalid("null")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg)
            except _Invalid:
                continue
        raise _Invalid(_describe(tp))
    if origin is Literal:
        if value in args and not (isinstance(value, bool) and not any(isinstance(a, bool) for a in args)):
            return value
        hint = suggest(value, [str(a) for a in args]) if isinstance(value, str) else None
        raise _Invalid(_describe(tp) + (f" (did you mean {hint!r}?)" if hint else ""))
    if tp is bool:
        if isinstance(value, (bool, np.bool_)):  # numpy's from a GUI's or a table's array
            return bool(value)
        raise _Invalid(_describe(tp))
    if tp in (int, float) and isinstance(value, bool):
        raise _Invalid(_describe(tp))  # True is an int to Python, not a number to a user
    if tp is int:
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, numbers.Real) and float(value).is_integer():
            return int(float(value))
        raise _Invalid(_describe(tp))
    if tp is float:
        if isinstance(value, numbers.Real):
            return float(value)
        raise _Invalid(_describe(tp))
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Invalid(_describe(tp))
    if origin is tuple or tp is tuple:
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
            raise _Invalid(_describe(tp))
        items = list(value)
        if not args:
            return tuple(items)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce_item(v, args[0], tp) for v in items)
        if len(items) != len(args):
            raise _Invalid(_describe(tp))
        return tuple(_coerce_item(v, a, tp) for v, a in zip(items, args, strict=True))
    if origin is list or tp is list:
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
            raise _Invalid(_describe(tp))
        return [_coerce_item(v, args[0], tp) if args else v for v in value]
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise _Invalid(_describe(tp))
        if len(args) == 2:
            return {_coerce_item(k, args[0], tp): _coerce_item(v, args[1], tp) for k, v in value.items()}
        return dict(value)
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _Invalid(_describe(tp))
    return value  # an annotation this checker does not know: the dataclass checks it


def _coerce_item(value: Any, tp: Any, outer: Any) -> Any:
    try:
        return _coerce(value, tp)
    except _Invalid:
        raise _Invalid(_describe(outer)) from None
