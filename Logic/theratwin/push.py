"""``theratwin push``: send an output folder's DICOM objects to a PACS and its FHIR bundle to an EHR server.

Every DICOM file of ``DIR/dicom`` is queued in the outbox ``DIR/outbox`` (channel ``pacs``, keyed by SOP
Instance UID and destination) and then delivered one instance at a time; whatever fails stays in the outbox,
and the next push (of the same folder, to the same PACS) sends exactly what is still missing. Queueing is
idempotent, so pushing a folder twice sends nothing twice; objects of an earlier export that a re-export
replaced in ``DIR/dicom`` are still delivered from the outbox. The FHIR part is delegated to
``theratwin.fhir.push_output_dir`` (imported only when ``fhir_url`` is given).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pydicom
from pydicom.errors import InvalidDicomError

from .errors import InvalidInputError, PushError
from .progress import ProgressCallback, report, scaled

__all__ = ["PushReport", "PacsPushResult", "push_directory", "push_dicom_directory", "OUTBOX_DIR"]

log = logging.getLogger(__name__)

OUTBOX_DIR = "outbox"
PACS_CHANNEL = "pacs"


class _Part(Protocol):
    @property
    def ok(self) -> bool: ...

    def describe(self) -> str: ...


@dataclass
class PacsPushResult:
    """Outcome of pushing a folder's DICOM objects to one PACS."""

    destination: str
    queued: int = 0
    sent: list[str] = field(default_factory=list)
    already_sent: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    not_tried: list[str] = field(default_factory=list)
    outbox: str = ""
    error: str = ""

    @property
    def pending(self) -> int:
        return len(self.failed) + len(self.not_tried)

    @property
    def ok(self) -> bool:
        return not self.error and self.pending == 0

    def describe(self) -> str:
        head = f"PACS {self.destination}: "
        if self.error and not self.queued:
            return head + f"FAILED: {self.error}"
        text = head + f"{len(self.sent)} sent, {self.already_sent} already there"
        if self.pending:
            first = next(iter(self.failed.values()), self.error)
            text += (f", {self.pending} NOT sent (kept in {self.outbox}; run 'theratwin push' again to complete): "
                     f"{first}")
        return text


@dataclass
class PushReport:
    """What :func:`push_directory` did; ``ok`` only when every part delivered everything."""

    parts: list[Any] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.parts) and all(bool(p.ok) for p in self.parts)

    def describe(self) -> str:
        return "\n".join(p.describe() for p in self.parts) or "nothing pushed"


def _sop_uid(path: Path) -> str:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        return str(ds.SOPInstanceUID)
    except (InvalidDicomError, OSError, AttributeError) as exc:
        raise InvalidInputError(f"{path}: not a DICOM file with a SOPInstanceUID ({type(exc).__name__}); remove it "
                                "from the dicom/ folder.") from None


def push_dicom_directory(directory: str | Path, pacs_url: str, *, progress: ProgressCallback | None = None,
                         client: Any = None) -> PacsPushResult:
    """Queue ``directory/dicom/*.dcm`` in the outbox and deliver everything pending for ``pacs_url``.

    Parameters
    ----------
    directory
        An output folder of ``theratwin demo`` / ``run``.
    pacs_url
        ``http(s)://host:port/dicom-web`` or ``dimse://AETITLE@host:port`` (no credentials in it).
    progress
        Optional progress callback (called after each instance).
    client
        A ready :class:`~theratwin.dicom.pacs.PacsClient` (default: one from :func:`open_pacs`).
    """
    from .dicom.outbox import Outbox
    from .dicom.pacs import PacsEndpoint, open_pacs

    root = Path(directory)
    endpoint = PacsEndpoint.parse(pacs_url)
    outbox = Outbox(root / OUTBOX_DIR)
    res = PacsPushResult(endpoint.url, outbox=str(root / OUTBOX_DIR / PACS_CHANNEL))
    files: Sequence[Path] = sorted((root / "dicom").glob("*.dcm")) if (root / "dicom").is_dir() else []
    for f in files:
        item = outbox.add(PACS_CHANNEL, f, key=_sop_uid(f), destination=endpoint.destination)
        if item.status == "sent":
            res.already_sent += 1
    res.queued = len(outbox.pending(PACS_CHANNEL, endpoint.destination))
    if not res.queued:
        report(progress, 1.0, "PACS: nothing to send")
        return res
    own = client is None
    try:
        client = client or open_pacs(pacs_url)
        delivery = outbox.deliver(PACS_CHANNEL, endpoint.destination, lambda path, _item: client.store(path),
                                  progress=progress)
    finally:
        if own and client is not None:
            client.close()
    res.sent = delivery.sent
    res.failed = delivery.failed
    res.not_tried = delivery.not_tried
    res.error = delivery.stopped
    log.info("PACS push to %s: %d sent, %d pending", endpoint.url, len(res.sent), res.pending)
    return res


@dataclass
class _FailedPart:
    name: str
    message: str
    ok: bool = False

    def describe(self) -> str:
        return f"{self.name}: FAILED: {self.message}"


def push_directory(directory: str | Path, pacs_url: str | None = None, fhir_url: str | None = None, *,
                   progress: ProgressCallback | None = None) -> PushReport:
    """Push an output folder to a PACS and/or a FHIR server (see the module docstring).

    Failures do not raise: they are in the report (``ok`` false, ``describe()`` says what is left in the
    outbox). A bad URL or a folder that is not an output folder raises :class:`~theratwin.errors.PushError`
    or :class:`~theratwin.errors.ConfigurationError`.
    """
    root = Path(directory)
    if not root.is_dir():
        raise PushError(f"{root}: no such output folder.")
    rep = PushReport()
    if pacs_url:
        rep.parts.append(push_dicom_directory(root, pacs_url, progress=scaled(progress, 0.0, 0.5 if fhir_url else 1.0)))
    if fhir_url:
        try:
            from .fhir import push_output_dir
        except ImportError as exc:
            rep.parts.append(_FailedPart("FHIR", f"FHIR push is not available in this installation ({exc.name})."))
        else:
            part: _Part = push_output_dir(root, fhir_url)
            rep.parts.append(part)
    report(progress, 1.0, "push done")
    return rep
