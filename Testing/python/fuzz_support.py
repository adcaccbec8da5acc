"""The fuzzer of the reader *and* the pipeline (shared by ``test_fuzz_pipeline.py`` and the benchmark-style run).

Real-layout studies (``scanner_synth``: an NM multi-frame SPECT, a PET slice series, each with its CT slices and a
SEG) are damaged one case at a time and run through ``read_study`` and the pipeline's fast stages
(registration, kinetics, dosimetry). Each case is classified:

``refused``   a :class:`~theratwin.errors.TheraTwinError` whose message is one printable line naming a file of the
              study (else ``bad_message``)
``same``      accepted, and every structure's TIA and mean dose equal the undamaged run's (relative 1e-4)
``warned``    accepted with different numbers, but with a warning the undamaged run did not have
``wrong``     accepted with different numbers and no new warning: a wrong result that would leave the program
``traceback`` any other exception
``hang``      longer than ``PER_CASE_LIMIT_S``

Mutations: single-file damage (truncation, random bytes in the header, a changed VR, a deleted attribute, an absurd
value of an attribute the reader uses, damaged nested items, an emptied sequence) and folder damage (a second file
with the same SOPInstanceUID and other content, a slice of another patient / frame of reference / SOP class stacked
into a series, a file removed, a FIFO, a symbolic-link loop, a zero-filled or oversize ``.dcm``, a file of junk).
They are corruptions that a reader can recognise: none replaces a valid value by another valid one (a slope
doubled, a position shifted by a millimetre, a voxel value changed: DICOM has no checksum of its pixel data),
which no reader could tell from the truth. Random bytes therefore go into the header (before the pixel data).
"""

from __future__ import annotations

import logging
import os
import random
import re
import signal
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import scanner_synth as ss
from pydicom.dataset import Dataset

from theratwin.dicom import read_study
from theratwin.errors import TheraTwinError
from theratwin.pipeline import Pipeline, PipelineConfig

FAST_STAGES = ("registration", "kinetics", "dosimetry")
PER_CASE_LIMIT_S = 20
REL_TOL = 1e-4

_ABSURD: list[object] = [0, -1, 65535, 2**31 - 1, 1e308, "nan", "inf", "-0", "abc", "", "9" * 64, "1\\2\\3\\4\\5"]
_KEYWORDS = ["Rows", "Columns", "NumberOfFrames", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
             "PixelSpacing", "SpacingBetweenSlices", "SliceThickness", "RescaleSlope", "RescaleIntercept",
             "ImagePositionPatient", "ImageOrientationPatient", "PatientWeight", "AcquisitionDuration",
             "AcquisitionDateTime", "AcquisitionDate", "AcquisitionTime", "SeriesDate", "SeriesTime", "PatientSex",
             "SamplesPerPixel", "FrameOfReferenceUID", "SeriesInstanceUID", "SOPClassUID", "Modality", "ImageType",
             "Units", "DecayCorrection", "ActualFrameDuration", "NumberOfSlices", "ImageIndex", "FrameReferenceTime",
             "TimezoneOffsetFromUTC", "PatientID", "StudyInstanceUID", "SOPInstanceUID", "CorrectedImage"]
_NESTED = [("RadiopharmaceuticalInformationSequence", ["RadionuclideTotalDose", "RadiopharmaceuticalStartDateTime",
                                                       "RadiopharmaceuticalStartTime", "RadionuclideHalfLife"]),
           ("RealWorldValueMappingSequence", ["RealWorldValueSlope", "RealWorldValueIntercept"]),
           ("DetectorInformationSequence", ["ImagePositionPatient", "ImageOrientationPatient"]),
           ("SharedFunctionalGroupsSequence", []), ("PerFrameFunctionalGroupsSequence", []),
           ("SegmentSequence", ["SegmentNumber", "SegmentLabel"])]
