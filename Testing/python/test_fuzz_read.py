"""Fuzz the DICOM reader: thousands of corrupted files, no crash, no hang, only documented errors.

Two tiny valid studies (one NM SPECT time point, its two-slice CT and a SEG, written with the demo writers; and
the same session as a two-slice PET series with a Legacy Converted Enhanced CT)
is corrupted one file at a time: truncation, random byte changes, removed attributes, wrong VRs, absurd values
and emptied sequences. After each corruption ``scan().describe()`` and ``read_study`` must either succeed or
raise a :class:`~theratwin.errors.TheraTwinError`; anything else (or a call longer than a few seconds) fails.
The loop is bounded by CPU time (15 s; wall-clock cap 90 s) and up to 2000 cases, and must reach 1000.
"""

from __future__ import annotations

import logging
import os
import random
import re
import signal
import tempfile
import time
import warnings
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from theratwin.demo import _dicom
from theratwin.dicom import read_study, scan
from theratwin.errors import TheraTwinError
from theratwin.study.model import Study

# Bounded by CPU time (stable on a shared, loaded machine), with a wall-clock cap and a case cap.
CPU_BUDGET_S = 15.0
WALL_CAP_S = 90.0
MAX_CASES = 2000
MIN_CASES = 1000
PER_CALL_LIMIT_S = 10


def _tiny_study(root: Path) -> list[Path]:
    uid = _dicom.UidFactory("fuzz")
    patient = {"id": "FUZZ-1", "name": "Fuzz^Test", "issuer": "T", "birth_date": "19600101", "sex": "M",
               "age": "065Y", "weight_kg": 80.0, "height_m": 1.8}
    start = datetime(2025, 1, 6, 9, 30, 0)
    adm = {"radiopharmaceutical": "PSMA-617", "start": start, "activity_MBq": 7400.0}
    rng = np.random.default_rng(0)
    files: list[Path] = []
    for i, hours in enumerate((24.0,)):
        acq = start + timedelta(hours=hours)
        folder = root / f"tp{i}"
        study = {"uid": uid("study", i), "datetime": acq, "id": str(i), "accession": f"A{i}", "description": "x"}
        frame = uid("for", i)
        ct_series = {"uid": uid("ct", i), "number": 2, "datetime": acq, "modality": "CT", "description": "CT",
                     "frame_of_reference_uid": frame}
        hu = rng.integers(-1000, 1000, (2, 16, 16)).astype(np.float32)
        cts = _dicom.write_ct_series(folder / "CT", hu, origin_mm=(-20.0, -20.0, -1.25), voxel_mm=2.5,
                                     patient=patient, study=study, series=ct_series, acquisition_start=acq, uid=uid)
        nm_series = {"uid": uid("nm", i), "number": 3, "datetime": acq, "modality": "NM", "description": "SPECT",
                     "frame_of_reference_uid": frame}
        _dicom.write_nm_spect(folder / "NM.dcm", rng.uniform(0, 5e4, (1, 8, 8)), origin_mm=(-18.75, -18.75, 0.0),
                              voxel_mm=5.0, patient=patient, study=study, series=nm_series, acquisition_start=acq,
                              acquisition_duration_s=1200.0, administration=adm, n_projections=60,
                              sop_uid=uid("nm-sop", i))
        if i == 0:
            masks = {"kidneys": np.zeros((2, 16, 16), bool), "lesion_bone_1": np.zeros((2, 16, 16), bool)}
            masks["kidneys"][0:2, 3:9, 3:9] = True
            masks["lesion_bone_1"][1, 10:13, 10:13] = True
            seg_series = dict(ct_series, uid=uid("seg"), number=100, modality="SEG", description="SEG")
            _dicom.write_seg(folder / "SEG.dcm", cts, masks, series=seg_series, sop_uid=uid("seg-sop"), uid=uid)
    files = sorted(root.rglob("*.dcm"))
    return files


_ABSURD: list[object] = [0, -1, 65535, 2**31 - 1, 1e308, "nan", "inf", "-0", "abc", "", "9" * 64, "1\\2\\3\\4\\5"]
_NUMERIC = ["Rows", "Columns", "NumberOfFrames", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
            "PixelSpacing", "SpacingBetweenSlices", "SliceThickness", "RescaleSlope", "RescaleIntercept",
            "ImagePositionPatient", "ImageOrientationPatient", "PatientWeight", "AcquisitionDuration",
            "AcquisitionDateTime", "AcquisitionDate", "AcquisitionTime", "SeriesDate", "SeriesTime", "PatientSex",
            "SamplesPerPixel", "FrameOfReferenceUID", "SeriesInstanceUID", "SOPClassUID", "Modality", "ImageType"]
