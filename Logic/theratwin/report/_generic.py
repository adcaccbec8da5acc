"""Render JSON whose schema is not fixed (the twin's output, method parameters) as HTML tables.

Every number goes through :func:`~theratwin.report.format.number_span` (or ``interval_span``) with its JSON
path, as in the rest of the report.
"""

from __future__ import annotations

import json
from typing import Any

from .format import esc, interval_span, number_span

__all__ = ["is_number", "is_plain", "is_interval", "label", "td", "notes_html", "render_generic"]


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _scalar_html(data: dict[str, Any], path: list[str | int], value: Any, *, structure: str | None = None) -> str:
    if is_number(value):
        return number_span(data, path, structure=structure)
    if isinstance(value, list) and all(is_number(v) for v in value):
        if len(value) > 12:
            return '<span class="none">(series not shown)</span>'
        return ", ".join(number_span(data, [*path, i], structure=structure) for i in range(len(value)))
    if isinstance(value, bool):
        return "yes" if value else "no"
    return esc(value if value is not None else "–")


# Unit suffixes of JSON keys (the project's naming rule) and how a header shows them.
_UNIT_SUFFIXES = (
    ("_Gy_per_MBq_h", "Gy/(MBq·h)"), ("_Gy_per_GBq", "Gy/GBq"), ("_MBq_h", "MBq·h"), ("_per_h", "1/h"),
    ("_Gy", "Gy"), ("_MBq", "MBq"), ("_GBq", "GBq"), ("_nmol", "nmol"), ("_ug", "µg"), ("_mL", "mL"),
    ("_g", "g"), ("_h", "h"), ("_mm", "mm"),
)


_ACRONYMS = {"tia": "TIA", "bed": "BED", "eqd2": "EQD2", "ntcp": "NTCP", "tcp": "TCP", "dvh": "DVH", "sd": "SD",
             "geud": "gEUD", "aicc": "AICc", "iov": "IOV", "cv": "CV"}


def label(key: Any) -> str:
    """A readable, wrappable header for a JSON key: ``cumulative_bed_Gy`` -> ``cumulative bed (Gy)``."""
    text = str(key)
    unit = ""
    for suffix, shown in _UNIT_SUFFIXES:
        if text.endswith(suffix) and len(text) > len(suffix):
            text, unit = text[: -len(suffix)], shown
            break
    text = " ".join(_ACRONYMS.get(w, w) for w in text.split("_"))
    return esc(f"{text} ({unit})" if unit else text)


def is_interval(v: Any) -> bool:
    """A summary of a predictive distribution: a central value and a ``low``-``high`` interval."""
    return (isinstance(v, dict) and is_number(v.get("low")) and is_number(v.get("high"))
            and (is_number(v.get("mean")) or is_number(v.get("median"))))


def is_plain(v: Any) -> bool:
    return _is_scalar(v) or (isinstance(v, list) and all(is_number(x) for x in v))


def _is_cell(v: Any) -> bool:
    """Renderable in one table cell: a scalar, a short numeric list, an interval or a small flat mapping."""
    return is_plain(v) or is_interval(v) or (
        isinstance(v, dict) and 0 < len(v) <= 8 and all(is_plain(x) for x in v.values()))


def _cell_html(data: dict[str, Any], path: list[str | int], value: Any, *, structure: str | None = None,
               notes: list[str] | None = None) -> str:
    if is_interval(value):
        centre = "mean" if is_number(value.get("mean")) else "median"
        return interval_span(data, path, centre=centre, structure=structure)
    if isinstance(value, dict):
        bits = []
        for k, v in value.items():
            if isinstance(v, str) and len(v) > 60 and notes is not None:
                # long texts (references, notes) become numbered notes under the table
                if v not in notes:
                    notes.append(v)
                bits.append(f"{esc(k)} [{notes.index(v) + 1}]")
            else:
                bits.append(f"{esc(k)} {_scalar_html(data, [*path, k], v, structure=structure)}")
        return '<span class="compact">' + "; ".join(bits) + "</span>"
    return _scalar_html(data, path, value, structure=structure)


def td(data: dict[str, Any], path: list[str | int], value: Any, *, structure: str | None = None,
        notes: list[str] | None = None) -> str:
    """A table cell; a number or an interval is annotated on the cell itself (fewer boxes to lay out)."""
    if is_number(value):
        return number_span(data, path, structure=structure, tag="td")
    if is_interval(value):
        centre = "mean" if is_number(value.get("mean")) else "median"
        return interval_span(data, path, centre=centre, structure=structure, tag="td")
    return f"<td>{_cell_html(data, path, value, structure=structure, notes=notes)}</td>"


def notes_html(notes: list[str]) -> str:
    if not notes:
        return ""
    return '<ol class="table-notes">' + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ol>"


