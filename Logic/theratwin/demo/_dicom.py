"""Write the demo patient as DICOM: quantitative SPECT (NM), CT and SEG.

SPECT form
----------
Each SPECT time point is one multi-frame *NM Image* object (SOP class 1.2.840.10008.5.1.4.1.1.20) with Image
Type ``ORIGINAL\\PRIMARY\\RECON TOMO\\EMISSION``, the form in which vendor quantitative SPECT (e.g. Siemens
xSPECT Quant) is exported: 16-bit unsigned stored values and a Real World Value Mapping item (0040,9096) whose
slope/intercept give activity concentration with Measurement Units Code ``Bq/ml`` (UCUM). Geometry is in the
Detector Information Sequence (0054,0022) (Image Position/Orientation of the first frame, PS3.3 C.8.4.11),
frames follow the slice normal at Spacing Between Slices. Values are activity concentration **decay-corrected
to the acquisition start** (Corrected Image includes ``DECY``); the NM Isotope module gives Radionuclide Total
Dose in **MBq** (PS3.3 C.8.4.10.1.7; PET uses Bq), Radiopharmaceutical Start DateTime and the radionuclide code
from CID 18 (SNOMED 447553000 ^177^Lutetium, taken from pydicom's code dictionary). Acquisition Duration
(0018,9073) is in seconds (PS3.3 C.7.10.1; a standard extension in NM); the Rotation Information Sequence gives
the duration of one view in ms (Actual Frame Duration) and the number of views per head.

All UIDs derive from the seed (``generate_uid`` with fixed entropy) and all dates/times from the simulated
schedule, so files are byte-identical for a seed.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.sr.codedict import codes
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from .._version import __version__

__all__ = ["UidFactory", "write_nm_spect", "write_ct_series", "write_seg", "format_ds"]

NM_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.20"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MANUFACTURER = "TheraTwin"
MODEL = "TheraTwin demo phantom"
INSTITUTION = "TheraTwin Demo Hospital"


class UidFactory:
    """Deterministic UIDs: the same (seed, key) always gives the same UID."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace

    def __call__(self, *key: object) -> str:
        return str(generate_uid(entropy_srcs=[self.namespace, *map(str, key)]))


def format_ds(value: float) -> str:
    """Format a float for a DS element (at most 16 characters) keeping the most precision."""
    for digits in range(15, 4, -1):
        s = f"{value:.{digits}g}"
        if len(s) <= 16:
            return s
    return f"{value:.6e}"[:16]


def _da(d: datetime) -> str:
    return d.strftime("%Y%m%d")


def _tm(d: datetime) -> str:
    return d.strftime("%H%M%S.%f")[:13]


def _dt(d: datetime) -> str:
    return d.strftime("%Y%m%d%H%M%S.%f")[:21]


def _code_item(code: object) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value  # type: ignore[attr-defined]
    item.CodingSchemeDesignator = code.scheme_designator  # type: ignore[attr-defined]
    item.CodeMeaning = code.meaning  # type: ignore[attr-defined]
    return item


