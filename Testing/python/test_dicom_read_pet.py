"""PET-form emission images: Units BQML / CNTS / GML and DecayCorrection START / ADMIN / NONE.

The demo's SPECT of one time point is rewritten as a PET Image Storage series whose stored values follow each
convention (computed here from the definitions in PS3.3 C.8.9.1); reading must give back the same activity
concentration at the acquisition start.
"""

from __future__ import annotations

import math
import os
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from theratwin import nuclides
from theratwin.demo import DemoOptions, build_demo, simulate
from theratwin.dicom import ReadOptions, read_study, scan
from theratwin.errors import DicomReadError

SEED = 7
OPTS = {"fast": True, "noise": False, "blur": False}
PT_STORAGE = "1.2.840.10008.5.1.4.1.1.128"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    return build_demo(tmp_path_factory.getbasetemp() / "demo-cache", seed=SEED, **OPTS)


@pytest.fixture(scope="module")
def sim():
    return simulate(SEED, DemoOptions(**OPTS))


def _dt(d: datetime) -> str:
    return d.strftime("%Y%m%d%H%M%S.%f")


def _write_pet(folder: Path, nm: Dataset, stored_Bq_per_mL_like: np.ndarray, *, units: str, decay: str,
               extra: dict | None = None, dose_Bq: float | None = None) -> None:
    """Replace the NM of a time point with a PET series carrying ``stored_*`` values (float, per-slice slope)."""
    rp_nm = nm.RadiopharmaceuticalInformationSequence[0]
    det = nm.DetectorInformationSequence[0]
    origin = np.array([float(v) for v in det.ImagePositionPatient])
    step = float(nm.SpacingBetweenSlices)
    series_uid = generate_uid()
    acq = datetime.strptime(nm.AcquisitionDateTime[:14], "%Y%m%d%H%M%S")
    for k, plane in enumerate(stored_Bq_per_mL_like):
        slope = max(float(plane.max()), 1e-6) / 32000.0
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = PT_STORAGE
        uid = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        for kw in ("PatientID", "PatientName", "PatientWeight", "StudyInstanceUID", "FrameOfReferenceUID",
                   "StudyDate", "StudyTime", "Manufacturer", "ManufacturerModelName", "DeviceSerialNumber"):
            setattr(ds, kw, getattr(nm, kw))
        ds.SOPClassUID, ds.SOPInstanceUID = PT_STORAGE, uid
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesDescription = "PT", series_uid, f"PET-form {units} {decay}"
        ds.SeriesDate, ds.SeriesTime = acq.strftime("%Y%m%d"), acq.strftime("%H%M%S")
        ds.AcquisitionDate, ds.AcquisitionTime = acq.strftime("%Y%m%d"), acq.strftime("%H%M%S")
        ds.ActualFrameDuration = int(round(float(nm.AcquisitionDuration) * 1000))
        ds.Units, ds.DecayCorrection = units, decay
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = list(origin + [0.0, 0.0, k * step])
        ds.PixelSpacing = nm.PixelSpacing
        ds.SliceThickness = nm.SliceThickness
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", "0"
        ds.PixelData = np.rint(plane / float(f"{slope:.10g}")).astype(np.int16).tobytes()
        rp = Dataset()
        rp.RadionuclideCodeSequence = rp_nm.RadionuclideCodeSequence
        rp.Radiopharmaceutical = rp_nm.Radiopharmaceutical
        rp.RadiopharmaceuticalStartDateTime = rp_nm.RadiopharmaceuticalStartDateTime
        rp.RadionuclideTotalDose = f"{dose_Bq if dose_Bq is not None else float(rp_nm.RadionuclideTotalDose) * 1e6:.6g}"
        ds.RadiopharmaceuticalInformationSequence = [rp]
        for key, value in (extra or {}).items():
            setattr(ds, key, value)
        ds.save_as(folder / f"PT_{k:03d}.dcm", enforce_file_format=True)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@pytest.fixture
def pet_case(demo, sim, tmp_path: Path):
    """Copy of the demo whose cycle-1 24 h SPECT is to be replaced by a PET-form series."""
    root = tmp_path / "dicom"
    shutil.copytree(demo.dicom_dir, root, copy_function=_link_or_copy)  # only new files are written
    nm_path = next(root.glob("cycle1_tp2*/NM_SPECT.dcm"))
    nm = pydicom.dcmread(nm_path)
    nm_path.unlink()
    cyc = sim.cycles[0]
    tp = cyc.time_points[1]
    lam_per_s = math.log(2) / (nuclides.get("Lu-177").half_life_h * 3600)
    return {"root": root, "folder": nm_path.parent, "nm": nm, "c_start": tp.spect_noiseless_Bq_per_mL.astype(float),
            "dt_admin_s": (tp.acquisition_start - cyc.administration_start).total_seconds(),
            "duration_s": float(nm.AcquisitionDuration), "lam_per_s": lam_per_s, "weight_kg": float(nm.PatientWeight)}


def _check(case, rel: float = 2e-3) -> None:
    st = read_study(case["root"])
    got = st.cycles[0].time_points[1].image.array
    want = case["c_start"]
    hot = want >= 0.01 * want.max()
    assert np.max(np.abs(got[hot] - want[hot]) / want[hot]) <= rel
    assert st.cycles[0].time_points[1].source.modality == "PT"


