"""Files on disk: which to open, headers read safely, pixel data loaded later, duplicates told apart.

- Only regular files are opened: FIFOs, devices and sockets are skipped by their type (``os.stat``) before any
  ``open`` (a FIFO would block forever), and so are broken links and symbolic-link loops.
- A file is *meant to be DICOM* when it carries the ``DICM`` prefix (PS3.10 7.1) or has a DICOM-like name (no
  extension, ``.dcm``, ``.dicom``, ``.ima``, ``.dic`` or a numeric extension as in UID-named files). Other files
  (``README.txt``, viewers on a CD ...) are skipped as not DICOM. A file meant to be DICOM that cannot be read is
  *unreadable*, which the reader refuses: it may be a slice or a time point.
- Headers are parsed up to the Pixel Data element only; its declared length is checked against the file size,
  so a truncated file is named as truncated (not "not an image"), and a file far larger than its content (a
  zero-filled multi-GB ``.dcm``) is refused in milliseconds instead of being parsed for half an hour. A dataset
  that starts with zeros or command elements (group 0000) is refused before pydicom walks it.
- Pixel data are read later, when the series is stacked (:func:`load_pixel_data`).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import struct
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from ..errors import DicomReadError

__all__ = ["list_files", "read_header", "NotDicom", "load_pixel_data", "content_fingerprint",
           "PIXEL_TAGS", "TRAILING_SLACK_BYTES"]

#: Pixel Data, Float Pixel Data, Double Float Pixel Data (PS3.3 C.7.6.3).
PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
#: Bytes after the pixel data tolerated before a file counts as "far larger than its content" (padding, a
#: Data Set Trailing Padding element ...).
TRAILING_SLACK_BYTES = 1 << 20
_DICOM_SUFFIXES = {"", ".dcm", ".dicom", ".ima", ".dic"}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_HEADER_PEEK = 1 << 16


class NotDicom(Exception):
    """The file is not meant to be DICOM (skipped, not refused)."""


def _dicom_like_name(path: Path) -> bool:
    suffix = path.suffix.lower()
    return suffix in _DICOM_SUFFIXES or suffix[1:].isdigit()


def list_files(root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Regular files under ``root`` (sorted), and the special entries skipped with the reason.

    Hidden files and DICOMDIR are left out; directories reached through symbolic links are not followed (no
    loops).
    """
    if not root.is_dir():
        return _classify([root])
    found: list[Path] = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            if f.startswith(".") or f.upper() == "DICOMDIR":
                continue
            found.append(Path(dirpath) / f)
    return _classify(sorted(found))


