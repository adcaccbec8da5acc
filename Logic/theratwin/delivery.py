"""Delivery of an output folder's objects: the outbox folder, its lock, the PACS push and the settings check.

The library part of pushing, used by the pipeline's export stages while a run writes its folder and by
``theratwin push`` (:mod:`theratwin.push`, the application layer) for a finished folder. Every DICOM file given
is queued in the outbox ``DIR/outbox`` (channel ``pacs``, keyed by SOP Instance UID and destination) and then
delivered one instance at a time; whatever fails stays in the outbox, and the next push (of the same folder, to the
same PACS) sends exactly what is still missing. Queueing is idempotent, so pushing a folder twice sends nothing
twice. One push per folder runs at a time (:func:`push_lock`, ``OUT/outbox/.push.lock``, an OS lock on every
platform).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from ._lock import exclusive_lock
from .errors import ConfigurationError, InvalidInputError, PushError
from .progress import ProgressCallback, report

__all__ = ["PacsPushResult", "push_dicom_directory", "push_lock", "check_push_settings", "OUTBOX_DIR",
           "PACS_CHANNEL", "PUSH_LOCK"]

log = logging.getLogger(__name__)

OUTBOX_DIR = "outbox"
PACS_CHANNEL = "pacs"
PUSH_LOCK = ".push.lock"


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
        """Number of files not delivered: failed ones plus those not tried after the PACS became
        unreachable."""
        return len(self.failed) + len(self.not_tried)

    @property
    def ok(self) -> bool:
        """True when there was no error and no file is pending."""
        return not self.error and self.pending == 0

    def describe(self) -> str:
        """One line for the CLI: sent, already there, and what was not sent and where it is kept (with the
        first reason)."""
        head = f"PACS {self.destination}: "
        if self.error and not self.queued:
            return head + f"FAILED: {self.error}"
        text = head + f"{len(self.sent)} sent, {self.already_sent} already there"
        if self.pending:
            first = next(iter(self.failed.values()), self.error)
            text += (f", {self.pending} NOT sent (kept in {self.outbox}; run 'theratwin push' again to complete): "
                     f"{first}")
        return text


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