class TestPetUnits:
    def test_bqml_start(self, pet_case) -> None:
        _write_pet(pet_case["folder"], pet_case["nm"], pet_case["c_start"], units="BQML", decay="START")
        _check(pet_case)

    def test_bqml_admin_is_decayed_back_to_acquisition_start(self, pet_case) -> None:
        # ADMIN: values are referenced to the injection time, i.e. larger by exp(+lambda dt)
        stored = pet_case["c_start"] * math.exp(pet_case["lam_per_s"] * pet_case["dt_admin_s"])
        _write_pet(pet_case["folder"], pet_case["nm"], stored, units="BQML", decay="ADMIN")
        _check(pet_case)

    def test_bqml_none_is_corrected_for_decay_during_the_frame(self, pet_case) -> None:
        # NONE: the frame average of an exponentially decaying source, c0 (1 - e^-lT) / (lT)
        x = pet_case["lam_per_s"] * pet_case["duration_s"]
        stored = pet_case["c_start"] * (1 - math.exp(-x)) / x
        _write_pet(pet_case["folder"], pet_case["nm"], stored, units="BQML", decay="NONE")
        _check(pet_case, rel=1.5e-3)

    def test_decay_correction_datetime_is_honoured(self, pet_case) -> None:
        ref = datetime.strptime(pet_case["nm"].AcquisitionDateTime[:14], "%Y%m%d%H%M%S") + timedelta(hours=5)
        stored = pet_case["c_start"] * math.exp(-pet_case["lam_per_s"] * 5 * 3600)
        _write_pet(pet_case["folder"], pet_case["nm"], stored, units="BQML", decay="START",
                   extra={"DecayCorrectionDateTime": _dt(ref)})
        _check(pet_case)

    def test_counts_with_dose_calibration_factor_are_not_activity(self, pet_case) -> None:
        """PS3.3 C.8.9.4: DoseCalibrationFactor is the factor already applied to an image, never a calibration of
        its counts; CNTS is refused until the user gives one (here the camera's volume sensitivity)."""
        sensitivity_cps_per_MBq, frame_s = 12.5, pet_case["duration_s"]
        voxel_mL = float(np.prod([float(v) for v in pet_case["nm"].PixelSpacing]) * float(
            pet_case["nm"].SliceThickness)) / 1000.0
        counts = pet_case["c_start"] * voxel_mL / 1e6 * sensitivity_cps_per_MBq * frame_s  # START: decay-corrected
        _write_pet(pet_case["folder"], pet_case["nm"], counts, units="CNTS", decay="START",
                   extra={"DoseCalibrationFactor": "37.5"})
        with pytest.raises(DicomReadError) as info:
            read_study(pet_case["root"])
        assert info.value.tag == "Units" and "DoseCalibrationFactor (0054,1322) is never used" in str(info.value)
        opts = ReadOptions(camera_calibrations=[{"nuclide": "Lu-177", "sensitivity_cps_per_MBq": sensitivity_cps_per_MBq,
                                                 "manufacturer": "TheraTwin", "source": "phantom 2025-01"}])
        st = read_study(pet_case["root"], options=opts)
        got = st.cycles[0].time_points[1].image.array
        want = pet_case["c_start"]
        hot = want >= 0.01 * want.max()
        assert np.max(np.abs(got[hot] - want[hot]) / want[hot]) <= 2e-3
        assert any("12.5 cps/MBq" in m["method"] and "phantom 2025-01" in m["method"] for m in st.methods)
        # a calibration of another camera does not apply
        other = ReadOptions(camera_calibrations=[{"nuclide": "Lu-177", "sensitivity_cps_per_MBq": 12.5,
                                                  "manufacturer": "Other Vendor"}])
        with pytest.raises(DicomReadError, match="volume sensitivity"):
            read_study(pet_case["root"], options=other)

    def test_counts_without_factor_is_refused_unless_given(self, pet_case) -> None:
        _write_pet(pet_case["folder"], pet_case["nm"], pet_case["c_start"] / 12.0, units="CNTS", decay="START")
        with pytest.raises(DicomReadError) as info:
            read_study(pet_case["root"])
        assert info.value.tag == "Units" and "calibration" in str(info.value)
        st = read_study(pet_case["root"], counts_calibration_Bq_per_mL=12.0)
        want = pet_case["c_start"]
        hot = want >= 0.01 * want.max()
        got = st.cycles[0].time_points[1].image.array
        assert np.max(np.abs(got[hot] - want[hot]) / want[hot]) <= 2e-3

    def test_suv_body_weight(self, pet_case) -> None:
        dose_Bq = 7400e6 * math.exp(-pet_case["lam_per_s"] * pet_case["dt_admin_s"])  # decayed to scan start
        suv = pet_case["c_start"] / (dose_Bq / (pet_case["weight_kg"] * 1000.0))
        _write_pet(pet_case["folder"], pet_case["nm"], suv, units="GML", decay="START", extra={"SUVType": "BW"})
        _check(pet_case)

    def test_pet_total_dose_is_in_bq(self, pet_case) -> None:
        _write_pet(pet_case["folder"], pet_case["nm"], pet_case["c_start"], units="BQML", decay="START")
        inv = scan(pet_case["root"])
        pet = [s for s in inv.series if s.modality == "PT"]
        assert len(pet) == 1 and pet[0].administration.activity_MBq == pytest.approx(7400.0)
        assert "1 PET" in inv.describe()

    def test_unsupported_units_refused(self, pet_case) -> None:
        _write_pet(pet_case["folder"], pet_case["nm"], pet_case["c_start"], units="PROPCNTS", decay="START")
        with pytest.raises(DicomReadError) as info:
            read_study(pet_case["root"])
        assert info.value.tag == "Units"

    def test_missing_slice_refused(self, pet_case) -> None:
        _write_pet(pet_case["folder"], pet_case["nm"], pet_case["c_start"], units="BQML", decay="START")
        (pet_case["folder"] / "PT_010.dcm").unlink()
        with pytest.raises(DicomReadError) as info:
            read_study(pet_case["root"])
        assert info.value.tag == "ImagePositionPatient" and "not uniform" in str(info.value)
