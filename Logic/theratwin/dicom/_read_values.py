"""Tolerant access to DICOM attribute values (shared by the readers).

Every accessor returns ``None`` (or a default) for an absent, empty or unparsable value instead of raising, so
that one bad attribute in a tolerant read costs a warning, not the study. Strict reads call :func:`require`.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from datetime import date, datetime, timedelta, tzinfo
from pathlib import Path
from types import TracebackType
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from .._time import assume_local, in_zone, parse_offset
from ..errors import DicomReadError

__all__ = [
    "raised_by_pydicom",
    "is_internal_error",
    "get_value",
    "get_text",
    "get_float",
    "checked_float",
    "present",
    "get_int",
    "get_floats",
    "get_item",
    "parse_da",
    "parse_tm",
    "parse_dt",
    "combine",
    "require",
    "DicomClock",
    "clip",
    "philips_scale",
    "PHILIPS_CREATOR",
]

#: Philips PET stores the factor from CNTS to Bq/mL in (7053,1009) of this private block (Philips DICOM
#: conformance statements: "Activity Concentration Scale Factor").
PHILIPS_CREATOR = "Philips PET Private Group"


def clip(text: object, limit: int = 40) -> str:
    """A value quoted in a message: one printable line of at most ``limit`` characters."""
    from ..errors import one_line

    return one_line(text, limit)


def philips_scale(ds: Dataset) -> float | None:
    """Philips' Activity Concentration Scale Factor (Bq/mL per count value), or None."""
    try:
        block = ds.private_block(0x7053, PHILIPS_CREATOR)
        f = float(block[0x09].value)
    except (KeyError, ValueError, TypeError, AttributeError, OverflowError):
        return None
    return f if math.isfinite(f) and 0 < f < 1e12 else None


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
    """A finite float, or None (absent, empty, unparsable, or several values where one is expected)."""
    v = get_value(ds, keyword)
    if v is None:
        return None
    try:
        if hasattr(v, "__iter__") and not isinstance(v, (str, bytes)):
            values = list(v)
            if len(values) != 1:
                return None
            v = values[0]
        f = float(v)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return f if math.isfinite(f) else None


def present(ds: Dataset | None, keyword: str) -> bool:
    """True when ``keyword`` is in ``ds`` with a non-empty (possibly undecodable) value."""
    if ds is None:
        return False
    try:
        if keyword not in ds:
            return False
        elem = ds[keyword]
        raw = getattr(elem, "value", None)
    except Exception:  # noqa: BLE001 - an undecodable value is present, just corrupt
        return True
    return not (raw is None or raw == "" or (hasattr(raw, "__len__") and len(raw) == 0))


def checked_float(ds: Dataset | None, keyword: str, *, path: Path | str | None, default: float | None = None,
                  low: float = -math.inf, high: float = math.inf, required: bool = False,
                  what: str = "") -> float | None:
    """One finite float in ``[low, high]``; ``default`` when absent; a :class:`DicomReadError` when present but
    corrupt (unparsable, NaN, several values, out of range) or absent though ``required``.

    A present-but-corrupt value is never replaced by a default: that is how a NaN RescaleIntercept once became 0.
    """
    if not present(ds, keyword):
        if required:
            raise DicomReadError(f"{keyword} is missing{' (' + what + ')' if what else ''}.", path=path, tag=keyword)
        return default
    f = get_float(ds, keyword)
    if f is None or not low <= f <= high:
        shown = clip(get_text(ds, keyword) or repr(get_value(ds, keyword)))
        limits = "" if (low == -math.inf and high == math.inf) else f" in [{low:g}, {high:g}]"
        raise DicomReadError(f"{keyword} {shown!r} is not one finite number{limits}"
                             f"{' (' + what + ')' if what else ''}; the file is corrupt.", path=path, tag=keyword)
    return f


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
    """DICOM DT: aware (fixed offset) when the value carries an offset (``...+0100``), else naive.

    Naive results are made aware by :class:`DicomClock` (TimezoneOffsetFromUTC, site zone, local zone).
    """
    if text is None:
        return None
    m = _DT.match(str(text))
    if not m or m[4] is None:  # a datetime without an hour is not usable as a time stamp
        return None
    try:
        dt = datetime(int(m[1]), int(m[2] or 1), int(m[3] or 1), int(m[4]), int(m[5] or 0),
                      min(int(m[6] or 0), 59), int((m[7] or "0").ljust(6, "0")))
    except ValueError:
        return None
    if m[8]:
        zone = parse_offset(m[8])
        if zone is None:  # an offset outside -1200..+1400 is a corrupt value, not a time
            return None
        dt = dt.replace(tzinfo=zone)
    return dt


