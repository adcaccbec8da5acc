"""DICOM in and out.

Reading (this block): :func:`read_study` turns a folder of one patient's quantitative SPECT/PET + CT (+ SEG)
into a :class:`~theratwin.study.Study`; :func:`scan` reports what a folder holds (:class:`Inventory`,
``describe()``) without refusing anything.
"""

from .inventory import (
    AdministrationInfo,
    Inventory,
    PlannedCycle,
    PlannedTimePoint,
    SeriesInfo,
    nuclide_from_text,
    scan,
)
from .read import read_study

__all__ = [
    "read_study",
    "scan",
    "Inventory",
    "SeriesInfo",
    "AdministrationInfo",
    "PlannedCycle",
    "PlannedTimePoint",
    "nuclide_from_text",
]

# ---- writers and PACS (appended below by the DICOM-export work; keep the reading exports above) ----
