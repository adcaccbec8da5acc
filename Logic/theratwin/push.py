"""``theratwin push``: send an output folder's DICOM objects to a PACS and its FHIR bundle to an EHR server.

The application layer over :mod:`theratwin.delivery` (which the pipeline's export stages use directly). Every DICOM
file of ``DIR/dicom`` is queued in the outbox ``DIR/outbox`` (channel ``pacs``, keyed by SOP
Instance UID and destination) and then delivered one instance at a time; whatever fails stays in the outbox,
and the next push (of the same folder, to the same PACS) sends exactly what is still missing. Queueing is
idempotent, so pushing a folder twice sends nothing twice; objects of an earlier export that a re-export
replaced in ``DIR/dicom`` are still delivered from the outbox. The FHIR part is delegated to
``theratwin.fhir.push_output_dir`` (imported only when ``fhir_url`` is given).

Before anything is sent, :func:`push_directory` checks the settings (URLs, credentials, TLS files) and the
folder: a run that did not finish, or a folder mixing runs or patients, is refused
(:func:`theratwin.pipeline.manifest.check_folder_for_push`). One push per folder runs at a time
(``OUT/outbox/.push.lock``, an OS lock on every platform): a second push waits ``wait_s`` or says that one
is running.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .delivery import (
    OUTBOX_DIR,
    PACS_CHANNEL,
    PUSH_LOCK,
    PacsPushResult,
    check_push_settings,
    push_dicom_directory,
    push_lock,
)
from .errors import PushError
from .progress import ProgressCallback, report, scaled

# the delivery functions live in the library (theratwin.delivery, used by the pipeline's stages); their names stay
# importable from here, where they were first published
__all__ = ["PushReport", "PacsPushResult", "push_directory", "push_dicom_directory", "push_lock",
           "check_push_settings", "OUTBOX_DIR", "PACS_CHANNEL", "PUSH_LOCK"]


class _Part(Protocol):
    @property
    def ok(self) -> bool: ...

    def describe(self) -> str: ...


@dataclass
class PushReport:
    """What :func:`push_directory` did; ``ok`` only when every part delivered everything."""

    parts: list[Any] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when at least one destination was pushed to and every push is complete."""
        return bool(self.parts) and all(bool(p.ok) for p in self.parts)

    def describe(self) -> str:
        """One line per destination (see each part's ``describe``), or ``nothing pushed``."""
        return "\n".join(p.describe() for p in self.parts) or "nothing pushed"


def push_directory(directory: str | Path, pacs_url: str | None = None, fhir_url: str | None = None, *,
                   progress: ProgressCallback | None = None, wait_s: float | None = 0,
                   check_folder: bool = True, dicom_files: Sequence[str | Path] | None = None) -> PushReport:
    """Push an output folder to a PACS and/or a FHIR server (see the module docstring).

    Parameters
    ----------
    wait_s
        How long to wait for another push of the same folder to finish (``None``: for ever; default: not at all).
    check_folder
        Refuse an unfinished or mixed folder (the pipeline's own push, during its run, skips this).
    dicom_files
        Push only these DICOM files (relative to ``directory``; default: all of ``dicom/``).

    Failures to deliver do not raise: they are in the report (``ok`` false, ``describe()`` says what is left in
    the outbox). A bad URL or setting, a folder that is not a finished output folder, or another push running
    raise :class:`~theratwin.errors.PushError` or :class:`~theratwin.errors.ConfigurationError` before
    anything is sent.
    """
    root = Path(directory)
    if not root.is_dir():
        raise PushError(f"{root}: no such output folder.")
    check_push_settings(pacs_url, fhir_url)
    if check_folder:
        from .pipeline.manifest import check_folder_for_push

        check_folder_for_push(root)
    rep = PushReport()
    with push_lock(root, wait_s=wait_s):
        if pacs_url:
            rep.parts.append(push_dicom_directory(root, pacs_url, files=dicom_files,
                                                  progress=scaled(progress, 0.0, 0.5 if fhir_url else 1.0)))
        if fhir_url:
            from .fhir import push_output_dir

            part: _Part = push_output_dir(root, fhir_url)
            rep.parts.append(part)
    report(progress, 1.0, "push done")
    return rep