def _matrix(data: dict[str, Any], path: list[str | int], rows: dict[str, dict[str, Any]], *,
            notes: list[str], transpose: bool = False, structures: list[str] | None = None) -> str:
    """A table of records. Rows are the record names; with ``transpose`` the records are columns and the rows
    are their keys (used when each record maps structure names to values)."""
    if transpose:
        row_names: list[str] = []
        for rec in rows.values():
            row_names += [k for k in rec if k not in row_names]
        order = structures or []
        row_names.sort(key=lambda n: order.index(n) if n in order else len(order))
        cols = list(rows)
        head = "".join(f"<th>{label(c)}</th>" for c in cols)
        body = "".join(
            f"<tr><th>{esc(r)}</th>" + "".join(
                td(data, [*path, c, r], rows[c][r], structure=r, notes=notes) if r in rows[c] else "<td>–</td>"
                for c in cols) + "</tr>"
            for r in row_names)
    else:
        cols = []
        for name, rec in rows.items():
            # a column repeating the row key (e.g. "structure") says nothing new
            cols += [k for k, v in rec.items() if k not in cols and v != name]
        is_structure = bool(structures) and all(k in (structures or []) for k in rows)
        head = "".join(f"<th>{label(c)}</th>" for c in cols)
        body = "".join(
            f"<tr><th>{esc(k)}</th>" + "".join(
                td(data, [*path, k, c], rec[c], structure=str(k) if is_structure else None, notes=notes)
                if c in rec else "<td>–</td>"
                for c in cols) + "</tr>"
            for k, rec in rows.items())
    return (f'<div class="table-wrap"><table class="generic"><thead><tr><th></th>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def render_generic(data: dict[str, Any], path: list[str | int], value: Any, depth: int = 0,
                    skip: tuple[str, ...] = (), structures: list[str] | None = None,
                    notes: list[str] | None = None) -> str:
    """Render any JSON value whose schema is not fixed (the twin's output).

    Scalars and intervals go into a key/value table; mappings keyed by structure name become one table with a
    row per structure; other mappings of records one table with a row per record; anything deeper nests
    under a heading. Long texts inside cells become numbered notes (``notes``).
    """
    notes = [] if notes is None else notes
    structures = structures or []
    if depth > 6:
        return '<p class="none">(nested data not shown)</p>'
    if _is_cell(value) and not isinstance(value, dict):
        return f"<p>{_cell_html(data, path, value, notes=notes)}</p>"
    if isinstance(value, list):
        if value and all(isinstance(v, dict) and all(_is_cell(x) for x in v.values()) for v in value):
            cols: list[str] = []
            for v in value:
                cols += [k for k in v if k not in cols]
            head = "".join(f"<th>{label(c)}</th>" for c in cols)
            body = "".join(
                "<tr>" + "".join(td(data, [*path, i, c], v[c], notes=notes) if c in v else "<td>–</td>"
                                 for c in cols) + "</tr>"
                for i, v in enumerate(value))
            return f'<table class="generic"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
        return "".join(render_generic(data, [*path, i], v, depth + 1, structures=structures, notes=notes)
                       for i, v in enumerate(value))
    if not isinstance(value, dict):
        return f"<p>{esc(value)}</p>"
    items = {k: v for k, v in value.items() if k not in skip}
    singles = {k: v for k, v in items.items() if is_plain(v) or is_interval(v)}
    records = {k: v for k, v in items.items() if k not in singles and isinstance(v, dict) and v
               and all(_is_cell(x) for x in v.values())}
    rest = {k: v for k, v in items.items() if k not in singles and k not in records}
    by_structure = {k: v for k, v in records.items() if structures and all(n in structures for n in v)}
    others = {k: v for k, v in records.items() if k not in by_structure}
    out = []
    if singles:
        rows = "".join(
            f"<tr><th>{label(k)}</th>{td(data, [*path, k], v, notes=notes)}</tr>" for k, v in singles.items())
        out.append(f'<table class="kv">{rows}</table>')
    if by_structure:
        out.append(_matrix(data, path, by_structure, notes=notes, transpose=True, structures=structures))
    if len(others) >= 2 and len(set.intersection(*(set(v) for v in others.values()))) >= 1:
        out.append(_matrix(data, path, others, notes=notes, structures=structures))
    else:
        for k, v in others.items():
            # a header showing a JSON key carries the key's path, so that a reader can check it too
            head = "".join(f"<th data-key-path=\"{esc(json.dumps([*path, k, c]))}\">{label(c)}</th>" for c in v)
            cells = "".join(td(data, [*path, k, c], x, notes=notes) for c, x in v.items())
            out.append(f'<div class="table-wrap"><table class="generic"><caption>{label(k)}</caption><thead><tr>'
                       f"{head}</tr></thead><tbody><tr>{cells}</tr></tbody></table></div>")
    for k, v in rest.items():
        h = "h3" if depth == 0 else "h4"
        title = f"cycle {k}" if str(k).isdigit() else label(k)
        out.append(f'<div class="twin-part"><{h}>{title}</{h}>'
                   f"{render_generic(data, [*path, k], v, depth + 1, structures=structures, notes=notes)}</div>")
    return "".join(out)
