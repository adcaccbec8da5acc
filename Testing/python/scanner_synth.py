"""Tiny synthetic patients written as the scanners and workstations of real sites write them.

One phantom (a hot "kidney" block and a warm background in a water cylinder), imaged at one or more time points
after one administration, is written in the header layout of a vendor variant (see ``LAYOUTS``). The activity
concentration at each acquisition start is known exactly (``Truth``), so a test can check that a read is right,
not only that it does not crash. Everything is built here from the DICOM definitions (PS3.3 NM Image, PET Image,
Real World Value Mapping, Enhanced/Legacy Converted PET); nothing is copied from vendor files.

Layouts
-------
``siemens_rwvm``    NM multi-frame, Real World Value Mapping item in Bq/ml (UCUM), frames along SpacingBetweenSlices
                    (xSPECT Quant / Symbia Intevo exports)
``ge_bqml``         NM multi-frame, Units BQML with Rescale Slope (Q.Metrix / StarGuide Bq/mL exports)
``nm_counts``       NM multi-frame in counts, no Bq/ml mapping (needs the camera's sensitivity)
``nm_stack``        NM single-frame objects, one per slice, Bq/ml mapping per file (Hermes/MIM-style exports)
``pt_start``        PT single-frame slices, Units BQML, DecayCorrection START, ImageIndex, FrameReferenceTime
``pt_admin``        the same referenced to the administration (DecayCorrection ADMIN)
``pt_none``         two beds with their own AcquisitionTime/ActualFrameDuration, DecayCorrection NONE
``pt_cnts_philips`` PT in counts with Philips' Activity Concentration Scale Factor (7053,1009)
``pt_enhanced``     Legacy Converted Enhanced PET (highdicom), per-frame Pixel Value Transformation (rescale)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from theratwin import nuclides

NM_STORAGE = "1.2.840.10008.5.1.4.1.1.20"
PT_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
LAYOUTS = ("siemens_rwvm", "ge_bqml", "nm_counts", "nm_stack", "pt_start", "pt_admin", "pt_none",
           "pt_cnts_philips", "pt_enhanced")

#: Emission grid (z, y, x) and voxel (mm); CT grid and voxel.
EM_SHAPE = (8, 12, 12)
EM_VOXEL = 6.0
CT_SHAPE = (12, 24, 24)
CT_VOXEL = (3.0, 3.0, 4.0)  # x, y, z
NUCLIDE_CODES = {"Lu-177": ("447553000", "SCT", "^177^Lutetium"), "F-18": ("77004003", "SCT", "^18^Fluorine"),
                 "Y-90": ("14691008", "SCT", "^90^Yttrium"), "Ga-68": ("35337001", "SCT", "^68^Gallium")}
SENSITIVITY_CPS_PER_MBQ = 2.0  # the synthetic camera's volume sensitivity (counts layouts; fits 16 bits)
PHILIPS_FACTOR = 3.7  # Bq/mL per count value (pt_cnts_philips)


@dataclass
class TimePointTruth:
    acquisition_start: datetime  # aware
    duration_s: float
    concentration_Bq_per_mL: np.ndarray  # at the acquisition start, (z, y, x) on the emission grid
    emission_files: list[Path] = field(default_factory=list)
    ct_files: list[Path] = field(default_factory=list)


@dataclass
class Truth:
    layout: str
    nuclide: str
    administered_MBq: float
    administration_start: datetime  # aware
    time_points: list[TimePointTruth]
    root: Path
    seg_file: Path | None = None

    @property
    def files(self) -> list[Path]:
        return sorted(self.root.rglob("*.dcm"))


def phantom(scale_Bq_per_mL: float) -> np.ndarray:
    """A warm water cylinder with a hot block (the 'kidneys'), on the emission grid."""
    z, y, x = np.indices(EM_SHAPE)
    c = np.where((y - 5.5) ** 2 + (x - 5.5) ** 2 <= 25, 1.0, 0.0)
    c[2:6, 3:7, 2:6] = 6.0
    return scale_Bq_per_mL * c


def em_origin() -> tuple[float, float, float]:
    return (-EM_VOXEL * EM_SHAPE[2] / 2 + EM_VOXEL / 2, -EM_VOXEL * EM_SHAPE[1] / 2 + EM_VOXEL / 2, 0.0)


def ct_origin() -> tuple[float, float, float]:
    return (-CT_VOXEL[0] * CT_SHAPE[2] / 2 + CT_VOXEL[0] / 2, -CT_VOXEL[1] * CT_SHAPE[1] / 2 + CT_VOXEL[1] / 2,
            -4.0)


def _dt(d: datetime, offset: bool) -> str:
    text = d.strftime("%Y%m%d%H%M%S.%f")
    if offset and d.tzinfo is not None:
        text += d.strftime("%z")
    return text


def _base(sop_class: str, sop_uid: str, ctx: dict, series: dict) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Synth^Patient", ctx["patient_id"], "19600101", "M"
    ds.PatientWeight = "78"
    ds.StudyInstanceUID, ds.StudyID, ds.AccessionNumber = ctx["study_uid"], "1", "A1"
    local = series["datetime"]
    ds.StudyDate, ds.StudyTime = local.strftime("%Y%m%d"), local.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series["uid"], series["number"], series["desc"]
    ds.SeriesDate, ds.SeriesTime = local.strftime("%Y%m%d"), local.strftime("%H%M%S.%f")
    ds.Modality = series["modality"]
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = ctx["for_uid"], ""
    ds.Manufacturer, ds.ManufacturerModelName = ctx["manufacturer"], ctx["model"]
    ds.DeviceSerialNumber, ds.StationName = "SN-42", "SYNTH1"
    if ctx.get("tz_tag"):
        ds.TimezoneOffsetFromUTC = ctx["tz_tag"]
    return ds


def _isotope(ds: Dataset, ctx: dict, *, pet: bool) -> None:
    rp = Dataset()
    nuc = ctx["nuclide"]
    if ctx.get("code", True) and nuc in NUCLIDE_CODES:
        value, scheme, meaning = NUCLIDE_CODES[nuc]
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
        rp.RadionuclideCodeSequence = [code]
    rp.Radiopharmaceutical = ctx.get("radiopharmaceutical", "PSMA-617")
    rp.RadiopharmaceuticalStartDateTime = _dt(ctx["injection_dicom"], ctx.get("dt_offsets", False))
    rp.RadiopharmaceuticalStartTime = ctx["injection_dicom"].strftime("%H%M%S")
    if ctx.get("half_life", True):
        rp.RadionuclideHalfLife = f"{nuclides.get(nuc).half_life_h * 3600:.1f}"
    # MBq in the NM Isotope module (PS3.3 C.8.4.10.1.7), Bq in the PET one (C.8.9.2)
    rp.RadionuclideTotalDose = f"{ctx['activity_MBq'] * (1e6 if pet else 1):.6g}"
    ds.RadiopharmaceuticalInformationSequence = [rp]


def _acq(ds: Dataset, acq: datetime, ctx: dict) -> None:
    ds.AcquisitionDate, ds.AcquisitionTime = acq.strftime("%Y%m%d"), acq.strftime("%H%M%S.%f")
    ds.AcquisitionDateTime = _dt(acq, ctx.get("dt_offsets", False))


def write_ct(folder: Path, ctx: dict, acq: datetime, *, slices: int = CT_SHAPE[0], air: bool = False) -> list[Path]:
    """CT slices (water cylinder, soft-tissue block); ``air``: nothing but air (no body); ``slices``: fewer slices."""
    folder.mkdir(parents=True, exist_ok=True)
    series = {"uid": generate_uid(), "number": 2, "desc": "CT AC", "modality": "CT", "datetime": acq}
    z, y, x = np.indices(CT_SHAPE)
    hu = np.where((y - 11.5) ** 2 + (x - 11.5) ** 2 <= 100, 0.0, -1000.0)
    hu[:, 8:12, 10:14] = np.where(hu[:, 8:12, 10:14] > -500, 40.0, -1000.0)
    if air:
        hu[:] = -1000.0
    out = []
    origin = ct_origin()
    for k in range(slices):
        ds = _base(CT_STORAGE, generate_uid(), ctx, series)
        _acq(ds, acq, ctx)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + k * CT_VOXEL[2]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [CT_VOXEL[1], CT_VOXEL[0]]
        ds.SliceThickness = CT_VOXEL[2]
        ds.SliceLocation = origin[2] + k * CT_VOXEL[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = CT_SHAPE[1], CT_SHAPE[2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.KVP = "120"
        ds.PixelData = (hu[k] + 1024).astype("<u2").tobytes()
        path = folder / f"CT_{k + 1:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


def _nm_common(ds: Dataset, ctx: dict, acq: datetime, duration_s: float) -> None:
    _acq(ds, acq, ctx)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "RECON TOMO", "EMISSION"]
    ds.AcquisitionDuration = float(duration_s)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelSpacing = [EM_VOXEL, EM_VOXEL]
    ds.SliceThickness = EM_VOXEL
    _isotope(ds, ctx, pet=False)


def _rwvm(slope: float) -> Dataset:
    rw = Dataset()
    rw.RealWorldValueFirstValueMapped, rw.RealWorldValueLastValueMapped = 0, 65535
    rw.RealWorldValueIntercept, rw.RealWorldValueSlope = 0.0, slope
    rw.LUTExplanation, rw.LUTLabel = "Bq/ml", "BQML"
    unit = Dataset()
    unit.CodeValue, unit.CodingSchemeDesignator, unit.CodeMeaning = "Bq/ml", "UCUM", "Becquerels/milliliter"
    rw.MeasurementUnitsCodeSequence = [unit]
    return rw


def _quantise(values: np.ndarray) -> tuple[np.ndarray, float]:
    slope = float(f"{max(float(values.max()), 1e-6) / 60000.0:.10g}")
    return np.clip(np.rint(values / slope), 0, 65535).astype(np.uint16), slope


def write_nm_multiframe(path: Path, values: np.ndarray, ctx: dict, acq: datetime, duration_s: float, *,
                        mapping: str) -> None:
    """``mapping``: "rwvm" (Bq/ml item), "units" (Units BQML + Rescale Slope) or "counts" (stored counts)."""
    series = {"uid": generate_uid(), "number": 3, "desc": "SPECT quant", "modality": "NM", "datetime": acq}
    ds = _base(NM_STORAGE, generate_uid(), ctx, series)
    _nm_common(ds, ctx, acq, duration_s)
    stored, slope = _quantise(values)
    if mapping == "counts":
        stored, slope = np.rint(values).astype(np.uint16), 1.0
    nz, ny, nx = stored.shape
    ds.NumberOfFrames, ds.NumberOfSlices = nz, nz
    ds.FrameIncrementPointer = [0x00540080]
    ds.SliceVector = list(range(1, nz + 1))
    ds.Rows, ds.Columns = ny, nx
    ds.SpacingBetweenSlices = EM_VOXEL
    det = Dataset()
    det.ImagePositionPatient = list(em_origin())
    det.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.DetectorInformationSequence = [det]
    if mapping == "rwvm":
        ds.RealWorldValueMappingSequence = [_rwvm(slope)]
        ds.CorrectedImage = ["ATTN", "SCAT", "DECY"]
    elif mapping == "units":
        ds.Units = "BQML"
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", "0"
        ds.CorrectedImage = ["ATTN", "SCAT", "DECY"]
    else:
        ds.CorrectedImage = ["ATTN", "SCAT"]  # raw counts: not decay-corrected
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_nm_stack(folder: Path, values: np.ndarray, ctx: dict, acq: datetime, duration_s: float) -> list[Path]:
    series = {"uid": generate_uid(), "number": 3, "desc": "SPECT quant stack", "modality": "NM", "datetime": acq}
    out = []
    origin = em_origin()
    for k, plane in enumerate(values):
        ds = _base(NM_STORAGE, generate_uid(), ctx, series)
        _nm_common(ds, ctx, acq, duration_s)
        stored, slope = _quantise(plane)
        ds.NumberOfFrames, ds.NumberOfSlices = 1, values.shape[0]
        ds.Rows, ds.Columns = plane.shape
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + k * EM_VOXEL]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.RealWorldValueMappingSequence = [_rwvm(slope)]
        ds.PixelData = stored.tobytes()
        path = folder / f"NM_{k + 1:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


def write_pt(folder: Path, stored_values: np.ndarray, ctx: dict, acq: datetime, duration_s: float, *, units: str,
             decay: str, beds: list[tuple[slice, datetime, float]] | None = None, extra: dict | None = None
             ) -> list[Path]:
    """PET slices; ``beds`` gives (slices, start, duration) per bed for multi-bed series (AcquisitionTime per
    bed, FrameReferenceTime = decay-weighted mid-frame offset from the Series time)."""
    series_dt = acq
    series = {"uid": generate_uid(), "number": 4, "desc": f"PET {units} {decay}", "modality": "PT",
              "datetime": series_dt}
    lam_per_s = math.log(2) / (nuclides.get(ctx["nuclide"]).half_life_h * 3600)
    out = []
    origin = em_origin()
    n = stored_values.shape[0]
    beds = beds or [(slice(0, n), acq, duration_s)]
    for k, plane in enumerate(stored_values):
        bed_start, bed_duration = next((t, d) for sl, t, d in beds if sl.start <= k < sl.stop)
        ds = _base(PT_STORAGE, generate_uid(), ctx, series)
        _acq(ds, bed_start, ctx)
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.Units, ds.DecayCorrection, ds.CountsSource = units, decay, "EMISSION"
        ds.CorrectedImage = ["DECY", "ATTN", "SCAT"] if decay != "NONE" else ["ATTN", "SCAT"]
        ds.NumberOfSlices, ds.ImageIndex, ds.InstanceNumber = n, k + 1, k + 1
        ds.ActualFrameDuration = int(round(bed_duration * 1000))
        # decay-weighted time within the frame where the instantaneous activity equals the average
        x = lam_per_s * bed_duration
        t_star = -math.log((1 - math.exp(-x)) / x) / lam_per_s
        ds.FrameReferenceTime = f"{((bed_start - series_dt).total_seconds() + t_star) * 1000:.1f}"
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + k * EM_VOXEL]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [EM_VOXEL, EM_VOXEL]
        ds.SliceThickness = EM_VOXEL
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        slope = max(float(plane.max()), 1e-6) / 32000.0
        slope = float(f"{slope:.10g}")
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", "0"
        ds.PixelData = np.rint(plane / slope).astype("<i2").tobytes()
        _isotope(ds, ctx, pet=True)
        for key, value in (extra or {}).items():
            setattr(ds, key, value)
        path = folder / f"PT_{k + 1:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


def build(root: Path, layout: str = "siemens_rwvm", *, nuclide: str = "Lu-177", activity_MBq: float = 7400.0,
          hours: tuple[float, ...] = (24.0,), duration_s: float = 1200.0, fov_fraction: float = 0.4,
          site_offset_h: float = 1.0, tz_tag: bool = True, dt_offsets: bool = False,
          injection_offset_h: float | None = None, with_seg: bool = True, code: bool = True,
          half_life: bool = True, start: datetime | None = None, ct_air: bool = False,
          thin_ct: tuple[int, ...] = (), radiopharmaceutical: str = "PSMA-617") -> Truth:
    """Write one patient (one cycle) in ``layout``; return the exact truth.

    The patient holds ``fov_fraction`` of the administered activity (decayed) in the field of view. The site's
    clock runs at UTC+``site_offset_h``: all DA/TM/DT are written in that zone, with TimezoneOffsetFromUTC when
    ``tz_tag`` and as DT offsets when ``dt_offsets``. ``injection_offset_h`` writes the injection as recorded by
    another system in another zone (a DT with its own offset), the same instant. ``ct_air`` writes CTs of air
    only (no body); time points listed in ``thin_ct`` (1-based) get a CT of two slices.
    """
    site = timezone(timedelta(hours=site_offset_h))
    inj = (start or datetime(2026, 1, 5, 9, 30, 0)).replace(tzinfo=site)
    ctx = {"patient_id": "SYNTH-1", "study_uid": generate_uid(), "for_uid": generate_uid(), "nuclide": nuclide,
           "activity_MBq": activity_MBq, "manufacturer": _MANUFACTURER.get(layout, "Synthetic"),
           "model": _MODEL.get(layout, "Synth"), "tz_tag": (f"{'+' if site_offset_h >= 0 else '-'}"
                                                           f"{int(abs(site_offset_h)):02d}{int(abs(site_offset_h) % 1 * 60):02d}"
                                                           if tz_tag else None),
           "dt_offsets": dt_offsets, "code": code, "half_life": half_life, "radiopharmaceutical": radiopharmaceutical}
    ctx["injection_dicom"] = inj if injection_offset_h is None else inj.astimezone(
        timezone(timedelta(hours=injection_offset_h)))
    if injection_offset_h is not None:
        ctx["dt_offsets"] = True  # the other system writes its offset into the DT
    nuc = nuclides.get(nuclide)
    lam_per_s = math.log(2) / (nuc.half_life_h * 3600)
    voxel_mL = EM_VOXEL ** 3 / 1000.0
    shape_rel = phantom(1.0)
    tps = []
    for i, h in enumerate(hours):
        acq = inj + timedelta(hours=h)
        folder = root / f"tp{i + 1}"
        ctx["for_uid"] = generate_uid()  # one frame of reference per SPECT/CT session
        expected_MBq = activity_MBq * math.exp(-lam_per_s * h * 3600)
        c = shape_rel * (fov_fraction * expected_MBq * 1e6 / (shape_rel.sum() * voxel_mL))
        tp = TimePointTruth(acq, duration_s, c)
        tp.ct_files = write_ct(folder / "CT", ctx, acq - timedelta(minutes=2), air=ct_air,
                               slices=2 if i + 1 in thin_ct else CT_SHAPE[0])
        em = folder / "EM"
        em.mkdir(parents=True)
        tp.emission_files = _write_emission(em, layout, c, ctx, acq, duration_s, lam_per_s, inj, voxel_mL)
        tps.append(tp)
    truth = Truth(layout, nuc.name, activity_MBq, inj, tps, root)
    if with_seg:
        truth.seg_file = write_seg(root / "tp1" / "SEG.dcm", tps[0].ct_files)
    return truth


_MANUFACTURER = {"siemens_rwvm": "SIEMENS NM", "ge_bqml": "GE MEDICAL SYSTEMS", "nm_counts": "GE MEDICAL SYSTEMS",
                 "nm_stack": "HERMES", "pt_cnts_philips": "Philips Medical Systems"}
_MODEL = {"siemens_rwvm": "Symbia Intevo Bold", "ge_bqml": "StarGuide", "nm_counts": "NM/CT 870 DR",
          "nm_stack": "Hybrid Recon", "pt_cnts_philips": "GEMINI TF"}


def _write_emission(em: Path, layout: str, c: np.ndarray, ctx: dict, acq: datetime, duration_s: float,
                    lam_per_s: float, inj: datetime, voxel_mL: float) -> list[Path]:
    if layout == "siemens_rwvm":
        write_nm_multiframe(em / "NM.dcm", c, ctx, acq, duration_s, mapping="rwvm")
    elif layout == "ge_bqml":
        write_nm_multiframe(em / "NM.dcm", c, ctx, acq, duration_s, mapping="units")
    elif layout == "nm_counts":
        # counts over the scan, not decay-corrected: N = S A0 (1 - exp(-lambda T)) / lambda per voxel
        x = lam_per_s * duration_s
        counts = c * voxel_mL / 1e6 * SENSITIVITY_CPS_PER_MBQ * (1 - math.exp(-x)) / lam_per_s
        write_nm_multiframe(em / "NM.dcm", counts, ctx, acq, duration_s, mapping="counts")
    elif layout == "nm_stack":
        write_nm_stack(em, c, ctx, acq, duration_s)
    elif layout == "pt_start":
        write_pt(em, c, ctx, acq, duration_s, units="BQML", decay="START")
    elif layout == "pt_admin":
        stored = c * math.exp(lam_per_s * (acq - inj).total_seconds())
        write_pt(em, stored, ctx, acq, duration_s, units="BQML", decay="ADMIN")
    elif layout == "pt_none":
        # two beds: slices 0-3 from acq for T, slices 4-7 from acq + T + 30 s for T; each the frame average
        t1 = acq + timedelta(seconds=duration_s + 30)
        stored = np.empty_like(c)
        for sl, t_b in ((slice(0, 4), acq), (slice(4, 8), t1)):
            at_bed = c[sl] * math.exp(-lam_per_s * (t_b - acq).total_seconds())
            x = lam_per_s * duration_s
            stored[sl] = at_bed * (1 - math.exp(-x)) / x
        write_pt(em, stored, ctx, acq, duration_s, units="BQML", decay="NONE",
                 beds=[(slice(0, 4), acq, duration_s), (slice(4, 8), t1, duration_s)])
    elif layout == "pt_cnts_philips":
        files = write_pt(em, c / PHILIPS_FACTOR, ctx, acq, duration_s, units="CNTS", decay="START")
        import pydicom

        for f in files:
            ds = pydicom.dcmread(f)
            block = ds.private_block(0x7053, "Philips PET Private Group", create=True)
            block.add_new(0x09, "DS", f"{PHILIPS_FACTOR}")
            ds.save_as(f)
    elif layout == "pt_enhanced":
        import highdicom as hd
        import pydicom

        tmp = em / "single"
        tmp.mkdir()
        files = write_pt(tmp, c, ctx, acq, duration_s, units="BQML", decay="START")
        singles = [pydicom.dcmread(f) for f in reversed(files)]
        enhanced = hd.legacy.LegacyConvertedEnhancedPETImage(singles, generate_uid(), 5, generate_uid(), 1)
        for f in files:
            f.unlink()
        tmp.rmdir()
        enhanced.save_as(em / "PT_enhanced.dcm")
    else:  # pragma: no cover
        raise ValueError(layout)
    return sorted(em.glob("*.dcm"))


def write_seg(path: Path, ct_files: list[Path]) -> Path:
    """A two-segment SEG (kidneys, a bone lesion) on the CT, written with highdicom."""
    import highdicom as hd
    import pydicom
    from highdicom.sr.coding import CodedConcept as HdCode

    cts = [pydicom.dcmread(f) for f in ct_files]
    masks = np.zeros((len(cts), CT_SHAPE[1], CT_SHAPE[2], 2), bool)
    masks[3:9, 8:12, 10:14, 0] = True
    masks[4:7, 13:15, 8:10, 1] = True
    descriptions = []
    for number, (label, cat, typ) in enumerate((
            ("kidneys", ("123037004", "SCT", "Anatomical Structure"), ("64033007", "SCT", "Kidney")),
            ("lesion_bone_1", ("49755003", "SCT", "Morphologically Abnormal Structure"),
             ("108369006", "SCT", "Neoplasm"))), start=1):
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=label, segmented_property_category=HdCode(*cat),
            segmented_property_type=HdCode(*typ), algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL))
    seg = hd.seg.Segmentation(source_images=cts, pixel_array=masks,
                              segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                              segment_descriptions=descriptions, series_instance_uid=generate_uid(), series_number=100,
                              sop_instance_uid=generate_uid(), instance_number=1, manufacturer="Synthetic",
                              manufacturer_model_name="Synth", software_versions="1", device_serial_number="1",
                              omit_empty_frames=True)
    if "TimezoneOffsetFromUTC" in cts[0]:
        seg.TimezoneOffsetFromUTC = cts[0].TimezoneOffsetFromUTC
    seg.save_as(path)
    return path


def relative_error(got: np.ndarray, want: np.ndarray, floor: float = 0.01) -> float:
    """Largest relative error over voxels above ``floor`` x max of the truth."""
    hot = want >= floor * want.max()
    return float(np.max(np.abs(got[hot] - want[hot]) / want[hot]))
