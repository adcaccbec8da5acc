"""Small file helpers shared by the subpackages (standard library only, so any module may import them)."""

from __future__ import annotations

import hashlib
import os

__all__ = ["sha256_file"]


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes as a hex string, read in 1 MiB chunks (large DICOM files stay out of memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