_NESTED = [("RadiopharmaceuticalInformationSequence", ["RadionuclideTotalDose", "RadiopharmaceuticalStartDateTime",
                                                       "RadiopharmaceuticalStartTime"]),
           ("RealWorldValueMappingSequence", ["RealWorldValueSlope", "RealWorldValueIntercept"]),
           ("DetectorInformationSequence", ["ImagePositionPatient", "ImageOrientationPatient"]),
           ("SharedFunctionalGroupsSequence", []), ("PerFrameFunctionalGroupsSequence", []),
           ("SegmentSequence", ["SegmentNumber", "SegmentLabel"])]
_VRS = [b"DS", b"UI", b"US", b"SQ", b"CS", b"DA", b"TM", b"DT", b"FD", b"IS", b"LO", b"OB", b"UN", b"SS", b"FL"]
_VR_SITES = re.compile(rb"(?<=[\x00-\xff]{4})(DS|UI|US|SQ|CS|DA|TM|DT|FD|IS|LO|SH|PN)")


def _mutate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One corruption of a valid file; returns the new bytes and a description."""
    kind = rng.choice(["truncate", "bytes", "delete", "absurd", "nested", "vr", "empty-seq"])
    if kind == "truncate":
        n = rng.randrange(0, len(data))
        return data[:n], f"truncate at {n}"
    if kind == "bytes":
        b = bytearray(data)
        for _ in range(rng.randint(1, 20)):
            # mostly the header, where the structure lives
            pos = rng.randrange(0, min(len(b), 4096)) if rng.random() < 0.8 else rng.randrange(0, len(b))
            b[pos] = rng.randrange(256)
        return bytes(b), "random bytes"
    if kind == "vr":
        sites = [m.start() for m in _VR_SITES.finditer(data[132:4096])]
        if not sites:
            return data[: len(data) // 2], "truncate (no VR site)"
        pos = 132 + rng.choice(sites)
        return data[:pos] + rng.choice(_VRS) + data[pos + 2:], f"VR at {pos}"
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
    if kind == "delete":
        tags = [e.tag for e in ds if e.tag.group != 0x0002]
        tag = rng.choice(tags)
        del ds[tag]
        desc = f"delete {tag}"
    elif kind == "absurd":
        kw = rng.choice(_NUMERIC)
        value = rng.choice(_ABSURD)
        _force(ds, kw, value)
        desc = f"{kw}={value!r}"
    elif kind == "nested":
        seq, kws = rng.choice(_NESTED)
        if seq not in ds or not ds[seq].value:
            return data[:-rng.randint(1, 100)], "truncate tail"
        item = ds[seq].value[0]
        if kws and rng.random() < 0.8:
            kw = rng.choice(kws)
            value = rng.choice(_ABSURD)
            _force(item, kw, value)
            desc = f"{seq}>{kw}={value!r}"
        else:
            ds[seq].value = []
            desc = f"{seq} emptied"
    else:
        seqs = [e.keyword for e in ds if e.VR == "SQ"]
        if not seqs:
            return data[:-1], "truncate 1"
        kw = rng.choice(seqs)
        ds[kw].value = []
        desc = f"{kw} emptied"
    out = pydicom.filebase.DicomBytesIO()
    try:
        ds.save_as(out, enforce_file_format=False)
    except Exception:  # noqa: BLE001 - pydicom refuses to encode some absurd values; fall back to bytes
        return data[: len(data) // 3], desc + " (unencodable; truncated instead)"
    return out.getvalue(), desc


def _force(ds: Dataset, keyword: str, value: object) -> None:
    """Set an attribute to a value whatever its VR (as raw text when pydicom would refuse the value)."""
    tag = pydicom.datadict.tag_for_keyword(keyword)
    if tag is None:
        return
    vr = pydicom.datadict.dictionary_VR(tag)
    raw = str(value).encode("latin-1")
    if len(raw) % 2:
        raw += b" "
    if vr in ("US", "SS", "UL", "SL", "FD", "FL", "SQ", "OB", "OW"):
        # numeric binary VRs: write bytes of a wrong length or an extreme number
        raw = rng_bytes(value)
        ds[tag] = pydicom.DataElement(tag, "OB" if vr == "SQ" else vr, raw if vr != "SQ" else raw)
        return
    ds[tag] = pydicom.dataelem.RawDataElement(pydicom.tag.Tag(tag), vr, len(raw), raw, 0, False, True)


def rng_bytes(value: object) -> bytes:
    if isinstance(value, int) and 0 <= value < 2**16:
        return int(value).to_bytes(2, "little")
    if isinstance(value, float):
        return np.float64(value).tobytes()
    return str(value).encode("latin-1")[:3] or b"\xff"


def _pet_variant(nm_root: Path, root: Path) -> Path:
    """The same session with its SPECT rewritten as a two-slice PET series (ADMIN decay correction, BQML) and its
    CT as one Legacy Converted Enhanced CT object."""
    import highdicom as hd
    from test_dicom_read_pet import _write_pet

    nm = pydicom.dcmread(next(nm_root.rglob("NM.dcm")))
    (root / "PT").mkdir(parents=True)
    (root / "CT").mkdir()
    cts = [pydicom.dcmread(f) for f in sorted(next(nm_root.rglob("CT")).glob("*.dcm"))]
    uid = _dicom.UidFactory("fuzz-enhanced")
    hd.legacy.LegacyConvertedEnhancedCTImage(cts, uid("series"), 2, uid("sop"), 1).save_as(root / "CT" / "CT.dcm")
    planes = np.random.default_rng(1).uniform(0, 4e4, (2, 8, 8))
    _write_pet(root / "PT", nm, planes, units="BQML", decay="ADMIN")
    return root


class _Timeout(Exception):
    pass


def _alarm(signum, frame):  # pragma: no cover - only on a hang
    raise _Timeout()


@pytest.fixture
def fuzz_dir(tmp_path: Path):
    """A scratch folder in memory when the system has one (thousands of rewrites), else under tmp_path."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        with tempfile.TemporaryDirectory(dir=shm, prefix="theratwin-fuzz-") as d:
            yield Path(d)
    else:  # pragma: no cover - systems without /dev/shm
        yield tmp_path