_VRS = [b"DS", b"UI", b"US", b"SQ", b"CS", b"DA", b"TM", b"DT", b"FD", b"IS", b"LO", b"OB", b"UN", b"SS", b"FL"]
_VR_SITES = re.compile(rb"(?<=[\x00-\xff]{4})(DS|UI|US|SQ|CS|DA|TM|DT|FD|IS|LO|SH|PN)")
_FILE_KINDS = ["truncate", "bytes", "vr", "delete", "absurd", "nested", "empty-seq"]
_FOLDER_KINDS = ["duplicate-other", "foreign", "remove", "fifo", "loop", "zeros", "oversize", "junk"]


@dataclass
class Study:
    root: Path
    files: list[Path]
    originals: dict[Path, bytes]
    baseline: dict[str, tuple[float, float]]
    baseline_warnings: set[str]


@dataclass
class Report:
    cases: int = 0
    outcomes: Counter = field(default_factory=Counter)
    findings: list[str] = field(default_factory=list)
    kinds: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    def line(self) -> str:
        o = self.outcomes
        return (f"fuzz: {self.cases} cases ({', '.join(f'{k} {v}' for k, v in sorted(self.kinds.items()))}); "
                f"refused {o['refused']}, same {o['same']}, warned {o['warned']}, wrong {o['wrong']}, "
                f"tracebacks {o['traceback']}, hangs {o['hang']}, bad messages {o['bad_message']}; "
                f"{self.seconds:.0f} s wall, {self.cpu_seconds:.0f} s CPU")


def _numbers(results) -> dict[str, tuple[float, float]]:
    out = {}
    for c in results.cycles.values():
        for s in c.structures.values():
            if s.tia_MBq_h is not None:
                out[f"{c.cycle}/{s.structure}"] = (float(s.tia_MBq_h), float(s.mean_dose_Gy or 0.0))
    return out


def _warnings(results) -> set[str]:
    return {f"{w.stage}: {w.message}" for w in results.warnings}


def run_case(root: Path) -> tuple[dict[str, tuple[float, float]], set[str]]:
    """Read ``root`` and run the fast stages; the structures' (TIA, mean dose) and the warnings."""
    study = read_study(root)
    results = Pipeline(PipelineConfig(stages=FAST_STAGES)).run(study)
    return _numbers(results), _warnings(results)


def make_studies(base: Path, layouts: tuple[str, ...] = ("siemens_rwvm", "pt_start")) -> list[Study]:
    studies = []
    for layout in layouts:
        truth = ss.build(base / layout, layout)
        numbers, warns = run_case(truth.root)
        files = truth.files
        studies.append(Study(truth.root, files, {f: f.read_bytes() for f in files}, numbers, warns))
    return studies


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
        if isinstance(value, int) and 0 <= value < 2**16:
            raw = int(value).to_bytes(2, "little")
        elif isinstance(value, float):
            raw = np.float64(value).tobytes()
        else:
            raw = str(value).encode("latin-1")[:3] or b"\xff"
        ds[tag] = pydicom.DataElement(tag, "OB" if vr == "SQ" else vr, raw)
        return
    ds[tag] = pydicom.dataelem.RawDataElement(pydicom.tag.Tag(tag), vr, len(raw), raw, 0, False, True)


