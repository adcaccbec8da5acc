"""Small file helpers shared by the subpackages (standard library only, so any module may import them).

Every output file TheraTwin writes goes through :func:`atomic_write` or :func:`atomic_path`: the content is
written to a hidden temporary file in the same folder, flushed to the disk (``fsync``) and renamed over the
target (``os.replace``, atomic on POSIX and Windows), and the folder entry is flushed too. A crash, a kill or
a full disk at any moment leaves either the previous file or the new one, never a truncated mix; a disk-full
or permission error becomes one :class:`~theratwin.errors.OutputError` line naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputError

__all__ = ["sha256_file", "atomic_write", "atomic_path", "make_dir", "output_error", "is_temporary", "TEMP_SUFFIX"]

#: Suffix of the temporary files (hidden: their names start with a dot).
TEMP_SUFFIX = ".tt-tmp"

_REASONS = {
    errno.ENOSPC: "no space left on the device; free some space or choose another output folder",
    errno.EDQUOT: "the disk quota is exceeded; free some space or choose another output folder",
    errno.EFBIG: "the file is larger than this file system or process allows",
    errno.EACCES: "permission denied; choose a folder you may write to or fix its permissions",
    errno.EPERM: "operation not permitted; choose a folder you may write to or fix its permissions",
    errno.EROFS: "the file system is read-only; choose another output folder",
}


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes as a hex string, read in 1 MiB chunks (large DICOM files stay out of memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_temporary(path: str | os.PathLike[str]) -> bool:
    """True for a temporary file of :func:`atomic_path` (left behind only when a process was killed)."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def output_error(exc: OSError, path: str | os.PathLike[str], *, kept: bool = True) -> OutputError:
    """One-line :class:`OutputError` for an ``OSError`` raised while writing ``path``."""
    reason = _REASONS.get(exc.errno or -1) or (exc.strerror or type(exc).__name__)
    tail = "; the previous version of the file is kept" if kept and Path(path).exists() else ""
    return OutputError(f"{path}: cannot write it: {reason}{tail}.")


def make_dir(path: str | os.PathLike[str]) -> Path:
    """Create a folder (and its parents) or raise a one-line :class:`OutputError` naming it."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(exc, p, kept=False) from None
    return p


#: The low-level open of a file descriptor (named so that it is not taken for a text-mode ``open``).
_open_descriptor = os.open


def _fsync_dir(folder: Path) -> None:
    """Flush a folder entry (the rename) to the disk; Windows has no directory handles to flush."""
    if os.name == "nt":
        return
    fd = _open_descriptor(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems (network mounts) refuse fsync on a folder; the rename still happened
        pass
    finally:
        os.close(fd)


def _commit(tmp: Path, path: Path, *, durable: bool = True) -> None:
    """Rename the temporary file over ``path`` (and flush the folder entry when ``durable``)."""
    for attempt in range(20):
        try:
            os.replace(tmp, path)
            break
        except PermissionError:
            # Windows refuses to replace a file another program (a viewer, a virus scanner) holds open for a
            # moment; POSIX never raises this for a rename in a folder we could write the temporary file to
            if os.name != "nt" or attempt == 19:
                raise
            time.sleep(0.05 * (attempt + 1))
    if durable:
        _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block ends without error, it becomes ``path``.

    Use it for writers that want a file name (``pydicom``'s ``save_as``, ``shutil.copyfile``). The temporary
    file is flushed to the disk before the rename unless ``durable`` is false (a copy whose original is on
    disk already: the rename alone keeps it whole when a process dies; only a power loss could cost the copy).
    On any error the temporary file is removed, the previous ``path`` is untouched, and an ``OSError`` is
    re-raised as :class:`~theratwin.errors.OutputError`.
    """
    target = Path(path)
    make_dir(target.parent)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        _commit(tmp, target, durable=durable)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise output_error(exc, target) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write(path: str | os.PathLike[str], data: bytes | str, *, encoding: str = "utf-8",
                 durable: bool = True) -> Path:
    """Write ``data`` (bytes, or text in ``encoding``) to ``path`` atomically (see :func:`atomic_path`)."""
    raw = data.encode(encoding) if isinstance(data, str) else bytes(data)
    target = Path(path)
    with atomic_path(target, durable=durable) as tmp, open(tmp, "wb") as f:
        f.write(raw)
    return target