def test_fuzz_reader(fuzz_dir: Path) -> None:
    root = fuzz_dir / "study"
    files = _tiny_study(root)
    pet_root = _pet_variant(root, fuzz_dir / "pet-study")
    studies = {root: files, pet_root: sorted(pet_root.rglob("*.dcm"))}
    for r in studies:
        assert isinstance(read_study(r), Study)  # the valid studies read
    originals = {f: f.read_bytes() for fs in studies.values() for f in fs}
    rng = random.Random(20250303)
    failures: list[str] = []
    outcomes = {"ok": 0, "refused": 0}
    n = 0
    t0, c0 = time.monotonic(), time.process_time()
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.getLogger("pydicom").disabled = True
            while (time.process_time() - c0 < CPU_BUDGET_S and time.monotonic() - t0 < WALL_CAP_S
                   and n < MAX_CASES):
                study_root = rng.choice(list(studies))
                target = rng.choice(studies[study_root])
                try:
                    data, desc = _mutate(originals[target], rng)
                except Exception as e:  # noqa: BLE001 - the mutator itself cannot parse some inputs; skip those
                    desc = f"mutator: {type(e).__name__}"
                    data = originals[target][:100]
                target.write_bytes(data)
                signal.alarm(PER_CALL_LIMIT_S)
                try:
                    if n % 4 == 0:  # the inventory report must cope as well
                        scan(study_root).describe()
                    read_study(study_root)
                    outcomes["ok"] += 1
                except TheraTwinError:
                    outcomes["refused"] += 1
                except _Timeout:
                    failures.append(f"HANG: {target.name}: {desc}")
                except Exception as e:  # noqa: BLE001 - any other exception is a finding
                    failures.append(f"{type(e).__name__}: {e} <- {target.name}: {desc}")
                finally:
                    signal.alarm(0)
                target.write_bytes(originals[target])
                n += 1
    finally:
        signal.signal(signal.SIGALRM, old)
        logging.getLogger("pydicom").disabled = False
    print(f"fuzz: {n} corrupted files, {outcomes['ok']} read, {outcomes['refused']} refused with a TheraTwinError, "
          f"{len(failures)} escaped; {time.process_time() - c0:.1f} s CPU, {time.monotonic() - t0:.1f} s wall")
    assert not failures, f"{len(failures)} of {n} cases escaped:\n" + "\n".join(failures[:20])
    assert n >= MIN_CASES, f"only {n} cases in {time.process_time() - c0:.0f} s CPU"
    assert outcomes["refused"] > 0 and outcomes["ok"] > 0


@pytest.mark.parametrize("size", [0, 1, 127, 128, 131, 132, 200])
def test_tiny_files_are_refused_cleanly(tmp_path: Path, size: int) -> None:
    (tmp_path / "x.dcm").write_bytes(b"\x00" * max(size - 4, 0) + (b"DICM" if size >= 132 else b"")[: size])
    with pytest.raises(TheraTwinError):
        read_study(tmp_path)
