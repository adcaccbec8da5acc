"""UIDs and series/instance numbering for exported DICOM objects.

Every export creates new Series and SOP Instance UIDs, so a second export of the same (or re-computed) results
never collides with objects already in a PACS; pushing the *same files* twice is idempotent because their SOP
Instance UIDs do not change. UIDs are of the ``2.25.<UUID as integer>`` form (PS3.5 Annex B.2), which needs
no registered organisation root and is unique by construction.

Series numbers of an export start above the largest series number already known in the study (the input
series and any DICOM already in the output folder), so viewers list the results after the images they
derive from and never show two series with the same number from TheraTwin.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

__all__ = ["new_uid", "SeriesNumbering", "max_series_number"]

#: Lowest series number TheraTwin uses, to keep results clear of scanner-made series (usually < 1000).
FIRST_RESULT_SERIES_NUMBER = 9001


def new_uid() -> str:
    """A new UID ``2.25.<128-bit random UUID as a decimal integer>`` (PS3.5 B.2; at most 44 characters)."""
    return f"2.25.{uuid.uuid4().int}"


def max_series_number(files: Iterable[str | Path]) -> int:
    """Largest SeriesNumber (0020,0011) among readable DICOM ``files`` (0 when there is none).

    Unreadable files and files without a series number are ignored (this only guides numbering).
    """
    best = 0
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SeriesNumber"])
        except (InvalidDicomError, OSError, ValueError, AttributeError):
            continue
        value = ds.get("SeriesNumber")
        if value not in (None, ""):
            try:
                best = max(best, int(value))
            except (TypeError, ValueError):
                continue
    return best


@dataclass
class SeriesNumbering:
    """Hands out series numbers for one export.

    Parameters
    ----------
    start
        The first number to hand out; :meth:`above` makes one that clears numbers already in use.
    """

    start: int = FIRST_RESULT_SERIES_NUMBER
    _next: int = field(init=False)

    def __post_init__(self) -> None:
        self._next = int(self.start)

    @classmethod
    def above(cls, used: int) -> SeriesNumbering:
        """Numbering starting above ``used`` and never below :data:`FIRST_RESULT_SERIES_NUMBER`."""
        return cls(max(FIRST_RESULT_SERIES_NUMBER, int(used) + 1))

    def next(self) -> int:
        """The next series number."""
        n = self._next
        self._next += 1
        return n
