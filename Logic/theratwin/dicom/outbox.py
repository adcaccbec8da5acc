"""A durable outbox: items waiting to be sent to a destination (PACS, FHIR server ...), surviving crashes.

Layout (``root`` is usually ``OUT/outbox``)::

    root/<channel>/manifest.json        one record per (destination, key): status, sha256, attempts, last error
    root/<channel>/pending/<id><suffix> a copy of every item not yet delivered
    root/<channel>/.lock                 lock held while the manifest changes (an OS lock on every platform)

Guarantees

- *Atomic*: an item is copied to a temporary name and renamed into ``pending/`` (``os.replace``), and the
  manifest is rewritten the same way, so a killed process leaves either the old or the new state, never half a
  file. (Neither is flushed to the disk on every change, for speed: the originals in the output folder are.)
- *Idempotent*: adding an item whose (destination, key) is already pending or was delivered with the same
  content (SHA-256) changes nothing; a delivered item whose content changed is queued again.
- *Nothing lost*: an item leaves ``pending/`` only after the sender returned without error; a failure is
  recorded (attempts, last error) and the copy stays for the next :meth:`Outbox.deliver`.

The outbox is generic: the DICOM push keys items by SOP Instance UID, the FHIR push by bundle identifier.
Destination strings must not contain credentials (they are written to the manifest).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .._files import atomic_path, atomic_write, sha256_file
from .._lock import exclusive_lock
from ..errors import ConfigurationError
from ..progress import ProgressCallback, report

__all__ = ["Outbox", "OutboxItem", "DeliveryReport", "PermanentFailure", "StopDelivery"]

_SCHEMA = "theratwin-outbox/1"


class PermanentFailure(Exception):
    """Raised by a sender when the destination rejected this item (retrying now will not help)."""


class StopDelivery(Exception):
    """Raised by a sender when the destination is unreachable: the remaining items are not tried."""


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


@dataclass
class OutboxItem:
    """One item of a channel (the manifest record)."""

    id: str
    key: str
    destination: str
    file: str  # path relative to the channel folder
    sha256: str
    source: str = ""
    status: str = "pending"  # "pending" | "sent"
    attempts: int = 0
    last_error: str = ""
    added: str = field(default_factory=_now)
    sent_at: str = ""


@dataclass
class DeliveryReport:
    """Outcome of :meth:`Outbox.deliver` for one destination."""

    channel: str
    destination: str
    sent: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    not_tried: list[str] = field(default_factory=list)
    already_sent: list[str] = field(default_factory=list)
    stopped: str = ""

    @property
    def pending(self) -> int:
        """Items still waiting in the outbox after this delivery."""
        return len(self.failed) + len(self.not_tried)

    @property
    def ok(self) -> bool:
        """True when nothing is pending: no item failed or was left untried in this delivery."""
        return self.pending == 0


class Outbox:
    """The outbox under ``root`` (see the module docstring).

    Parameters
    ----------
    root
        Folder of the outbox (created on first use).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # -- storage ---------------------------------------------------------------------------------------------
    def _dir(self, channel: str) -> Path:
        if not channel or "/" in channel or channel.startswith("."):
            raise ConfigurationError(f"Outbox channel names are plain words; got {channel!r}.")
        d = self.root / channel
        (d / "pending").mkdir(parents=True, exist_ok=True)
        return d

    @contextlib.contextmanager
    def _locked(self, channel: str) -> Iterator[dict[str, OutboxItem]]:
        """Hold the channel lock and yield its manifest; the manifest is saved atomically on exit if it changed."""
        d = self._dir(channel)
        with exclusive_lock(d / ".lock", what=f"the outbox {d}"):
            items = self._load(d)
            before = {k: asdict(v) for k, v in items.items()}
            yield items
            if {k: asdict(v) for k, v in items.items()} != before:  # reads (pending, items) write nothing
                self._save(d, items)

    @staticmethod
    def _load(d: Path) -> dict[str, OutboxItem]:
        path = d / "manifest.json"
        if not path.exists():
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigurationError(f"{path}: the outbox manifest is unreadable ({exc}); move it away and push "
                                     "again (the pending/ files are kept).") from None
        return {k: OutboxItem(**v) for k, v in data.get("items", {}).items()}

    @staticmethod
    def _save(d: Path, items: dict[str, OutboxItem]) -> None:
        # atomic (a killed process leaves the old or the new manifest) but not flushed to the disk each time: a
        # push rewrites it per item, and a record lost to a power cut only means one idempotent re-send
        text = json.dumps({"schema": _SCHEMA, "items": {k: asdict(v) for k, v in items.items()}}, indent=1,
                          sort_keys=True)
        atomic_write(d / "manifest.json", text, durable=False)

    @staticmethod
    def item_id(destination: str, key: str) -> str:
        """Stable identifier of (destination, key) (the first 24 hex digits of their SHA-256)."""
        return hashlib.sha256(f"{destination}\n{key}".encode()).hexdigest()[:24]

    # -- API ---------------------------------------------------------------------------------------------------
    def add(self, channel: str, source: str | Path, *, key: str, destination: str) -> OutboxItem:
        """Queue a copy of ``source`` for ``destination`` (idempotent; see the module docstring)."""
        src = Path(source)
        digest = sha256_file(src)
        iid = self.item_id(destination, key)
        d = self._dir(channel)
        with self._locked(channel) as items:
            old = items.get(iid)
            if old is not None and old.sha256 == digest and (old.status == "sent" or (d / old.file).exists()):
                return old
            rel = f"pending/{iid}{src.suffix}"
            with atomic_path(d / rel, durable=False) as tmp:  # a copy of an output already on disk
                shutil.copyfile(src, tmp)
            item = OutboxItem(iid, key, destination, rel, digest, str(src))
            items[iid] = item
            return item

    def items(self, channel: str, destination: str | None = None) -> list[OutboxItem]:
        """All records of ``channel`` (optionally for one destination), in the order they were added."""
        with self._locked(channel) as items:
            out = [i for i in items.values() if destination is None or i.destination == destination]
        return sorted(out, key=lambda i: (i.added, i.key))

    def pending(self, channel: str, destination: str | None = None) -> list[OutboxItem]:
        """Records still waiting to be delivered."""
        return [i for i in self.items(channel, destination) if i.status == "pending"]

    def path(self, channel: str, item: OutboxItem) -> Path:
        """Where the pending copy of ``item`` is."""
        return self._dir(channel) / item.file

    def mark_sent(self, channel: str, item: OutboxItem) -> None:
        """Record a delivery and drop the pending copy."""
        d = self._dir(channel)
        with self._locked(channel) as items:
            rec = items[item.id]
            rec.status = "sent"
            rec.sent_at = _now()
            rec.attempts += 1
            rec.last_error = ""
            with contextlib.suppress(FileNotFoundError):
                (d / rec.file).unlink()

    def mark_failed(self, channel: str, item: OutboxItem, error: str) -> None:
        """Record a failed attempt; the item stays pending."""
        with self._locked(channel) as items:
            rec = items[item.id]
            rec.attempts += 1
            rec.last_error = error[:500]

    def deliver(self, channel: str, destination: str, send: Callable[[Path, OutboxItem], None], *,
                progress: ProgressCallback | None = None) -> DeliveryReport:
        """Try to send every pending item of ``destination`` with ``send(path, item)``.

        ``send`` returns normally on success, raises :class:`PermanentFailure` when this item was rejected
        (the others are still tried) and :class:`StopDelivery` (or ``OSError``) when the destination is
        unreachable (the rest is left for later). Any other exception propagates after being recorded.
        """
        rep = DeliveryReport(channel, destination)
        todo = self.pending(channel, destination)
        for i, item in enumerate(todo):
            if rep.stopped:
                rep.not_tried.append(item.key)
                continue
            try:
                send(self.path(channel, item), item)
            except PermanentFailure as exc:
                self.mark_failed(channel, item, str(exc))
                rep.failed[item.key] = str(exc)
            except (StopDelivery, OSError) as exc:
                self.mark_failed(channel, item, str(exc))
                rep.failed[item.key] = str(exc)
                rep.stopped = str(exc)
            except BaseException as exc:
                self.mark_failed(channel, item, f"{type(exc).__name__}: {exc}")
                raise
            else:
                self.mark_sent(channel, item)
                rep.sent.append(item.key)
            report(progress, (i + 1) / len(todo), f"{channel}: {i + 1}/{len(todo)}")
        return rep

    def summary(self) -> dict[str, Any]:
        """``{channel: {"pending": n, "sent": n}}`` for every channel of the outbox."""
        out: dict[str, Any] = {}
        if not self.root.exists():
            return out
        for d in sorted(p for p in self.root.iterdir() if p.is_dir()):
            recs = self.items(d.name)
            out[d.name] = {"pending": sum(r.status == "pending" for r in recs),
                           "sent": sum(r.status == "sent" for r in recs)}
        return out