def _classify(paths: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    regular: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for p in paths:
        try:
            mode = os.stat(p).st_mode  # follows links; raises for loops and dangling links
        except OSError as exc:
            reason = "symbolic link loop" if getattr(exc, "errno", None) == errno.ELOOP else f"cannot be opened ({exc.strerror})"
            skipped.append((p, f"{reason}; not read"))
            continue
        if stat.S_ISREG(mode):
            regular.append(p)
        else:
            kind = ("FIFO" if stat.S_ISFIFO(mode) else "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                    else "socket" if stat.S_ISSOCK(mode) else "special file")
            skipped.append((p, f"{kind}, not a regular file; not opened"))
    return regular, skipped


def _meta_end(head: bytes, start: int) -> int | None:
    """Offset just after the File Meta group (explicit VR little endian, PS3.10 7.1), or None if malformed."""
    pos = start
    while pos + 8 <= len(head):
        group, _elem = struct.unpack_from("<HH", head, pos)
        if group != 0x0002:
            return pos
        vr = head[pos + 4:pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > len(head):
                return None
            length = struct.unpack_from("<I", head, pos + 8)[0]
            pos += 12 + length
        else:
            length = struct.unpack_from("<H", head, pos + 6)[0]
            pos += 8 + length
    return pos if pos <= len(head) else None


def _check_dataset_start(head: bytes, has_prefix: bool) -> None:
    """Refuse data sets that begin with zeros or command elements before pydicom walks them."""
    start = 132 if has_prefix else 0
    pos = _meta_end(head, start) if has_prefix else 0
    if pos is None or pos + 4 > len(head):
        if pos is not None and pos == len(head) and len(head) < _HEADER_PEEK:
            return  # meta only (empty dataset): pydicom will say so
        raise DicomReadError("corrupt File Meta Information (PS3.10 7.1): group 0002 runs past the header.",
                             tag="FileMetaInformationGroupLength")
    group, element = struct.unpack_from("<HH", head, pos)
    if group == 0x0000:
        raise DicomReadError("the data set begins with zeros or command elements (group 0000), not image "
                             "attributes: the file is damaged or zero-filled.")
    if not has_prefix and group not in (0x0002, 0x0008):
        raise NotDicom("not DICOM (no DICM prefix and no DICOM element at the start)")


def _is_text(head: bytes) -> bool:
    sample = head[:512]
    return bool(sample) and all(32 <= b < 127 or b in (9, 10, 13) for b in sample)


def read_header(path: Path, *, strict: bool = False) -> tuple[Dataset, str | None]:
    """Read one file's attributes up to its pixel data.

    Returns
    -------
    (dataset, damage)
        ``damage`` is None, or why the pixel data cannot be used (truncated file, far larger than its content),
        for a file whose header could be read (the series it belongs to is then known).

    Raises
    ------
    NotDicom
        For files that are not meant to be DICOM (skipped).
    DicomReadError
        For files meant to be DICOM that cannot be read (unreadable).
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as fp:
            head = fp.read(_HEADER_PEEK)
            has_prefix = len(head) >= 132 and head[128:132] == b"DICM"
            if not has_prefix:
                if not _dicom_like_name(path) or _is_text(head):
                    raise NotDicom("not DICOM (no DICM prefix" + (", text file)" if _is_text(head) else ")"))
                if strict:
                    raise DicomReadError("no DICM prefix (PS3.10 7.1): strict mode reads only files with the "
                                         "DICOM file preamble.")
                if len(head) < 8:
                    raise DicomReadError(f"only {len(head)} bytes: not a DICOM object.")
            try:
                _check_dataset_start(head, has_prefix)
            except DicomReadError as exc:
                raise DicomReadError(str(exc), path=path, tag=exc.tag) from None
            fp.seek(0)
            ds = pydicom.filereader.read_partial(fp, stop_when=_at_pixels, defer_size="256 KB", force=True)
            pos = fp.tell()
            damage = _pixel_damage(fp, ds, pos, size)
    except (NotDicom, DicomReadError):
        raise
    except (OSError, MemoryError) as exc:
        raise DicomReadError(f"cannot be read ({type(exc).__name__}: {exc}).", path=path) from exc
    except Exception as exc:  # noqa: BLE001 - pydicom's parser raises many types on corrupt input
        raise DicomReadError(f"corrupt DICOM ({type(exc).__name__}: {exc}).", path=path) from exc
    ds.__dict__["_tt_pixel_offset"] = pos  # where load_pixel_data finds the pixel element
    return ds, damage


def _at_pixels(tag: Any, vr: Any, length: int) -> bool:
    return int(tag) in PIXEL_TAGS


def _pixel_damage(fp: Any, ds: Dataset, pos: int, size: int) -> str | None:
    """Compare the declared length of the pixel data element at ``pos`` with the file size."""
    header = fp.read(12)
    if len(header) < 8:
        return None  # no pixel data element (not an image, or the header itself ends the file)
    implicit, little = _encoding(ds)
    endian = "<" if little else ">"
    group, element = struct.unpack_from(endian + "HH", header, 0)
    if (group << 16 | element) not in PIXEL_TAGS:
        return None
    if implicit:
        length = struct.unpack_from(endian + "I", header, 4)[0]
        body = pos + 8
    else:
        if len(header) < 12:
            return "truncated inside the Pixel Data element header"
        length = struct.unpack_from(endian + "I", header, 8)[0]
        body = pos + 12
    if length == 0xFFFFFFFF:
        return None  # encapsulated (compressed) fragments: their decoder checks them
    end = body + length
    if end > size:
        return (f"truncated: Pixel Data (7FE0,0010) declares {length} bytes but the file ends {end - size} bytes "
                "short of them")
    if size - end > max(TRAILING_SLACK_BYTES, 0.1 * end):
        return (f"far larger than its content: {size} bytes on disk but the DICOM object ends at byte {end} "
                "(data after the pixel data)")
    return None


def _encoding(ds: Dataset) -> tuple[bool, bool]:
    enc = getattr(ds, "original_encoding", None)
    if enc and enc[0] is not None and enc[1] is not None:
        return bool(enc[0]), bool(enc[1])
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None:
        try:
            return bool(ts.is_implicit_VR), bool(ts.is_little_endian)
        except (AttributeError, ValueError):
            pass
    return True, True


def load_pixel_data(ds: Dataset, path: Path | None) -> None:
    """Put the file's Pixel Data element into ``ds`` (read by :func:`read_header`, which stops before it)."""
    if any(ds.get(t) is not None for t in PIXEL_TAGS) or path is None:
        return
    pos = ds.__dict__.get("_tt_pixel_offset")
    try:
        with open(path, "rb") as fp:
            if pos is not None:
                fp.seek(pos)
                header = fp.read(12)
                implicit, little = _encoding(ds)
                endian = "<" if little else ">"
                if len(header) >= 8:
                    group, element = struct.unpack_from(endian + "HH", header, 0)
                    tag = group << 16 | element
                    if tag in PIXEL_TAGS:
                        if implicit:
                            length = struct.unpack_from(endian + "I", header, 4)[0]
                            vr = {0x7FE00008: "OF", 0x7FE00009: "OD"}.get(
                                tag, "OW" if (ds.get("BitsAllocated") or 16) > 8 else "OB")
                            fp.seek(pos + 8)
                        else:
                            vr = header[4:6].decode("ascii", "replace")
                            length = struct.unpack_from(endian + "I", header, 8)[0]
                            fp.seek(pos + 12)
                        if length != 0xFFFFFFFF:
                            data = fp.read(length)
                            if len(data) != length:
                                raise DicomReadError(f"truncated: Pixel Data holds {len(data)} of {length} bytes.",
                                                     path=path, tag="PixelData")
                            ds.add_new(tag, vr, data)
                            return
            # encapsulated data (or no recorded offset): let pydicom parse the whole file once
            full = pydicom.dcmread(path, force=True)
    except DicomReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - the file changed or is corrupt; name it
        raise DicomReadError(f"pixel data cannot be read ({type(exc).__name__}: {exc}).", path=path,
                             tag="PixelData") from exc
    for t in PIXEL_TAGS:
        if t in full:
            ds[t] = full[t]
            return
    raise DicomReadError("no pixel data.", path=path, tag="PixelData")


#: Attributes whose values decide what the reader computes; two copies of one instance must agree on them.
_FINGERPRINT = ("SOPClassUID", "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
                "Modality", "Rows", "Columns", "NumberOfFrames", "BitsAllocated", "BitsStored", "PixelRepresentation",
                "PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient", "SliceThickness",
                "SpacingBetweenSlices", "RescaleSlope", "RescaleIntercept", "Units", "DecayCorrection",
                "DecayCorrectionDateTime", "AcquisitionDateTime", "AcquisitionDate", "AcquisitionTime", "SeriesDate",
                "SeriesTime", "AcquisitionDuration", "ActualFrameDuration", "TimezoneOffsetFromUTC",
                "RadiopharmaceuticalInformationSequence", "RealWorldValueMappingSequence",
                "DetectorInformationSequence", "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence",
                "SegmentSequence", "ImageType")


def content_fingerprint(ds: Dataset, path: Path) -> dict[str, str]:
    """Digest per attribute the reader uses, plus the decoded pixel values (keyword -> hex digest)."""
    out: dict[str, str] = {}
    for kw in _FINGERPRINT:
        try:
            value = ds[kw].value if kw in ds else None
            text = repr(value)
        except Exception as exc:  # noqa: BLE001 - a corrupt value is content too
            text = f"<undecodable {type(exc).__name__}>"
        out[kw] = hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()
    try:
        load_pixel_data(ds, path)
        arr = ds.pixel_array
        out["PixelData"] = hashlib.sha256(arr.tobytes()).hexdigest() + str(arr.shape) + str(arr.dtype)
    except Exception as exc:  # noqa: BLE001 - undecodable pixels differ from decodable ones
        out["PixelData"] = f"<undecodable {type(exc).__name__}>"
    finally:
        for t in PIXEL_TAGS:
            if t in ds:
                del ds[t]
    return out


def same_bytes(a: Path, b: Path) -> bool:
    """True when two files hold the same bytes (cheap size check first)."""
    try:
        if a.stat().st_size != b.stat().st_size:
            return False
        return _sha256(a) == _sha256(b)
    except OSError:
        return False


def _sha256(p: Path) -> str:
    from .._files import sha256_file

    return sha256_file(p)
