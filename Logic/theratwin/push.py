"""``theratwin push``: send an output folder's DICOM objects to a PACS and its FHIR bundle to an EHR server.

Every DICOM file of ``DIR/dicom`` is queued in the outbox ``DIR/outbox`` (channel ``pacs``, keyed by SOP
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

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pydicom
from pydicom.errors import InvalidDicomError

from ._lock import exclusive_lock
from .errors import ConfigurationError, InvalidInputError, PushError
from .progress import ProgressCallback, report, scaled

__all__ = ["PushReport", "PacsPushResult", "push_directory", "push_dicom_directory", "push_lock",
           "check_push_settings", "OUTBOX_DIR"]

log = logging.getLogger(__name__)

OUTBOX_DIR = "outbox"
PACS_CHANNEL = "pacs"
PUSH_LOCK = ".push.lock"


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


def check_push_settings(pacs_url: str | None, fhir_url: str | None) -> None:
    """Check URLs, credentials and TLS settings of the destinations without contacting them.

    Raises
    ------
    ConfigurationError
        A malformed URL, credentials in a URL, an unreadable config file, a CA bundle that does not exist ...
    """
    if pacs_url:
        from .dicom.pacs import PacsEndpoint, load_pacs_config

        PacsEndpoint.parse(pacs_url)
        load_pacs_config()
    if fhir_url:
        try:
            from .fhir.client import FhirClient
        except ImportError as exc:
            raise ConfigurationError(f"FHIR push is not available in this installation ({exc.name}).") from None
        FhirClient(fhir_url).close()


@contextlib.contextmanager
def push_lock(directory: str | Path, *, wait_s: float | None = 0) -> Iterator[None]:
    """Hold the folder's push lock (one push per folder at a time, across processes and platforms).

    Raises
    ------
    PushError
        When another push still holds it after ``wait_s`` seconds (``None``: wait for ever).
    """
    root = Path(directory)
    with exclusive_lock(root / OUTBOX_DIR / PUSH_LOCK, timeout_s=wait_s, busy=PushError,
                        what=f"Another push of {root} is running"):
        yield


def push_dicom_directory(directory: str | Path, pacs_url: str, *, progress: ProgressCallback | None = None,
                         client: Any = None, files: Sequence[str | Path] | None = None) -> PacsPushResult:
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
    files
        Queue only these files (paths relative to ``directory``; default: every ``dicom/*.dcm``).

    The caller holds the folder's :func:`push_lock` (as :func:`push_directory` and the pipeline stages do).
    """
    from .dicom.outbox import Outbox
    from .dicom.pacs import PacsEndpoint, open_pacs

    root = Path(directory)
    endpoint = PacsEndpoint.parse(pacs_url)
    outbox = Outbox(root / OUTBOX_DIR)
    res = PacsPushResult(endpoint.url, outbox=str(root / OUTBOX_DIR / PACS_CHANNEL))
    if files is None:
        queue = sorted(p for p in (root / "dicom").glob("*.dcm") if not p.name.startswith(".")) \
            if (root / "dicom").is_dir() else []
    else:
        queue = [root / f for f in files]
    for f in queue:
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