def _base_dataset(patient: dict, study: dict, series: dict, sop_class: str, sop_uid: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID("1.2.826.0.1.3680043.8.498.1")  # pydicom's root UID
    meta.ImplementationVersionName = "THERATWIN_" + __version__.replace(".", "")[:6]
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = _da(series["datetime"])
    ds.InstanceCreationTime = _tm(series["datetime"])
    ds.PatientName = patient["name"]
    ds.PatientID = patient["id"]
    ds.IssuerOfPatientID = patient["issuer"]
    ds.PatientBirthDate = patient["birth_date"]
    ds.PatientSex = patient["sex"]
    ds.PatientAge = patient["age"]
    ds.PatientWeight = format_ds(patient["weight_kg"])
    ds.PatientSize = format_ds(patient["height_m"])
    ds.StudyInstanceUID = study["uid"]
    ds.StudyDate = _da(study["datetime"])
    ds.StudyTime = _tm(study["datetime"])
    ds.StudyID = study["id"]
    ds.AccessionNumber = study["accession"]
    ds.StudyDescription = study["description"]
    ds.ReferringPhysicianName = "Demo^Referrer"
    ds.SeriesInstanceUID = series["uid"]
    ds.SeriesNumber = series["number"]
    ds.SeriesDate = _da(series["datetime"])
    ds.SeriesTime = _tm(series["datetime"])
    ds.SeriesDescription = series["description"]
    ds.Modality = series["modality"]
    ds.FrameOfReferenceUID = series["frame_of_reference_uid"]
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MODEL
    ds.InstitutionName = INSTITUTION
    ds.DeviceSerialNumber = "TT-0001"
    ds.SoftwareVersions = f"theratwin {__version__}"
    ds.StationName = "TTSPECTCT1"
    ds.PatientPosition = "HFS"
    ds.BodyPartExamined = "WHOLEBODY"  # unpaired region, so Laterality (type 2C) is absent
    return ds


def write_nm_spect(
    path: Path,
    array_Bq_per_mL: np.ndarray,
    *,
    origin_mm: Sequence[float],
    voxel_mm: float,
    patient: dict,
    study: dict,
    series: dict,
    acquisition_start: datetime,
    acquisition_duration_s: float,
    administration: dict,
    n_projections: int,
    sop_uid: str,
) -> float:
    """Write one quantitative SPECT volume ``(z, y, x)`` in Bq/mL as a multi-frame NM object.

    Returns the real-world value slope (Bq/mL per stored value) actually written (after DS formatting).
    """
    arr = np.asarray(array_Bq_per_mL, dtype=np.float64)
    vmax = float(arr.max()) if arr.size else 0.0
    # Largest slope that keeps the maximum within 16 bits; the slope is rounded to its DS text first so that
    # quantisation uses exactly the value a reader will see.
    slope_text = format_ds(vmax / 65000.0 if vmax > 0 else 1.0)
    slope = float(slope_text)
    stored = np.clip(np.rint(np.clip(arr, 0.0, None) / slope), 0, 65535).astype(np.uint16)

    ds = _base_dataset(patient, study, series, NM_IMAGE_STORAGE, sop_uid)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "RECON TOMO", "EMISSION"]
    ds.ContentDate = _da(series["datetime"])
    ds.ContentTime = _tm(series["datetime"])
    ds.AcquisitionDate = _da(acquisition_start)
    ds.AcquisitionTime = _tm(acquisition_start)
    ds.AcquisitionDateTime = _dt(acquisition_start)
    ds.AcquisitionDuration = float(acquisition_duration_s)  # FD, seconds (PS3.3 C.7.10.1)
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.ImageComments = "Quantitative SPECT, activity concentration (Bq/mL) decay-corrected to acquisition start"
    ds.CorrectedImage = ["ATTN", "SCAT", "DECY"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    nz, ny, nx = stored.shape
    ds.NumberOfFrames = nz
    ds.FrameIncrementPointer = [0x00540080]  # Slice Vector
    ds.SliceVector = list(range(1, nz + 1))
    ds.NumberOfSlices = nz
    ds.Rows = ny
    ds.Columns = nx
    ds.PixelSpacing = [format_ds(voxel_mm), format_ds(voxel_mm)]
    ds.SliceThickness = format_ds(voxel_mm)
    ds.SpacingBetweenSlices = format_ds(voxel_mm)
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SmallestImagePixelValue = int(stored.min())
    ds.LargestImagePixelValue = int(stored.max())

    det = Dataset()
    det.ImagePositionPatient = [format_ds(v) for v in origin_mm]
    det.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    det.CollimatorGridName = "MELP"
    det.CollimatorType = "PARA"
    ds.DetectorInformationSequence = [det]
    ds.NumberOfDetectors = 1
    del ds.PatientPosition  # NM conveys it in the Patient Orientation code sequences instead
    rot = Dataset()
    rot.StartAngle = "0"
    rot.AngularStep = format_ds(360.0 / n_projections)
    rot.RotationDirection = "CW"
    rot.ScanArc = "180"  # per head; two heads opposed cover 360 degrees
    rot.NumberOfFramesInRotation = n_projections // 2
    # duration of one view in ms (both heads acquire simultaneously)
    rot.ActualFrameDuration = int(round(acquisition_duration_s * 1000.0 / (n_projections // 2)))
    rot.TableTraverse = "0"
    ds.RotationInformationSequence = [rot]
    ds.NumberOfRotations = 1
    ds.CountsAccumulated = ""

    ew = Dataset()
    rng_item = Dataset()
    # 208 keV photopeak of Lu-177 with a 20 % window (ICRP-107 line 208.4 keV)
    rng_item.EnergyWindowLowerLimit = format_ds(187.6)
    rng_item.EnergyWindowUpperLimit = format_ds(229.2)
    ew.EnergyWindowRangeSequence = [rng_item]
    ew.EnergyWindowName = "Lu177_208keV"
    ds.EnergyWindowInformationSequence = [ew]
    ds.NumberOfEnergyWindows = 1

    rp = Dataset()
    rp.RadionuclideCodeSequence = [_code_item(codes.SCT._177Lutetium)]
    rp.Radiopharmaceutical = administration["radiopharmaceutical"]
    rp.RadiopharmaceuticalStartDateTime = _dt(administration["start"])
    rp.RadiopharmaceuticalStartTime = _tm(administration["start"])
    rp.RadionuclideTotalDose = format_ds(administration["activity_MBq"])  # MBq in the NM Isotope module
    rp.AdministrationRouteCodeSequence = [_code_item(codes.SCT.IntravenousRoute)]
    rp.RadiopharmaceuticalRoute = "Intravenous"
    ds.RadiopharmaceuticalInformationSequence = [rp]

    orient = _code_item(codes.SCT.Recumbent)
    mod = _code_item(codes.SCT.Supine)
    orient.PatientOrientationModifierCodeSequence = [mod]
    ds.PatientOrientationCodeSequence = [orient]
    ds.PatientGantryRelationshipCodeSequence = [_code_item(codes.SCT.Headfirst)]

    rw = Dataset()
    rw.RealWorldValueFirstValueMapped = 0
    rw.RealWorldValueLastValueMapped = 65535
    rw.RealWorldValueIntercept = 0.0
    rw.RealWorldValueSlope = slope
    rw.LUTExplanation = "Bq/ml"
    rw.LUTLabel = "BQML"
    unit = Dataset()
    unit.CodeValue = "Bq/ml"
    unit.CodingSchemeDesignator = "UCUM"
    unit.CodeMeaning = "Becquerels/milliliter"
    rw.MeasurementUnitsCodeSequence = [unit]
    ds.RealWorldValueMappingSequence = [rw]

    ds.PixelData = stored.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return slope


def write_ct_series(
    directory: Path,
    hu: np.ndarray,
    *,
    origin_mm: Sequence[float],
    voxel_mm: float,
    patient: dict,
    study: dict,
    series: dict,
    acquisition_start: datetime,
    uid: UidFactory,
) -> list[Dataset]:
    """Write a CT volume ``(z, y, x)`` in HU as single-frame CT Image objects (one file per slice).

    Returns the datasets written (used as SEG source images).
    """
    directory.mkdir(parents=True, exist_ok=True)
    stored = np.clip(np.rint(hu) + 1024.0, 0, 65535).astype(np.uint16)
    nz, ny, nx = stored.shape
    base = _base_dataset(patient, study, series, CT_IMAGE_STORAGE, "1.2")
    base.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    base.ContentDate = _da(acquisition_start)
    base.ContentTime = _tm(acquisition_start)
    base.AcquisitionDate = _da(acquisition_start)
    base.AcquisitionTime = _tm(acquisition_start)
    base.AcquisitionDateTime = _dt(acquisition_start)
    base.AcquisitionNumber = 1
    base.KVP = "120"
    base.XRayTubeCurrent = 30
    base.ExposureTime = 600
    base.ConvolutionKernel = "B31s"
    base.SliceThickness = format_ds(voxel_mm)
    base.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    base.PixelSpacing = [format_ds(voxel_mm), format_ds(voxel_mm)]
    base.SamplesPerPixel = 1
    base.PhotometricInterpretation = "MONOCHROME2"
    base.Rows = ny
    base.Columns = nx
    base.BitsAllocated = 16
    base.BitsStored = 16
    base.HighBit = 15
    base.PixelRepresentation = 0
    base.RescaleIntercept = "-1024"
    base.RescaleSlope = "1"
    base.RescaleType = "HU"
    base.WindowCenter = "40"
    base.WindowWidth = "400"
    # Per-slice attributes must be new elements in each dataset (``update`` shares element objects).
    per_slice = ("SOPInstanceUID", "InstanceNumber", "ImagePositionPatient", "SliceLocation", "PixelData")
    for kw in per_slice:
        if kw in base:
            delattr(base, kw)
    del base.file_meta.MediaStorageSOPInstanceUID
    # Encode the attributes shared by all slices once; per slice only the five that change are encoded and
    # merged in tag order (same bytes as Dataset.save_as, ~10x faster for hundreds of slices).
    shared = [(int(elem.tag), _encode_element(elem)) for elem in base]
    out: list[Dataset] = []
    for k in range(nz):
        ds = Dataset()
        ds.update(base)
        meta = FileMetaDataset()
        meta.update(base.file_meta)
        sop_uid = uid("ct-instance", series["uid"], k)
        meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        ds.file_meta = meta
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = k + 1
        z = origin_mm[2] + k * voxel_mm
        ds.ImagePositionPatient = [format_ds(origin_mm[0]), format_ds(origin_mm[1]), format_ds(z)]
        ds.SliceLocation = format_ds(z)
        ds.add_new(0x7FE00010, "OW", stored[k].tobytes())  # Pixel Data, 16-bit words
        own = [(int(ds[kw].tag), _encode_element(ds[kw])) for kw in per_slice]
        body = b"".join(b for _, b in heapq.merge(shared, sorted(own)))
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, False
        write_file_meta_info(fp, meta, enforce_standard=True)
        (directory / f"CT_{k + 1:04d}.dcm").write_bytes(b"\x00" * 128 + b"DICM" + fp.getvalue() + body)
        out.append(ds)
    return out


def _encode_element(elem: object) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_data_element(fp, elem)  # type: ignore[arg-type]
    return bytes(fp.getvalue())


def write_seg(
    path: Path,
    ct_datasets: list[Dataset],
    masks: dict[str, np.ndarray],
    *,
    series: dict,
    sop_uid: str,
    uid: UidFactory,
) -> None:
    """Write the structures as a binary DICOM SEG (highdicom) on the reference CT.

    ``masks`` maps structure name -> bool array ``(z, y, x)`` on the CT grid, in segment-number order.
    """
    import highdicom as hd
    from highdicom.sr.coding import CodedConcept as HdCode

    from ..dicom.seg import display_color
    from ..study.codes import structure_kind

    descriptions = []
    for number, name in enumerate(masks, start=1):
        kind = structure_kind(name)
        regions = [HdCode(kind.anatomic_region.value, kind.anatomic_region.scheme, kind.anatomic_region.meaning)] \
            if kind.anatomic_region else None
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name,
                segmented_property_category=HdCode(kind.category.value, kind.category.scheme, kind.category.meaning),
                segmented_property_type=HdCode(kind.type.value, kind.type.scheme, kind.type.meaning),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=hd.AlgorithmIdentificationSequence(
                    name="TheraTwin demo phantom (analytic shapes)",
                    family=codes.cid7162.MorphologicalOperations,
                    version=__version__,
                ),
                tracking_uid=uid("tracking", name),
                tracking_id=name,
                anatomic_regions=regions,
                display_color=display_color(kind.color_rgb),
            )
        )
    pixels = np.stack([masks[n] for n in masks], axis=-1).astype(bool)
    seg = hd.seg.Segmentation(
        source_images=ct_datasets,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series["uid"],
        series_number=series["number"],
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL,
        software_versions=f"theratwin {__version__}",
        device_serial_number="TT-0001",
        content_label="STRUCTURES",
        content_description="Demo patient structures (ground truth)",
        series_description=series["description"],
        omit_empty_frames=True,
    )
    # highdicom stamps the creation time and a random dimension-organisation UID; pin both for determinism
    seg.ContentDate = _da(series["datetime"])  # type: ignore[assignment]
    seg.ContentTime = _tm(series["datetime"])  # type: ignore[assignment]
    seg.SeriesDate = _da(series["datetime"])  # type: ignore[assignment]
    seg.SeriesTime = _tm(series["datetime"])  # type: ignore[assignment]
    seg.InstanceCreationDate = _da(series["datetime"])  # type: ignore[assignment]
    seg.InstanceCreationTime = _tm(series["datetime"])  # type: ignore[assignment]
    for item in getattr(seg, "ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = _dt(series["datetime"])
    dim_uid = uid("dimension-organization", series["uid"])
    for item in seg.DimensionOrganizationSequence:
        item.DimensionOrganizationUID = dim_uid
    for item in seg.DimensionIndexSequence:
        item.DimensionOrganizationUID = dim_uid
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path, enforce_file_format=True)
