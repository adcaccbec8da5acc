"""Push FHIR bundles, keep failed pushes in an outbox, and complete the outbox later.

A bundle that cannot be delivered (server unreachable, overloaded, or refusing it) is written to
``<out_dir>/outbox/fhir/<name>.json`` before the error is reported, so nothing is lost; ``theratwin push DIR
--fhir URL`` (which calls :func:`push_output_dir`) sends ``fhir-bundle.json`` and every bundle waiting in the
outbox, and removes an outbox entry only after the server confirmed the whole transaction. Because every entry
of a TheraTwin bundle is a conditional create, re-sending a bundle the server already stored (e.g. when the
answer was lost) creates nothing twice.

The outbox is a plain directory of JSON files written atomically (write to a temporary name, then rename),
so a crash mid-write never leaves a half-written entry that could be sent.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError, PushError
from .client import FhirClient, FhirPushError

__all__ = ["FhirOutbox", "TransactionSummary", "FhirPushReport", "push_bundle", "push_output_dir",
           "BUNDLE_FILENAME", "OUTBOX_SUBDIR"]

log = logging.getLogger(__name__)

BUNDLE_FILENAME = "fhir-bundle.json"
OUTBOX_SUBDIR = Path("outbox") / "fhir"


class FhirOutbox:
    """Bundles waiting to be pushed, one JSON file each, under ``<out_dir>/outbox/fhir``."""

    def __init__(self, out_dir: str | Path) -> None:
        self.path = Path(out_dir) / OUTBOX_SUBDIR

    def add(self, name: str, bundle: Mapping[str, Any], *, reason: str = "") -> Path:
        """Store ``bundle`` under ``name`` (replacing an entry of the same name); returns its file."""
        self.path.mkdir(parents=True, exist_ok=True)
        target = self.path / f"{name}.json"
        tmp = target.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(bundle, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, target)
        if reason:
            (self.path / f"{name}.reason.txt").write_text(reason + "\n", encoding="utf-8")
        return target

    def pending(self) -> list[Path]:
        """Files waiting, oldest first."""
        if not self.path.is_dir():
            return []
        return sorted((p for p in self.path.glob("*.json")), key=lambda p: (p.stat().st_mtime, p.name))

    def remove(self, entry: Path) -> None:
        """Drop an entry after its successful push."""
        entry.unlink(missing_ok=True)
        entry.with_name(entry.stem + ".reason.txt").unlink(missing_ok=True)


@dataclass
class TransactionSummary:
    """What the server did with a transaction: entries created and entries that already existed."""

    created: dict[str, int] = field(default_factory=dict)
    existing: dict[str, int] = field(default_factory=dict)
    locations: list[str] = field(default_factory=list)

    @classmethod
    def from_response(cls, response: Mapping[str, Any]) -> TransactionSummary:
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
        return sum(self.created.values())

    @property
    def n_existing(self) -> int:
        return sum(self.existing.values())


@dataclass
class FhirPushReport:
    """Outcome of :func:`push_output_dir` (``.ok`` and a human-readable ``.describe()``)."""

    fhir_url: str
    sent: list[tuple[str, TransactionSummary]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    outbox_left: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed

    def describe(self) -> str:
        lines = []
        for name, s in self.sent:
            lines.append(f"FHIR {self.fhir_url}: {name} stored ({s.n_created} created, "
                         f"{s.n_existing} already present).")
        for name, why in self.failed:
            lines.append(f"FHIR {self.fhir_url}: {name} NOT stored, kept in the outbox: {why}")
        if not self.sent and not self.failed:
            lines.append(f"FHIR {self.fhir_url}: nothing to push.")
        if self.outbox_left:
            lines.append(f"FHIR outbox: {self.outbox_left} bundle(s) waiting; run `theratwin push` again.")
        return "\n".join(lines)


def push_bundle(bundle: Mapping[str, Any], client: FhirClient) -> TransactionSummary:
    """Send one transaction bundle; raise :class:`FhirPushError` if the server does not store all of it."""
    response = client.transaction(bundle)
    n_in, n_out = len(bundle.get("entry", []) or []), len(response.get("entry", []) or [])
    if n_in != n_out:
        raise FhirPushError(f"FHIR server {client.base_url} answered {n_out} entries for a transaction of {n_in}.")
    bad = [e for e in response.get("entry", []) if not str((e.get("response") or {}).get("status", "")).startswith("2")]
    if bad:
        raise FhirPushError(f"FHIR server {client.base_url} reported failed entries in a transaction: "
                            f"{[(e.get('response') or {}).get('status') for e in bad]}")
    return TransactionSummary.from_response(response)


def _outbox_name(bundle: Mapping[str, Any], fallback: str) -> str:
    """A stable outbox name: the analysis tag of the bundle when present."""
    for e in bundle.get("entry", []) or []:
        for t in ((e.get("resource") or {}).get("meta") or {}).get("tag", []) or []:
            if str(t.get("system", "")).endswith("/sid/analysis") and t.get("code"):
                return f"bundle-{t['code']}"
    return fallback


def push_output_dir(out_dir: str | Path, fhir_url: str, *, client: FhirClient | None = None) -> FhirPushReport:
    """Push ``<out_dir>/fhir-bundle.json`` and every bundle waiting in the FHIR outbox.

    Parameters
    ----------
    out_dir
        A TheraTwin output directory.
    fhir_url
        FHIR R4 base URL. Credentials come from the environment (see :mod:`theratwin.fhir.client`).
    client
        A ready client (tests); default ``FhirClient(fhir_url)``.

    Returns
    -------
    FhirPushReport
        ``.ok`` is False when something stays in the outbox; ``.describe()`` says what happened.
    """
    out = Path(out_dir)
    if not out.is_dir():
        raise InvalidInputError(f"{out} is not a TheraTwin output directory.")
    client = client or FhirClient(fhir_url)
    outbox = FhirOutbox(out)
    report = FhirPushReport(fhir_url)
    todo: list[tuple[str, dict[str, Any], Path | None]] = []
    for waiting in outbox.pending():
        try:
            todo.append((waiting.stem, json.loads(waiting.read_text(encoding="utf-8")), waiting))
        except (OSError, ValueError) as exc:
            report.failed.append((waiting.name, f"unreadable outbox entry ({exc}); left in place"))
    main = out / BUNDLE_FILENAME
    if main.is_file():
        bundle = json.loads(main.read_text(encoding="utf-8"))
        name = _outbox_name(bundle, "fhir-bundle")
        if not any(n == name for n, _, _ in todo):
            todo.append((name, bundle, None))
    for name, bundle, entry in todo:
        try:
            summary = push_bundle(bundle, client)
        except PushError as exc:
            if entry is None:
                outbox.add(name, bundle, reason=str(exc))
            report.failed.append((name, str(exc)))
            continue
        if entry is not None:
            outbox.remove(entry)
        report.sent.append((name, summary))
    report.outbox_left = len(outbox.pending())
    return report
