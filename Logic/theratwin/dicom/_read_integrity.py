"""Series integrity: damaged, duplicated, foreign and missing instances (see :mod:`theratwin.dicom.inventory`).

Refused unless ``ReadOptions.accept_incomplete_series`` (then left out or read as they are, with a warning):
every file meant to be DICOM must be readable; two files with one SOPInstanceUID must hold the same content; all
instances of a series share PatientID, StudyInstanceUID, FrameOfReferenceUID, SOPClassUID and Modality; a PET
series holds NumberOfSlices (0054,0081) instances with distinct ImageIndex (0054,1330) values (PS3.3 PET Series
and PET Image modules), an NM stack the NumberOfSlices its instances declare.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset

from ..errors import DicomReadError
from ._read_files import content_fingerprint, same_bytes
from ._read_series import PT_STORAGE
from ._read_values import clip, get_int, get_text

if TYPE_CHECKING:  # pragma: no cover
    from ._read_model import Inventory, SeriesInfo

__all__ = ["duplicate_difference", "check_series", "unreadable_files"]

#: Attributes every instance of one series must share (a differing instance is a foreign slice).
_SERIES_IDENTITY = ("PatientID", "StudyInstanceUID", "FrameOfReferenceUID", "SOPClassUID", "Modality")


def duplicate_difference(a: Path, ds_a: Dataset, b: Path, ds_b: Dataset) -> str | None:
    """None when two files are copies of one instance; else the first attribute whose content differs."""
    if same_bytes(a, b):
        return None
    fa, fb = content_fingerprint(ds_a, a), content_fingerprint(ds_b, b)
    for key in fa:
        if fa[key] != fb.get(key):
            return key
    return None


def check_series(inv: Inventory, s: SeriesInfo) -> None:
    """Damaged, foreign and missing instances of one series: problems (or warnings when accepted)."""
    accept = inv.options.accept_incomplete_series
    # damaged (truncated / oversize) files whose header named this series
    for f, why in list(s.damaged.items()):
        if accept:
            _drop(s, f)
            s.warnings.append(f"{f.name}: {why}; left out (accept_incomplete_series)")
        else:
            inv.problems.append(DicomReadError(f"{why}. A slice of series '{s.description}' "
                                               f"({s.modality}) is damaged; re-export it.", path=f, tag="PixelData"))
    # foreign instances
    if len(s.datasets) > 1:
        for kw in _SERIES_IDENTITY:
            values = [get_text(d, kw) for d in s.datasets]
            common, n = Counter(values).most_common(1)[0]
            if n == len(values):
                continue
            if n * 2 == len(values):
                common = values[0]  # a tie: name the ones that differ from the first file
            odd = [f for f, v in zip(s.files, values, strict=True) if v != common]
            if accept and n * 2 > len(values):
                for f in odd:
                    _drop(s, f)
                s.warnings.append(f"{len(odd)} instance(s) with another {kw} ({', '.join(f.name for f in odd[:3])}) "
                                  "left out of the series (accept_incomplete_series)")
                continue
            other = clip(get_text(s.datasets[s.files.index(odd[0])], kw) or "(none)", 64)
            inv.problems.append(DicomReadError(
                f"foreign instance in series '{s.description}' ({s.modality}): this file has {kw} {other!r} but "
                f"{n} of the {len(values)} files of the series have {clip(common or '(none)', 64)!r} (another "
                "patient, frame of reference or SOP class stacked into the series). Remove it or re-export the "
                "series.", path=odd[0], tag=kw))
            return
    if s.role == "pet" and s.sop_class_uid == PT_STORAGE:
        _check_pet_count(inv, s, accept)
    elif s.role == "spect" and len(s.datasets) > 1:
        declared_nm = {get_int(d, "NumberOfSlices") for d in s.datasets}
        n_nm = declared_nm.pop() if len(declared_nm) == 1 else None
        if n_nm is not None and n_nm > 1 and n_nm != len(s.datasets):
            _incomplete(inv, s, f"the series has {len(s.datasets)} NM instances but NumberOfSlices (0054,0081) "
                        f"says {n_nm}", "NumberOfSlices", accept)


def _check_pet_count(inv: Inventory, s: SeriesInfo, accept: bool) -> None:
    """PET Series: NumberOfSlices instances per volume (PS3.3 C.8.9.1), ImageIndex 1..N (C.8.9.4)."""
    declared = {get_int(d, "NumberOfSlices") for d in s.datasets}
    if len(declared) != 1:
        inv.problems.append(DicomReadError(f"NumberOfSlices (0054,0081) differs between the instances of series "
                                           f"'{s.description}'.", path=s.first_file, tag="NumberOfSlices"))
        return
    n = declared.pop()
    time_slices = get_int(s.datasets[0], "NumberOfTimeSlices") or 1
    if n is None or n < 1:
        if "NumberOfSlices" in s.datasets[0]:
            inv.problems.append(DicomReadError("NumberOfSlices (0054,0081) is not a positive number.",
                                               path=s.first_file, tag="NumberOfSlices"))
        return
    expected = n * time_slices
    have = len(s.datasets)
    indices = [get_int(d, "ImageIndex") for d in s.datasets]
    if None not in indices:
        dup = [i for i, c in Counter(indices).items() if c > 1]
        if dup:
            f = s.files[indices.index(dup[0])]
            inv.problems.append(DicomReadError(f"two instances of series '{s.description}' have ImageIndex {dup[0]}.",
                                               path=f, tag="ImageIndex"))
            return
    if have < expected:
        missing = ""
        if None not in indices:
            gone = sorted(set(range(1, expected + 1)) - set(indices))
            missing = f"; missing ImageIndex {', '.join(map(str, gone[:8]))}" + (" ..." if len(gone) > 8 else "")
        _incomplete(inv, s, f"the series holds {have} of the {expected} slices NumberOfSlices (0054,0081) declares"
                    f"{missing}", "NumberOfSlices", accept)
    elif have > expected:
        inv.problems.append(DicomReadError(f"the series '{s.description}' holds {have} instances but "
                                           f"NumberOfSlices (0054,0081) declares {expected}: a duplicated or foreign "
                                           "slice.", path=s.first_file, tag="NumberOfSlices"))


def _incomplete(inv: Inventory, s: SeriesInfo, what: str, tag: str, accept: bool) -> None:
    if accept:
        s.warnings.append(f"{what}; read as it is (accept_incomplete_series)")
    else:
        inv.problems.append(DicomReadError(f"{what}: a slice is missing. Re-export the series, or accept it "
                                           "knowingly with accept_incomplete_series.", path=s.first_file, tag=tag))


def _drop(s: SeriesInfo, f: Path) -> None:
    i = s.files.index(f)
    del s.files[i]
    del s.datasets[i]
    s.damaged.pop(f, None)


def unreadable_files(inv: Inventory) -> None:
    for f, why in inv.unreadable:
        if inv.options.accept_incomplete_series and not inv.options.strict:
            inv.warnings.append(f"{f}: unreadable ({why}); left out (accept_incomplete_series)")
        else:
            inv.problems.append(DicomReadError(f"unreadable DICOM file: {why} It may be a slice or a time point: "
                                               "re-export it, or remove it if it does not belong here.", path=f))