def combine(d: date | None, t: timedelta | None) -> datetime | None:
    if d is None or t is None:
        return None
    return datetime(d.year, d.month, d.day) + t


class DicomClock:
    """Makes the DA/TM/DT values of DICOM instances timezone-aware (the rule of :mod:`theratwin._time`).

    Parameters
    ----------
    zone
        The site's zone for instances without Timezone Offset From UTC (0008,0201); None: this computer's zone
        (offsets then marked as assumed).

    Attributes
    ----------
    sources
        How many values took their offset from each rule (``"DT offset"``, ``"TimezoneOffsetFromUTC"``,
        ``"site zone"``, ``"local zone (assumed)"``), for the inventory's report.
    """

    def __init__(self, zone: tzinfo | None = None) -> None:
        self.zone = zone
        self.sources: Counter[str] = Counter()
        self.bad_offsets: list[str] = []

    def localize(self, value: datetime | None, instance: Dataset | None) -> datetime | None:
        """``value`` with an offset: its own, else the instance's TimezoneOffsetFromUTC, else the site/local zone."""
        if value is None:
            return None
        if value.tzinfo is not None:
            self.sources["DT offset"] += 1
            return value
        text = get_text(instance, "TimezoneOffsetFromUTC") if instance is not None else ""
        if text:
            zone = parse_offset(text)
            if zone is not None:
                self.sources["TimezoneOffsetFromUTC"] += 1
                return value.replace(tzinfo=zone)
            if text not in self.bad_offsets:
                self.bad_offsets.append(text)
        if self.zone is not None:
            self.sources["site zone"] += 1
            return in_zone(value, self.zone)
        self.sources["local zone (assumed)"] += 1
        return assume_local(value)

    def dt(self, item: Dataset | None, keyword: str, instance: Dataset | None) -> datetime | None:
        """A DT attribute of ``item`` (``instance``, or an item of one of its sequences), aware."""
        return self.localize(parse_dt(get_value(item, keyword)), instance)

    def da_tm(self, ds: Dataset | None, date_keyword: str, time_keyword: str) -> datetime | None:
        """A DA + TM pair of ``ds``, aware."""
        return self.localize(combine(parse_da(get_value(ds, date_keyword)), parse_tm(get_value(ds, time_keyword))),
                             ds)

    def describe(self) -> str:
        """One line on where the offsets came from (empty when nothing was read)."""
        if not self.sources:
            return ""
        parts = [f"{n} from {src}" for src, n in self.sources.most_common()]
        return "datetimes: " + ", ".join(parts)


def require(value: Any, *, path: Path | str | None, tag: str, what: str) -> Any:
    """Return ``value`` or raise :class:`DicomReadError` naming the file and tag."""
    if value is None:
        raise DicomReadError(f"{what} is missing or unreadable.", path=path, tag=tag)
    return value


_PYDICOM_DIR = os.sep + "pydicom" + os.sep
#: Exception types that, raised by TheraTwin's own code rather than while pydicom decodes a value, are bugs: a
#: file's fault is a wrong *value* (ValueError, OverflowError ...), never a missing attribute of our own objects.
_PROGRAMMING_ERRORS = (AttributeError, KeyError, TypeError, IndexError, NameError, AssertionError)


def raised_by_pydicom(tb: TracebackType | None) -> bool:
    """True if the exception passed through pydicom's code (a value decoded from the file)."""
    while tb is not None:
        if _PYDICOM_DIR in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def is_internal_error(error: BaseException) -> bool:
    """True when ``error`` is a TheraTwin bug, not a file's fault: a programming error (``AttributeError``,
    ``KeyError``, ``TypeError`` ...) that did not come out of pydicom decoding a value of the file.

    The reader's safety nets use it to tell the two apart: a file's fault becomes a
    :class:`~theratwin.errors.DicomReadError` naming the file, a bug is raised as it is (the CLI and the Slicer
    modules then say "internal error, please report", with the traceback under ``-v`` / in the Python console).
    """
    return isinstance(error, _PROGRAMMING_ERRORS) and not raised_by_pydicom(error.__traceback__)
