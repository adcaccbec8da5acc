"""The documented error set of TheraTwin.

Every error raised on purpose by the package is one of these classes. Each message names the offending file,
DICOM tag, structure or value and says what the user can do about it, so that the CLI and the Slicer modules
can show the message as it is (one line), without a traceback.

=====================  =====================================================================================
Error                  Raised when
=====================  =====================================================================================
``TheraTwinError``     Base class; catch this to handle every TheraTwin error.
``InvalidInputError``  Input data are unusable: missing or contradictory DICOM attributes, bad arrays, unknown
                       nuclide, unsorted times, negative activities ... (also a ``ValueError``).
``DicomReadError``     A DICOM file cannot be read or lacks a required attribute (an ``InvalidInputError``).
``FitError``           A kinetic or twin fit cannot be done with the data given (too few points for the model,
                       no convergence) and no documented fallback applies.
``ConfigurationError`` A setting or plug-in is invalid (unknown method name, bad registry entry).
``PushError``          Sending results to a PACS or FHIR server failed; the objects stay in the outbox.
``OutputError``        An output folder or file cannot be written or used: disk full, no permission, another
                       patient's or an unfinished run in it, another process using it. Previous results are
                       kept.
``ImplausibleResultError``  A result fails a physical plausibility check (activity in the field of view above
                       the administered activity, all-zero or NaN maps, doses above the nuclide's physical
                       ceiling ...); the run stopped before writing outputs.
=====================  =====================================================================================

Messages are one printable line (:func:`one_line`): values quoted from files are clipped, control characters
replaced, so that a corrupt attribute never floods a log or a dialog.
"""

from __future__ import annotations

import re

__all__ = [
    "TheraTwinError",
    "InvalidInputError",
    "DicomReadError",
    "FitError",
    "ConfigurationError",
    "PushError",
    "OutputError",
    "ImplausibleResultError",
    "one_line",
]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


def one_line(text: object, limit: int = 600) -> str:
    """``text`` as one printable line of at most ``limit`` characters (control characters become spaces)."""
    s = _CONTROL.sub(" ", str(text))
    s = "".join(ch if ch.isprintable() else "?" for ch in s)
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


class TheraTwinError(Exception):
    """Base class of every error TheraTwin raises on purpose."""


class InvalidInputError(TheraTwinError, ValueError):
    """Input data are unusable; the message names the file, tag or value and what to do."""


class DicomReadError(InvalidInputError):
    """A DICOM file cannot be read or lacks a required attribute.

    Parameters
    ----------
    message
        What is wrong and what to do.
    path
        The file concerned, if any.
    tag
        The DICOM keyword concerned (e.g. ``"RadiopharmaceuticalStartDateTime"``), if any.
    """

    def __init__(self, message: str, *, path: object | None = None, tag: str | None = None) -> None:
        prefix = ""
        if path is not None:
            prefix += f"{path}: "
        if tag is not None:
            prefix += f"[{tag}] "
        super().__init__(one_line(prefix + message, 1000))
        self.path = path
        self.tag = tag


class FitError(TheraTwinError):
    """A fit cannot be done with the data given and no documented fallback applies."""


class ConfigurationError(TheraTwinError, ValueError):
    """A setting or plug-in is invalid."""


class PushError(TheraTwinError):
    """Sending results to a PACS or FHIR server failed; what was not sent stays in the outbox."""


class OutputError(TheraTwinError):
    """An output folder or file cannot be written or used; the message names the path, and what was there
    before is kept."""
class ImplausibleResultError(TheraTwinError):
    """A result fails a physical plausibility check; the run stopped before writing any output.

    Set ``plausibility.action = "warn"`` in the pipeline configuration to proceed knowingly: the results are then
    written with the warning in the CLI summary, results.json, the report, the SR and FHIR.
    """
