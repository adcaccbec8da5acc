"""Timezone-aware datetimes: the one rule every TheraTwin datetime follows.

Inside TheraTwin every datetime is timezone-aware with a *fixed* UTC offset (``datetime.timezone``), the offset
that applied at that instant. Elapsed times (``time_h``) are then true elapsed times, also across a daylight-saving
change or between sites in different zones (Python subtracts two datetimes that share one ``ZoneInfo`` object by
wall clock, which is 1 h wrong across a DST change; fixed offsets avoid that).

Where a datetime gets its offset (DICOM, PS3.3 C.12.1.1.8 "Timezone Offset From UTC"):

1. a DT value that carries its own offset (``20260105090000+0100``);
2. else the instance's Timezone Offset From UTC (0008,0201), which applies to every DA/TM and every DT without
   an offset in that SOP instance;
3. else the site's zone, when configured (an IANA name such as ``Europe/Berlin``, resolved at each instant, so
   summer and winter time are both right);
4. else the zone of the computer running TheraTwin, at that instant. Such an offset is marked *assumed*
   (:func:`zone_assumed`) and reported, because data exported at another site would be shifted.

Naive datetimes given in memory (scripts, tests, Slicer attributes without an offset) follow rule 4.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone, tzinfo

__all__ = ["aware", "assume_local", "in_zone", "zone_assumed", "parse_offset", "parse_zone", "offset_text",
           "wall_clock"]

_ASSUMED = " (assumed)"
_OFFSET = re.compile(r"^\s*(?:UTC|GMT)?\s*([+-])(\d{2}):?(\d{2})\s*$")


def _fixed(offset: timedelta, assumed: bool = False) -> timezone:
    name = "UTC" + offset_text(offset, colon=True)
    return timezone(offset, name + (_ASSUMED if assumed else ""))


def offset_text(offset: timedelta | None, *, colon: bool = False) -> str:
    """``+0100`` (DICOM) or ``+01:00`` (ISO) for an offset."""
    minutes = int((offset or timedelta(0)).total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    h, m = divmod(abs(minutes), 60)
    return f"{sign}{h:02d}:{m:02d}" if colon else f"{sign}{h:02d}{m:02d}"


def parse_offset(text: object) -> timezone | None:
    """A fixed offset from ``+HHMM`` / ``-HH:MM`` (UTC-12:00 .. UTC+14:00), or None."""
    if text is None:
        return None
    m = _OFFSET.match(str(text))
    if not m:
        return None
    h, mi = int(m[2]), int(m[3])
    if mi > 59:
        return None
    minutes = (h * 60 + mi) * (-1 if m[1] == "-" else 1)
    if not -12 * 60 <= minutes <= 14 * 60:
        return None
    return _fixed(timedelta(minutes=minutes))


def parse_zone(text: str) -> tzinfo:
    """A zone from an IANA name (``Europe/Berlin``), ``UTC`` or a fixed offset (``+01:00``).

    Raises
    ------
    ValueError
        If the text is neither.
    """
    fixed = parse_offset(text)
    if fixed is not None:
        return fixed
    if str(text).strip().upper() in ("UTC", "Z", "GMT"):
        return timezone.utc
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(str(text).strip())
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"{text!r} is not an IANA zone (e.g. Europe/Berlin) or an offset (e.g. +01:00)") from exc


def in_zone(naive: datetime, zone: tzinfo) -> datetime:
    """The wall-clock time ``naive`` read in ``zone``, with the fixed offset of that instant."""
    offset = naive.replace(tzinfo=zone).utcoffset()
    return naive.replace(tzinfo=_fixed(offset or timedelta(0)))


def assume_local(naive: datetime) -> datetime:
    """The wall-clock time ``naive`` read in this computer's zone (rule 4), marked as assumed."""
    offset = naive.astimezone().utcoffset()
    return naive.replace(tzinfo=_fixed(offset or timedelta(0), assumed=True))


def aware(dt: datetime) -> datetime:
    """``dt`` with a fixed offset: naive values follow rule 4, aware ones keep their instant."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        return assume_local(dt.replace(tzinfo=None))
    if isinstance(dt.tzinfo, timezone):
        return dt
    return dt.astimezone(_fixed(dt.utcoffset() or timedelta(0)))


def zone_assumed(dt: datetime) -> bool:
    """True when ``dt``'s offset was not given by the data but assumed (this computer's zone)."""
    name = dt.tzname() if dt.tzinfo is not None else None
    return dt.tzinfo is None or (name is not None and name.endswith(_ASSUMED))


def wall_clock(dt: datetime) -> datetime:
    """The naive wall-clock time of ``dt`` in its own offset (for DICOM DA/TM, which carry no zone)."""
    return dt.replace(tzinfo=None)
