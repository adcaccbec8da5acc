"""DICOM in and out.

Reading (this block): :func:`read_study` turns a folder of one patient's quantitative SPECT/PET + CT (+ SEG)
into a :class:`~theratwin.study.Study`; :func:`scan` reports what a folder holds (:class:`Inventory`,
``describe()``) without refusing anything.
"""

from ._read_values import DicomClock
from .inventory import (
    AdministrationInfo,
    Inventory,
    PlannedCycle,
    PlannedTimePoint,
    SeriesInfo,
    nuclide_from_text,
    scan,
)
from .options import CameraCalibration, ReadOptions
from .read import read_study

__all__ = [
    "read_study",
    "scan",
    "ReadOptions",
    "CameraCalibration",
    "DicomClock",
    "Inventory",
    "SeriesInfo",
    "AdministrationInfo",
    "PlannedCycle",
    "PlannedTimePoint",
    "nuclide_from_text",
]

# ---- writers and PACS (appended below by the DICOM-export work; keep the reading exports above) ----
# Writing RT Dose/SEG/TID 1500 SR (export.py, rtdose.py, seg.py, sr.py) and PACS access (pacs.py, outbox.py).
from .export import ExportReport, export_dicom  # noqa: E402
from .outbox import Outbox  # noqa: E402
from .pacs import PacsClient, PacsEndpoint, open_pacs  # noqa: E402
from .rtdose import DoseKind, build_rtdose, rtdose_to_image  # noqa: E402
from .sr import read_sr_measurements  # noqa: E402

__all__ += [
    "export_dicom",
    "ExportReport",
    "DoseKind",
    "build_rtdose",
    "rtdose_to_image",
    "read_sr_measurements",
    "open_pacs",
    "PacsClient",
    "PacsEndpoint",
    "Outbox",
]