def _save(ds: Dataset, fallback: bytes) -> bytes:
    out = pydicom.filebase.DicomBytesIO()
    try:
        ds.save_as(out, enforce_file_format=False)
    except Exception:  # noqa: BLE001 - pydicom refuses to encode some absurd values; truncate instead
        return fallback[: len(fallback) // 3]
    return out.getvalue()


def mutate_file(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One corruption of a valid file; returns the new bytes and a description."""
    kind = rng.choice(_FILE_KINDS)
    if kind == "truncate":
        n = rng.randrange(0, len(data))
        return data[:n], f"truncate at {n}"
    if kind == "bytes":
        # in the header only: DICOM has no checksum of pixel values, so a changed voxel is a valid voxel
        b = bytearray(data)
        end = data.rfind(b"\xe0\x7f\x10\x00")
        end = end if end > 0 else len(b)
        for _ in range(rng.randint(1, 20)):
            b[rng.randrange(0, end)] = rng.randrange(256)
        return bytes(b), "random header bytes"
    if kind == "vr":
        sites = [m.start() for m in _VR_SITES.finditer(data[132:4096])]
        if not sites:
            return data[: len(data) // 2], "truncate (no VR site)"
        pos = 132 + rng.choice(sites)
        return data[:pos] + rng.choice(_VRS) + data[pos + 2:], f"VR at {pos}"
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
    if kind == "delete":
        tag = rng.choice([e.tag for e in ds if e.tag.group != 0x0002])
        del ds[tag]
        desc = f"delete {tag}"
    elif kind == "absurd":
        kw = rng.choice(_KEYWORDS)
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
    return _save(ds, data), desc


class _Timeout(Exception):
    pass


def _alarm(signum, frame):  # pragma: no cover - only on a hang
    raise _Timeout()


def _folder_mutation(study: Study, rng: random.Random) -> tuple[list[Path], str]:
    """Apply one folder-level damage; return the paths created (to delete afterwards) and a description."""
    kind = rng.choice(_FOLDER_KINDS)
    images = [f for f in study.files if f.name != "SEG.dcm"]
    victim = rng.choice(images)
    extra = study.root / f"extra_{rng.randrange(10**6)}.dcm"
    if kind == "duplicate-other":
        ds = pydicom.dcmread(victim)
        kw = rng.choice(["RescaleSlope", "ImagePositionPatient", "PixelData", "AcquisitionDateTime"])
        if kw == "PixelData":
            arr = bytearray(ds.PixelData)
            arr[rng.randrange(len(arr))] ^= 0xFF
            ds.PixelData = bytes(arr)
        elif kw == "RescaleSlope":
            ds.RescaleSlope = "3"
        elif kw == "ImagePositionPatient" and "ImagePositionPatient" in ds:
            ds.ImagePositionPatient = [v + 1.0 for v in ds.ImagePositionPatient]
        else:
            ds.AcquisitionDateTime = "20260106101010"
        ds.save_as(extra)
        return [extra], f"second copy of {victim.name} with another {kw}"
    if kind == "foreign":
        ds = pydicom.dcmread(victim)
        kw = rng.choice(["PatientID", "FrameOfReferenceUID", "SOPClassUID", "StudyInstanceUID"])
        setattr(ds, kw, {"PatientID": "OTHER-PATIENT", "FrameOfReferenceUID": "1.2.3.4.5",
                         "SOPClassUID": "1.2.840.10008.5.1.4.1.1.4", "StudyInstanceUID": "1.2.3.4.6"}[kw])
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(extra)
        return [extra], f"foreign slice ({kw}) next to {victim.name}"
    if kind == "remove":
        victim.unlink()
        return [], f"removed {victim.name}"
    if kind == "fifo":
        os.mkfifo(extra)
        return [extra], "FIFO"
    if kind == "loop":
        other = study.root / f"loop_{rng.randrange(10**6)}.dcm"
        os.symlink(other, extra)
        os.symlink(extra, other)
        return [extra, other], "symlink loop"
    if kind == "zeros":
        with open(extra, "wb") as f:
            f.truncate(rng.choice([200, 1 << 20, 1 << 32]))
        return [extra], "zero-filled file"
    if kind == "oversize":
        with open(victim, "r+b") as f:
            f.truncate(victim.stat().st_size + (1 << 31))
        return [], f"{victim.name} padded with 2 GB"
    extra.write_bytes(bytes(rng.randrange(256) for _ in range(2048)))
    return [extra], "junk .dcm"


def _names_a_file(message: str, root: Path) -> bool:
    return str(root) in message


def run(studies: list[Study], n_cases: int, seed: int, *, folder_share: float = 0.2, cli_every: int = 0,
        log: logging.Logger | None = None) -> Report:
    """``n_cases`` damaged cases; every ``cli_every``-th also runs through ``theratwin run`` (exit status and the
    one-line error on stderr are checked)."""
    rng = random.Random(seed)
    rep = Report()
    t0, c0 = time.monotonic(), time.process_time()
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.getLogger("pydicom").disabled = True
            for case in range(n_cases):
                study = rng.choice(studies)
                created: list[Path] = []
                touched: list[Path] = []
                if rng.random() < folder_share:
                    before = {f: f.exists() for f in study.files}
                    created, desc = _folder_mutation(study, rng)
                    touched = [f for f in study.files if before[f]]
                    rep.kinds["folder"] += 1
                else:
                    target = rng.choice(study.files)
                    try:
                        data, desc = mutate_file(study.originals[target], rng)
                    except Exception as e:  # noqa: BLE001 - the mutator cannot parse some inputs itself
                        data, desc = study.originals[target][:100], f"mutator: {type(e).__name__}"
                    target.write_bytes(data)
                    touched = [target]
                    desc = f"{target.name}: {desc}"
                    rep.kinds["file"] += 1
                outcome, detail = _classify(study, desc)
                if cli_every and case % cli_every == 0 and outcome not in ("hang", "traceback"):
                    cli = _cli_case(study, outcome)
                    if cli:
                        outcome, detail = "bad_message", cli
                    rep.kinds["via CLI"] += 1
                rep.outcomes[outcome] += 1
                if outcome not in ("refused", "same", "warned"):
                    rep.findings.append(f"{outcome}: {desc}: {detail}")
                    if log:
                        log.warning("%s: %s: %s", outcome, desc, detail)
                for p in created:
                    if p.is_symlink() or p.exists():
                        p.unlink()
                for f in touched:
                    f.write_bytes(study.originals[f])
                for f in study.files:
                    if not f.exists():
                        f.write_bytes(study.originals[f])
                rep.cases = case + 1
    finally:
        signal.signal(signal.SIGALRM, old)
        logging.getLogger("pydicom").disabled = False
    rep.seconds, rep.cpu_seconds = time.monotonic() - t0, time.process_time() - c0
    return rep


def _cli_case(study: Study, outcome: str) -> str:
    """Run the same case through the CLI; return what is wrong with its exit status or stderr ("" if nothing)."""
    import contextlib
    import io
    import tempfile

    from theratwin.cli import main

    err, out = io.StringIO(), io.StringIO()
    with tempfile.TemporaryDirectory(dir=study.root.parent) as tmp:
        signal.alarm(PER_CASE_LIMIT_S)
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
                rc = main(["run", "--input", str(study.root), "--out", str(Path(tmp) / "out"), "-q",
                           "--stages", ",".join(FAST_STAGES)])
        finally:
            signal.alarm(0)
    lines = [ln for ln in err.getvalue().splitlines() if ln.startswith("theratwin:")]
    want = 2 if outcome in ("refused", "bad_message") else 0
    if rc != want:
        return f"CLI exit status {rc}, expected {want}: {lines[-1:]}"
    if rc == 2 and (len(lines) != 1 or not lines[0].isprintable() or str(study.root) not in lines[0]):
        return f"CLI error is not one printable line naming a file: {lines[:2]}"
    return ""


def _classify(study: Study, desc: str) -> tuple[str, str]:
    signal.alarm(PER_CASE_LIMIT_S)
    try:
        numbers, warns = run_case(study.root)
    except TheraTwinError as e:
        msg = str(e)
        if "\n" in msg or not msg.isprintable() or len(msg) > 2000 or not _names_a_file(msg, study.root):
            return "bad_message", msg[:300]
        return "refused", ""
    except _Timeout:
        return "hang", ""
    except Exception as e:  # noqa: BLE001 - anything else is a finding
        return "traceback", f"{type(e).__name__}: {str(e)[:300]}"
    finally:
        signal.alarm(0)
    # structure names may change (a SegmentLabel is free text); the numbers may not
    got, want = sorted(numbers.values()), sorted(study.baseline.values())
    same = len(got) == len(want) and all(np.allclose(a, b, rtol=REL_TOL, atol=0.0) for a, b in zip(got, want, strict=True))
    if same:
        return "same", ""
    new = warns - study.baseline_warnings
    if new:
        return "warned", ""
    diff = {k: (numbers.get(k), study.baseline.get(k)) for k in set(numbers) | set(study.baseline)
            if numbers.get(k) != study.baseline.get(k)}
    return "wrong", str(diff)[:300]
