"""An exclusive inter-process lock on a file, the same on Windows, macOS and Linux.

Built on ``filelock`` (an OS lock: ``fcntl.flock`` on POSIX, ``msvcrt.locking`` on Windows), so the kernel
releases it when the holding process dies, even by SIGKILL: a crashed push never leaves a folder locked.
``filelock`` is imported on first use, so importing TheraTwin needs neither it nor ``fcntl``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import TheraTwinError

__all__ = ["exclusive_lock"]


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike[str], *, timeout_s: float | None = None,
                   busy: type[TheraTwinError] = TheraTwinError, what: str = "") -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) for the ``with`` block.

    Parameters
    ----------
    path
        The lock file (its content is irrelevant; it is not deleted afterwards, which would race).
    timeout_s
        How long to wait for another holder, in s: ``None`` waits for ever, ``0`` does not wait.
    busy
        Error class raised when the lock is still held after ``timeout_s``.
    what
        The start of that error's message, saying who holds the lock (e.g. ``"Another push of /data/out is
        running"``).
    """
    from filelock import FileLock, Timeout

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(p), timeout=-1 if timeout_s is None else max(0.0, float(timeout_s)))
    try:
        lock.acquire()
    except Timeout:
        waited = "" if not timeout_s else f" (waited {timeout_s:g} s)"
        raise busy(f"{what or f'{p} is locked by another TheraTwin process'}{waited}; wait until it has "
                   f"finished and try again (lock file {p}).") from None
    try:
        yield
    finally:
        lock.release()
