"""Number formatting and HTML helpers for the report.

Every number the report shows is taken from the JSON form of the results (``Results.to_dict()``, i.e. what
``results.json`` holds) and is written into an element that carries the exact JSON path of the value
(``data-path``, a JSON array of keys), plus ``data-field``, ``data-structure`` and ``data-cycle`` for
readability. A test can therefore parse the report and ``results.json`` and compare each displayed number
with its source at the displayed precision.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from typing import Any

__all__ = ["format_number", "number_span", "interval_span", "lookup", "esc", "NumberStyle"]

#: Significant digits shown for measured/derived quantities. Three is what dosimetry reports quote
#: (uncertainties of image-based dosimetry are 10-30 %, EANM guidance, Gear et al. 2018, EJNMMI 45:2456).
DEFAULT_SIGNIFICANT_DIGITS = 3


class NumberStyle:
    """How a number is rounded for display: ``significant`` digits, never fewer than ``min_decimals``.

    Integers and values of 1000 or more are shown without decimals (no scientific notation for ordinary
    magnitudes); tiny non-zero values (< 1e-3) in scientific notation with ``significant`` digits.
    """

    def __init__(self, significant: int = DEFAULT_SIGNIFICANT_DIGITS, min_decimals: int = 0,
                 max_decimals: int = 6) -> None:
        self.significant = significant
        self.min_decimals = min_decimals
        self.max_decimals = max_decimals


def format_number(value: Any, style: NumberStyle | None = None) -> str:
    """Format a JSON number for display (plain ASCII digits, '.' as decimal mark, '-' for minus).

    Parameters
    ----------
    value
        An ``int``, ``float`` or ``bool``; anything else is returned as escaped text.
    style
        Rounding rule (default: 3 significant digits).

    Returns
    -------
    str
        The rounded number; a reader recovers the value to within half a unit of the last shown digit.
    """
    st = style or NumberStyle()
    if isinstance(value, bool) or value is None:
        return "yes" if value is True else ("no" if value is False else "–")
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, float):
        return str(value)
    if not math.isfinite(value):
        return "–"
    if value == 0.0:
        return "0"
    mag = math.floor(math.log10(abs(value)))
    if abs(value) < 1e-3:
        return f"{value:.{max(st.significant - 1, 0)}e}"
    decimals = min(max(st.significant - 1 - mag, st.min_decimals, 0), st.max_decimals)
    text = f"{value:.{decimals}f}"
    if text.startswith("-") and float(text) == 0.0:
        text = text[1:]
    return text


def esc(text: Any) -> str:
    """HTML-escape any value's text."""
    return html.escape("" if text is None else str(text), quote=True)


def lookup(data: Any, path: Sequence[str | int]) -> Any:
    """Follow ``path`` (keys and list indices) into nested JSON data; ``None`` when absent."""
    cur = data
    for key in path:
        if isinstance(cur, dict):
            if key not in cur:
                return None
            cur = cur[key]
        elif isinstance(cur, list) and isinstance(key, int) and -len(cur) <= key < len(cur):
            cur = cur[key]
        else:
            return None
    return cur


def number_span(data: dict[str, Any], path: Sequence[str | int], *, unit: str | None = None,
                style: NumberStyle | None = None, tag: str = "span", css_class: str = "num",
                structure: str | None = None, cycle: int | str | None = None) -> str:
    """An element showing the number at ``path`` in ``data``, annotated with that path.

    Parameters
    ----------
    data
        The results in their JSON form (``results.json``).
    path
        Keys and list indices leading to the number, e.g. ``["cycles", "1", "structures", "kidneys",
        "mean_dose_Gy"]``; written as ``data-path`` (a JSON array).
    unit
        Unit of the number (``data-unit``), e.g. ``"Gy"``.
    style
        Rounding rule (default: 3 significant digits).
    tag, css_class
        Element name (``"span"`` or ``"td"``) and class.
    structure, cycle
        Written as ``data-structure`` / ``data-cycle`` for readers that filter by them.

    Returns
    -------
    str
        The element; a dash without ``data-path`` when the value is missing or not a finite number, so that
        only numbers actually present in ``results.json`` are ever shown.
    """
    value = lookup(data, path)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not math.isfinite(value)):
        return f'<{tag} class="{css_class} missing">–</{tag}>'
    attrs = {
        "class": css_class,
        "data-path": json.dumps(list(path), ensure_ascii=False),
        "data-field": str(path[-1]),
    }
    if structure is not None:
        attrs["data-structure"] = structure
    if cycle is not None:
        attrs["data-cycle"] = str(cycle)
    if unit:
        attrs["data-unit"] = unit
    attr_text = " ".join(f'{k}="{esc(v)}"' for k, v in attrs.items())
    return f"<{tag} {attr_text}>{esc(format_number(value, style))}</{tag}>"


def interval_span(data: dict[str, Any], path: Sequence[str | int], *, centre: str = "mean", tag: str = "span",
                  css_class: str = "num interval", structure: str | None = None) -> str:
    """One element showing ``centre [low–high]`` of the interval mapping at ``path``.

    The element carries ``data-kind="interval"`` and the JSON paths of the three numbers (``data-path`` for
    the centre, ``data-low-path`` and ``data-high-path``), in the order they are shown. One element instead
    of three keeps long tables cheap to lay out in the PDF.
    """
    parts = [list(path) + [k] for k in (centre, "low", "high")]
    values = [lookup(data, q) for q in parts]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return f'<{tag} class="{css_class} missing">–</{tag}>'
    c, lo, hi = (format_number(v) for v in values)
    attrs = {
        "class": css_class,
        "data-kind": "interval",
        "data-path": json.dumps(parts[0], ensure_ascii=False),
        "data-low-path": json.dumps(parts[1], ensure_ascii=False),
        "data-high-path": json.dumps(parts[2], ensure_ascii=False),
        "data-field": str(path[-1]) if path else "",
    }
    if structure is not None:
        attrs["data-structure"] = structure
    attr_text = " ".join(f'{k}="{esc(v)}"' for k, v in attrs.items())
    return f"<{tag} {attr_text}>{esc(c)} [{esc(lo)}–{esc(hi)}]</{tag}>"
