"""Tolerant access to DICOM attribute values (shared by the readers).

Every accessor returns ``None`` (or a default) for an absent, empty or unparsable value instead of raising, so
that one bad attribute in a tolerant read costs a warning, not the study. Strict reads call :func:`require`.
"""

from __future__ import annotations

import math
import re
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from ..errors import DicomReadError

__all__ = [
    "get_value",
    "get_text",
    "get_float",
    "get_int",
    "get_floats",
    "get_item",
    "parse_da",
    "parse_tm",
    "parse_dt",
    "combine",
    "require",
]


def get_value(ds: Dataset | None, keyword: str) -> Any:
    """The value of ``keyword`` or None when absent, empty or not decodable."""
    if ds is None:
        return None
    try:
        if keyword not in ds:
            return None
        value = ds[keyword].value
    except Exception:  # noqa: BLE001 - pydicom raises many types on corrupt values; treated as absent
        return None
    if value is None or value == "" or (hasattr(value, "__len__") and len(value) == 0 and not isinstance(value, bytes)):
        return None
    return value


def get_text(ds: Dataset | None, keyword: str, default: str = "") -> str:
    v = get_value(ds, keyword)
    if v is None:
        return default
    try:
        if isinstance(v, bytes):
            return v.decode("latin-1").strip("\x00 ")
        if isinstance(v, (list, tuple, MultiValue)):
            return "\\".join(str(x) for x in v).strip()
        return str(v).strip()
    except Exception:  # noqa: BLE001
        return default


def get_float(ds: Dataset | None, keyword: str) -> float | None:
    """A finite float, or None."""
    v = get_value(ds, keyword)
    if v is None:
        return None
    try:
        if hasattr(v, "__iter__") and not isinstance(v, (str, bytes)):
            v = list(v)[0]
        f = float(v)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return f if math.isfinite(f) else None


def get_int(ds: Dataset | None, keyword: str) -> int | None:
    f = get_float(ds, keyword)
    if f is None or abs(f) > 2**31 or f != int(f):
        return None
    return int(f)


def get_floats(ds: Dataset | None, keyword: str, n: int) -> list[float] | None:
    """Exactly ``n`` finite floats (multi-valued attribute), or None."""
    v = get_value(ds, keyword)
    if v is None:
        return None
    try:
        vals = [float(x) for x in (v if hasattr(v, "__iter__") and not isinstance(v, (str, bytes)) else [v])]
    except (TypeError, ValueError, OverflowError):
        return None
    if len(vals) != n or not all(math.isfinite(x) for x in vals):
        return None
    return vals


def get_item(ds: Dataset | None, keyword: str, index: int = 0) -> Dataset | None:
    """Item ``index`` of a sequence attribute, or None."""
    v = get_value(ds, keyword)
    if v is None:
        return None
    try:
        item = v[index]
    except (IndexError, TypeError, KeyError):
        return None
    return item if isinstance(item, Dataset) else None


_DA = re.compile(r"^\s*(\d{4})(\d{2})(\d{2})\s*$")
_DA_OLD = re.compile(r"^\s*(\d{4})\.(\d{2})\.(\d{2})\s*$")  # ACR-NEMA style, still seen
_TM = re.compile(r"^\s*(\d{2})(?::?(\d{2}))?(?::?(\d{2}))?(?:\.(\d{1,6}))?\s*$")
_DT = re.compile(r"^\s*(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?([+-]\d{4})?\s*$")


def parse_da(text: Any) -> date | None:
    if text is None:
        return None
    s = str(text)
    m = _DA.match(s) or _DA_OLD.match(s)
    if not m:
        return None
    try:
        return date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        return None


def parse_tm(text: Any) -> timedelta | None:
    """Time of day as a timedelta since midnight (DICOM TM, with or without colons)."""
    if text is None:
        return None
    m = _TM.match(str(text))
    if not m:
        return None
    h, mi, s = int(m[1]), int(m[2] or 0), int(m[3] or 0)
    frac = int((m[4] or "0").ljust(6, "0"))
    if h > 23 or mi > 59 or s > 60:
        return None
    return timedelta(hours=h, minutes=mi, seconds=s, microseconds=frac)


def parse_dt(text: Any) -> datetime | None:
    """DICOM DT (timezone offset ignored: all times are taken as the site's local time)."""
    if text is None:
        return None
    m = _DT.match(str(text))
    if not m or m[4] is None:  # a datetime without an hour is not usable as a time stamp
        return None
    try:
        return datetime(int(m[1]), int(m[2] or 1), int(m[3] or 1), int(m[4]), int(m[5] or 0),
                        min(int(m[6] or 0), 59), int((m[7] or "0").ljust(6, "0")))
    except ValueError:
        return None


def combine(d: date | None, t: timedelta | None) -> datetime | None:
    if d is None or t is None:
        return None
    return datetime(d.year, d.month, d.day) + t


def require(value: Any, *, path: Path | str | None, tag: str, what: str) -> Any:
    """Return ``value`` or raise :class:`DicomReadError` naming the file and tag."""
    if value is None:
        raise DicomReadError(f"{what} is missing or unreadable.", path=path, tag=tag)
    return value
