"""Push FHIR bundles through the durable outbox, and complete the outbox later.

The FHIR push uses the project's generic outbox (:mod:`theratwin.dicom.outbox`, channel ``"fhir"`` under
``<out_dir>/outbox``): ``fhir-bundle.json`` is queued (a copy, keyed by the bundle's analysis identifier and the
credential-free server URL) *before* it is sent, and leaves the queue only after the server confirmed the whole
transaction. So a bundle that cannot be delivered (server unreachable, overloaded, or refusing it) is never
lost; ``theratwin push DIR --fhir URL`` (which calls :func:`push_output_dir`) delivers everything still waiting
for that server. Because every entry of a TheraTwin bundle is a conditional create, re-sending a bundle the
server already stored (e.g. when its answer was lost) creates nothing twice.

A bundle delivered before with the same content is not sent again (the outbox remembers deliveries); a new
analysis gives a new bundle identifier and is delivered as new results.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..dicom.outbox import DeliveryReport, Outbox, OutboxItem, PermanentFailure, StopDelivery
from ..errors import InvalidInputError
from .client import FhirClient, FhirPushError

__all__ = ["CHANNEL", "BUNDLE_FILENAME", "TransactionSummary", "FhirPushReport", "push_bundle",
           "push_output_dir", "fhir_outbox", "destination_key", "bundle_key"]

log = logging.getLogger(__name__)

#: File name of the bundle in an output directory.
BUNDLE_FILENAME = "fhir-bundle.json"
#: Outbox channel of the FHIR push.
CHANNEL = "fhir"


def fhir_outbox(out_dir: str | Path) -> Outbox:
    """The outbox of an output directory (``<out_dir>/outbox``; FHIR bundles in channel :data:`CHANNEL`)."""
    return Outbox(Path(out_dir) / "outbox")


def destination_key(fhir_url: str) -> str:
    """The server URL without user information, query or fragment (never a credential in the outbox)."""
    parts = urlsplit(fhir_url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return "fhir:" + urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def bundle_key(bundle: Mapping[str, Any], fallback: str) -> str:
    """A stable key for a bundle: its analysis tag (see :func:`theratwin.fhir.bundle.analysis_key`)."""
    for e in bundle.get("entry", []) or []:
        for t in ((e.get("resource") or {}).get("meta") or {}).get("tag", []) or []:
            if str(t.get("system", "")).endswith("/sid/analysis") and t.get("code"):
                return f"bundle-{t['code']}"
    return fallback


@dataclass
class TransactionSummary:
    """What the server did with a transaction: entries created and entries that already existed."""

    created: dict[str, int] = field(default_factory=dict)
    existing: dict[str, int] = field(default_factory=dict)
    locations: list[str] = field(default_factory=list)

    @classmethod
    def from_response(cls, response: Mapping[str, Any]) -> TransactionSummary:
        """Count the entries of a transaction-response Bundle by resource type: ``201`` as created, any
        other status as already existing (conditional create matched)."""
        s = cls()
        for e in response.get("entry", []) or []:
            r = e.get("response", {}) or {}
            loc = str(r.get("location", ""))
            rt = loc.split("/")[0] if loc else (e.get("resource") or {}).get("resourceType", "?")
            bucket = s.created if str(r.get("status", "")).startswith("201") else s.existing
            bucket[rt] = bucket.get(rt, 0) + 1
            if loc:
                s.locations.append(loc)
        return s

    @property
    def n_created(self) -> int:
        """Number of resources the server created."""
        return sum(self.created.values())

    @property
    def n_existing(self) -> int:
        """Number of entries the server matched to a resource it already held (not created again)."""
        return sum(self.existing.values())


@dataclass
class FhirPushReport:
    """Outcome of :func:`push_output_dir` (``.ok`` and a human-readable ``.describe()``)."""

    fhir_url: str
    sent: list[tuple[str, TransactionSummary]] = field(default_factory=list)
    already_sent: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    not_tried: list[str] = field(default_factory=list)
    outbox_left: int = 0

    @property
    def ok(self) -> bool:
        """True when every bundle was stored or had been before, and the outbox is empty."""
        return not self.failed and not self.not_tried and self.outbox_left == 0

    def describe(self) -> str:
        """One line per bundle (created / already present / kept in the outbox and why) and what is left in
        the outbox, for the CLI and the log."""
        where = destination_key(self.fhir_url).removeprefix("fhir:")
        lines = [f"FHIR {where}: {name} stored ({s.n_created} created, {s.n_existing} already present)."
                 for name, s in self.sent]
        lines += [f"FHIR {where}: {name} was delivered before; not sent again." for name in self.already_sent]
        lines += [f"FHIR {where}: {name} NOT stored, kept in the outbox: {why}" for name, why in self.failed]
        if self.not_tried:
            lines.append(f"FHIR {where}: {len(self.not_tried)} more bundle(s) not tried (server unreachable).")
        if not lines:
            lines.append(f"FHIR {where}: nothing to push.")
        if self.outbox_left:
            lines.append(f"FHIR outbox: {self.outbox_left} bundle(s) waiting; run `theratwin push` again.")
        return "\n".join(lines)


def push_bundle(bundle: Mapping[str, Any], client: FhirClient) -> TransactionSummary:
    """Send one transaction bundle; raise :class:`FhirPushError` unless the server stored all of it."""
    response = client.transaction(bundle)
    n_in, n_out = len(bundle.get("entry", []) or []), len(response.get("entry", []) or [])
    if n_in != n_out:
        raise FhirPushError(f"FHIR server {client.base_url} answered {n_out} entries for a transaction of {n_in}.")
    bad = [e for e in response.get("entry", []) if not str((e.get("response") or {}).get("status", "")).startswith("2")]
    if bad:
        raise FhirPushError(f"FHIR server {client.base_url} reported failed entries in a transaction: "
                            f"{[(e.get('response') or {}).get('status') for e in bad]}")
    return TransactionSummary.from_response(response)


def push_output_dir(out_dir: str | Path, fhir_url: str, *, client: FhirClient | None = None) -> FhirPushReport:
    """Queue ``<out_dir>/fhir-bundle.json`` in the outbox and deliver every bundle waiting for ``fhir_url``.

    Parameters
    ----------
    out_dir
        A TheraTwin output directory.
    fhir_url
        FHIR R4 base URL. Credentials come from the environment (see :mod:`theratwin.fhir.client`).
    client
        A ready client (tests, custom retries); default ``FhirClient(fhir_url)``.

    Returns
    -------
    FhirPushReport
        ``.ok`` is False when something stays in the outbox; ``.describe()`` says what happened.
    """
    out = Path(out_dir)
    if not out.is_dir():
        raise InvalidInputError(f"{out} is not a TheraTwin output directory.")
    client = client or FhirClient(fhir_url)
    dest = destination_key(fhir_url)
    outbox = fhir_outbox(out)
    report = FhirPushReport(fhir_url)
    main = out / BUNDLE_FILENAME
    if main.is_file():
        try:
            key = bundle_key(json.loads(main.read_text(encoding="utf-8")), "fhir-bundle")
        except ValueError as exc:
            raise InvalidInputError(f"{main} is not JSON ({exc}); run the pipeline again to rewrite it.") from exc
        item = outbox.add(CHANNEL, main, key=key, destination=dest)
        if item.status == "sent":
            report.already_sent.append(key)

    summaries: dict[str, TransactionSummary] = {}

    def send(path: Path, item: OutboxItem) -> None:
        try:
            bundle = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PermanentFailure(f"unreadable outbox copy {path.name} ({exc})") from exc
        try:
            summaries[item.key] = push_bundle(bundle, client)
        except FhirPushError as exc:
            # unreachable / overloaded: stop and keep everything for later; refused: try the others
            raise (StopDelivery(str(exc)) if exc.retriable else PermanentFailure(str(exc))) from exc

    rep: DeliveryReport = outbox.deliver(CHANNEL, dest, send)
    report.sent = [(k, summaries[k]) for k in rep.sent]
    report.failed = list(rep.failed.items())
    report.not_tried = list(rep.not_tried)
    report.outbox_left = len(outbox.pending(CHANNEL, dest))
    return report
