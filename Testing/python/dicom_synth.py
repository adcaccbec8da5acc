"""Small synthetic studies *with DICOM files on disk* and filled results, for the DICOM writer and PACS tests.

The reference CT is written as a real CT series (pydicom) so that the SEG can reference its slices; the
results hold dose/BED maps on a coarser "SPECT" grid and per-structure numbers chosen by hand (they are inputs
of the writer, not outputs of the code under test).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

import theratwin as tt
from theratwin.study.model import SourceRef
from theratwin.twin import TwinResults

CT_SHAPE = (12, 20, 24)
CT_SPACING = (2.4, 2.4, 2.5)
CT_ORIGIN = (-28.8, -24.0, -15.0)
SPECT_SHAPE = (6, 10, 12)
SPECT_SPACING = (4.8, 4.8, 5.0)
SPECT_ORIGIN = (-27.6, -22.8, -13.75)


def write_ct_series(folder: Path, patient: tt.Patient, *, study_uid: str, for_uid: str) -> SourceRef:
    """Write a small CT series (one file per slice) and return its :class:`SourceRef`."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    zz, yy, xx = np.indices(CT_SHAPE)
    hu = (-1000 + 1000 * (((yy - 10) ** 2 + (xx - 12) ** 2) < 81)).astype(np.int16)
    files, sops = [], []
    for k in range(CT_SHAPE[0]):
        ds = Dataset()
        sop = generate_uid()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName = patient.name
        ds.PatientID = patient.patient_id
        ds.PatientBirthDate = "19550412"
        ds.PatientSex = patient.sex
        ds.StudyInstanceUID = study_uid
        ds.StudyDate = "20260302"
        ds.StudyTime = "130000"
        ds.StudyID = "1"
        ds.AccessionNumber = "ACC001"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "SPECT/CT Lu-177 dosimetry"
        ds.Modality = "CT"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 2
        ds.SeriesDescription = "CT low dose"
        ds.FrameOfReferenceUID = for_uid
        ds.PositionReferenceIndicator = ""
        ds.Manufacturer = "Synthetic"
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [CT_ORIGIN[0], CT_ORIGIN[1], CT_ORIGIN[2] + k * CT_SPACING[2]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [CT_SPACING[1], CT_SPACING[0]]
        ds.SliceThickness = CT_SPACING[2]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = CT_SHAPE[1], CT_SHAPE[2]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.KVP = 120
        ds.AcquisitionNumber = 1
        ds.PixelData = hu[k].astype("<i2").tobytes()
        path = folder / f"ct_{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(str(path))
        sops.append(sop)
    return SourceRef(study_uid=study_uid, series_uid=series_uid, frame_of_reference_uid=for_uid, modality="CT",
                     sop_instance_uids=tuple(sops), sop_class_uid=CTImageStorage, series_description="CT low dose",
                     files=tuple(files))


def ct_geometry() -> tt.Geometry:
    return tt.Geometry(CT_SHAPE, CT_SPACING, CT_ORIGIN)


def spect_geometry() -> tt.Geometry:
    return tt.Geometry(SPECT_SHAPE, SPECT_SPACING, SPECT_ORIGIN)


def make_study(folder: Path, *, n_cycles: int = 2, patient_id: str = "TT-DICOM-1") -> tt.Study:
    """A study with a CT series on disk, a two-structure segmentation on the CT grid and ``n_cycles`` cycles."""
    patient = tt.Patient(patient_id, name="Synthetic^Patient", sex="M")
    study_uid, for_uid = generate_uid(), generate_uid()
    ct_src = write_ct_series(folder / "ct", patient, study_uid=study_uid, for_uid=for_uid)
    cg, sg = ct_geometry(), spect_geometry()
    ct = tt.ImageVolume.from_geometry(np.full(cg.shape, -1000.0, np.float32), cg, "HU")
    kid = np.zeros(cg.shape, bool)
    kid[3:9, 6:12, 4:10] = True
    les = np.zeros(cg.shape, bool)
    les[4:8, 8:14, 14:20] = True
    seg = tt.Segmentation(cg, [tt.Structure("kidneys", 1), tt.Structure("lesion_bone_1", 2),
                               tt.Structure("liver", 3)],
                          {"kidneys": kid, "lesion_bone_1": les, "liver": np.zeros(cg.shape, bool) | kid[::-1]})
    cycles = []
    for n in range(1, n_cycles + 1):
        start = datetime(2026, 3, 2, 9, 0) + timedelta(weeks=6 * (n - 1))
        adm = tt.Administration("PSMA-617", "Lu-177", 7400.0, start)
        img = tt.ImageVolume.from_geometry(np.ones(sg.shape, np.float32), sg, "Bq/mL")
        tp = tt.TimePoint(img, start + timedelta(hours=24), 1200.0)
        cycles.append(tt.Cycle(n, adm, [tp]))
    return tt.Study(patient, cycles, seg, study_uid=study_uid, frame_of_reference_uid=for_uid, reference_ct=ct,
                    reference_ct_source=ct_src)


def dose_array(scale_Gy: float, seed: int = 0) -> np.ndarray:
    """A smooth positive map on the SPECT grid with max ``scale_Gy`` plus a little noise."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(SPECT_SHAPE)
    a = np.exp(-((z - 3) ** 2 + (y - 5) ** 2 + (x - 4) ** 2) / 8.0) + 0.2 * np.exp(-((x - 9) ** 2) / 3.0)
    a = a + 0.01 * rng.random(SPECT_SHAPE)
    return (scale_Gy * a / a.max()).astype(np.float32)


def make_results(study: tt.Study) -> tt.Results:
    """Results with dose/BED maps, per-structure numbers, methods and a twin prediction."""
    res = tt.Results.for_study(study)
    sg = spect_geometry()
    cum = np.zeros(sg.shape, np.float64)
    for n in sorted(res.cycles):
        dose = dose_array(6.0 + n, seed=n)
        bed = dose * (1 + dose / 2.6 * 0.3)
        res.maps[f"cycle{n}/tia"] = tt.ImageVolume.from_geometry(dose * 1e4, sg, "Bq.h/mL")
        res.maps[f"cycle{n}/dose"] = tt.ImageVolume.from_geometry(dose, sg, "Gy")
        res.maps[f"cycle{n}/bed"] = tt.ImageVolume.from_geometry(bed.astype(np.float32), sg, "Gy")
        cum += dose
        for j, name in enumerate(("kidneys", "lesion_bone_1")):
            s = res.cycles[n].structure(name)
            s.volume_mL = 123.4 + j
            s.mass_g = 129.57 + j
            s.tia_MBq_h = 15234.5 * n + 1000 * j
            s.tia_sd_MBq_h = 812.25
            s.tia_method = "fit:biexp_uptake" if n == 1 else "twin"
            s.kinetic_model = "biexp_uptake"
            s.effective_half_life_h = 41.7 + j
            s.residence_time_h = s.tia_MBq_h / 7400.0
            s.mean_dose_Gy = 3.21 * n + j
            s.mean_dose_sd_Gy = 0.31
            s.dose_method = "dvk"
            s.dose_per_activity_Gy_per_GBq = s.mean_dose_Gy / 7.4
            s.mean_dose_as_imaged_Gy = 0.6 * s.mean_dose_Gy
            s.partial_volume = {"too_small": j == 1, "threshold_mL": 10.6, "largest_part_mL": 123.4 + j,
                                "system_fwhm_mm": 11.0, "recovery_coefficient": 0.6, "correction": "local_model"}
            s.dvh_metrics = {"Dmax_Gy": 7.5 + n, "Dmin_Gy": 0.5, "D2_Gy": 6.9 + n, "D50_Gy": 3.1 * n,
                             "D98_Gy": 1.02 * n}
            s.bed_Gy = 3.9 * n + j
            s.eqd2_Gy = 3.1 * n + j
            s.alpha_beta_Gy = 2.6 if j == 0 else 10.0
            s.repair_half_time_h = 2.8 if j == 0 else 1.5
            s.cumulative_dose_Gy = sum(3.21 * k + j for k in range(1, n + 1))
            s.cumulative_bed_Gy = sum(3.9 * k + j for k in range(1, n + 1))
            s.cumulative_eqd2_Gy = sum(3.1 * k + j for k in range(1, n + 1))
            if n > 1:
                s.estimated_by_twin = {"tia_MBq_h": s.tia_MBq_h, "sd": 900.0, "low": 14000.0, "high": 17000.0}
    res.maps["cumulative/dose"] = tt.ImageVolume.from_geometry(cum.astype(np.float32), sg, "Gy")
    res.maps["cumulative/bed"] = tt.ImageVolume.from_geometry((cum * 1.4).astype(np.float32), sg, "Gy")
    res.record_method("kinetics", "biexponential uptake fit with AICc model selection", {"model": "biexp_uptake"},
                      ["Glatting 2007"])
    res.record_method("dosimetry", "dose voxel kernel convolution", {"kernel_radius_voxels": 10}, ["MIRD 17"])
    res.record_method("radiobiology", "linear-quadratic BED", {"alpha_beta_kidney_Gy": 2.6}, ["Dale 1985"])
    res.record_method("twin", "hierarchical Bayesian twin", {"draws": 10000}, ["TheraTwin TWIN.md"])
    nxt = max(res.cycles) + 1
    # a partial prediction (quantities left out are read as not computed), in the twin stage's layout
    res.twin = TwinResults.from_dict({"prediction": {"cycle": nxt, "administered_MBq": 7400.0, "structures": {
        "kidneys": {"tia_MBq_h": {"mean": 16000.0, "sd": 1500.0, "low": 13600.0, "high": 18500.0},
                    "dose_Gy": {"mean": 3.4, "sd": 0.4, "low": 2.8, "high": 4.1},
                    "bed_Gy": {"mean": 4.2, "low": 3.4, "high": 5.1}},
        "lesion_bone_1": {"dose_Gy": {"mean": 12.0, "low": 8.0, "high": 16.5}},
    }}})
    return res
