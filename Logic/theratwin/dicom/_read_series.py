"""What one series' headers say: its role, acquisition start and duration, administration, units and camera.

Used by :func:`theratwin.dicom.inventory.scan` (see there for the conventions: RadionuclideTotalDose units, the
order of acquisition-time sources, durations). A corrupt value a reading depends on becomes a problem text or a
warning on the series, never a silent default.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from ._read_model import AdministrationInfo, SeriesInfo
from ._read_nuclide import identify_nuclide
from ._read_values import DicomClock, clip, get_float, get_int, get_item, get_text, get_value, parse_tm
from .options import ReadOptions

__all__ = ["AdministrationInfo", "series_role", "acquisition_start_of", "acquisition_duration", "administration_of", "units_of",
           "camera_of", "promote_converted", "NM_STORAGE", "PT_STORAGE", "ENHANCED_PT_STORAGE", "CT_STORAGE",
           "ENHANCED_CT_STORAGE", "SEG_STORAGE"]

NM_STORAGE = "1.2.840.10008.5.1.4.1.1.20"
PT_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
ENHANCED_PT_STORAGE = ("1.2.840.10008.5.1.4.1.1.130", "1.2.840.10008.5.1.4.1.1.128.1")  # Enhanced, Legacy Conv.
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_STORAGE = ("1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2")  # Enhanced, Legacy Converted
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
#: Longest plausible acquisition of one emission series (s); longer values are corrupt.
_MAX_DURATION_S = 6 * 3600.0


def series_role(ds: Dataset) -> tuple[str, str]:
    sop = get_text(ds, "SOPClassUID")
    modality = get_text(ds, "Modality").upper()
    image_type = [t.strip().upper() for t in get_text(ds, "ImageType").split("\\")]
    if sop == SEG_STORAGE or modality == "SEG":
        return "seg", ""
    if sop == NM_STORAGE or modality == "NM":
        if any(t in ("RECON TOMO", "RECON GATED TOMO") for t in image_type):
            return "spect", ""
        kind = image_type[2] if len(image_type) > 2 else "unknown"
        return "other", f"NM {clip(kind, 24).lower()} data (not reconstructed tomography): not used"
    if sop == PT_STORAGE or sop in ENHANCED_PT_STORAGE or modality == "PT":
        return "pet", ""
    if modality == "CT":
        if sop != CT_STORAGE and sop not in ENHANCED_CT_STORAGE:
            return "other", f"CT storage class {clip(sop, 64)} is not supported; export as (Enhanced) CT Image Storage"
        if "LOCALIZER" in image_type:
            return "other", "CT localizer (topogram): not used"
        return "ct", ""
    return "other", f"{clip(modality, 16) or 'unknown modality'}: not used"


def acquisition_start_of(s: SeriesInfo, clock: DicomClock) -> None:
    starts = []
    emission = s.role in ("spect", "pet")
    for ds in s.datasets:
        t_dt = clock.dt(ds, "AcquisitionDateTime", ds)
        # both forms are compared for emission series (their times are the results' times)
        t_da = clock.da_tm(ds, "AcquisitionDate", "AcquisitionTime") if emission or t_dt is None else None
        if t_dt is not None and t_da is not None and abs((t_dt - t_da).total_seconds()) > 1.0:
            msg = (f"AcquisitionDateTime {t_dt.isoformat()} and AcquisitionDate/Time {t_da.isoformat()} disagree; "
                   "using AcquisitionDateTime")
            if msg not in s.warnings:
                s.warnings.append(msg)
        t = t_dt if t_dt is not None else t_da
        if t is not None:
            starts.append(t)
    if starts:
        s.acquisition_start = min(starts)
        s.acquisition_start_source = "AcquisitionDateTime"
        return
    ds0 = s.datasets[0]
    t = clock.da_tm(ds0, "SeriesDate", "SeriesTime")
    if t is not None:
        s.acquisition_start = t
        s.acquisition_start_source = "SeriesDateTime"
        if s.role in ("spect", "pet"):
            s.warnings.append("no AcquisitionDateTime (0008,002A); using SeriesDate/SeriesTime as acquisition start")


def acquisition_duration(s: SeriesInfo) -> str:
    """Set the acquisition duration; return a problem text for a corrupt value ("" when fine)."""
    ds = s.datasets[0]
    if "AcquisitionDuration" in ds:
        d = get_float(ds, "AcquisitionDuration")
        if d is None or not 0 < d <= _MAX_DURATION_S:
            return (f"AcquisitionDuration (0018,9073) {clip(get_text(ds, 'AcquisitionDuration'))!r} s is not a "
                    f"duration between 0 and {_MAX_DURATION_S:g} s.")
        s.acquisition_duration_s = d
        return ""
    rot = get_value(ds, "RotationInformationSequence")
    if rot:
        total_ms = 0.0
        try:
            for item in rot:
                ms = get_float(item, "ActualFrameDuration")
                n = get_int(item, "NumberOfFramesInRotation")
                if ms is not None and n is not None and ms > 0 and n > 0:
                    total_ms += ms * n
        except TypeError:
            total_ms = 0.0
        if 0 < total_ms <= _MAX_DURATION_S * 1000:
            s.acquisition_duration_s = total_ms / 1000.0
            return ""
    if s.role == "pet":
        durations = {get_float(d, "ActualFrameDuration") for d in s.datasets}
        if None in durations or any(ms is not None and not 0 < ms <= _MAX_DURATION_S * 1000 for ms in durations):
            if any("ActualFrameDuration" in d for d in s.datasets):
                return "ActualFrameDuration (0018,1242) is missing or not a duration in ms in some instances."
            return ""
        s.acquisition_duration_s = max(ms for ms in durations if ms is not None) / 1000.0
    return ""


def administration_of(s: SeriesInfo, clock: DicomClock, given_nuclide: str | None) -> AdministrationInfo | None:
    ds = s.datasets[0]
    item = get_item(ds, "RadiopharmaceuticalInformationSequence")
    if item is None:
        return None
    a = AdministrationInfo()
    a.radiopharmaceutical = get_text(item, "Radiopharmaceutical")
    if not a.radiopharmaceutical:
        a.radiopharmaceutical = get_text(get_item(item, "RadiopharmaceuticalCodeSequence"), "CodeMeaning")
    a.radiopharmaceutical = clip(a.radiopharmaceutical, 64)
    a.nuclide, a.nuclide_source, a.nuclide_problem = identify_nuclide(item, given_nuclide)
    start = clock.dt(item, "RadiopharmaceuticalStartDateTime", ds)
    if start is not None:
        a.start, a.start_source = start, "RadiopharmaceuticalStartDateTime"
    else:
        # Time of day only: dated later from a sibling series or, failing that, the acquisition day (_plan).
        a.start_time_of_day = parse_tm(get_value(item, "RadiopharmaceuticalStartTime"))
    dose = get_float(item, "RadionuclideTotalDose")
    if dose is None and "RadionuclideTotalDose" in item and get_value(item, "RadionuclideTotalDose") is not None:
        a.activity_problem = (f"RadionuclideTotalDose (0018,1074) {clip(get_text(item, 'RadionuclideTotalDose'))!r} "
                              "is not a number.")
    elif dose is not None and dose > 0:
        if s.role == "spect":  # NM: MBq (PS3.3 C.8.4.10.1.7)
            a.activity_MBq = dose
            if dose > 1e6:
                a.activity_MBq = dose / 1e6
                a.activity_note = "RadionuclideTotalDose looks like Bq in an NM object (standard: MBq); converted"
        else:  # PET: Bq
            a.activity_MBq = dose / 1e6
            if dose < 1e5:
                a.activity_MBq = dose
                a.activity_note = "RadionuclideTotalDose looks like MBq in a PET object (standard: Bq); converted"
        if a.activity_note:
            s.warnings.append(a.activity_note)
    return a


def _rwvm_bqml(ds: Dataset) -> bool:
    """True if ``ds`` (or its shared functional groups) carries a Bq/ml Real World Value Mapping item."""
    holders = [ds]
    shared = get_item(ds, "SharedFunctionalGroupsSequence")
    if shared is not None:
        holders.append(shared)
    for holder in holders:
        rw = get_value(holder, "RealWorldValueMappingSequence")
        if not rw:
            continue
        try:
            for item in rw:
                code = get_text(get_item(item, "MeasurementUnitsCodeSequence"), "CodeValue").lower().replace(" ", "")
                if code in ("bq/ml", "bq/cm3") or get_text(item, "LUTLabel").upper() == "BQML":
                    return True
        except TypeError:
            continue
    return False


def camera_of(ds: Dataset) -> dict[str, str]:
    """The camera a series comes from, as camera calibrations are matched (General Equipment module)."""
    keywords = {"manufacturer": "Manufacturer", "model": "ManufacturerModelName",
                "serial_number": "DeviceSerialNumber", "station": "StationName"}
    return {key: clip(get_text(ds, kw), 64) for key, kw in keywords.items()}


def units_of(s: SeriesInfo, options: ReadOptions) -> None:
    ds = s.datasets[0]
    if s.role == "ct":
        s.units = "HU"
        return
    units = get_text(ds, "Units").upper()
    if s.role == "spect":
        if _rwvm_bqml(ds):
            s.units = "Bq/mL (real-world value mapping)"
            return
        if units == "BQML":
            s.units = "Bq/mL (Units BQML)"
            return
        s.counts = True
        s.units = ""
        _match_calibration(s, options)
        return
    if s.role == "pet":
        if units:
            s.units = units
        elif len(s.datasets) == 1 and _rwvm_bqml(ds):
            s.units = "BQML"
        if s.units == "CNTS":
            s.counts = True
            _match_calibration(s, options)


def _match_calibration(s: SeriesInfo, options: ReadOptions) -> None:
    """Pick the camera calibration for a counts series (most specific match); record ambiguity as a warning."""
    nuclide = s.administration.nuclide if s.administration else None
    if nuclide is None:
        return
    cam = s.camera
    matches = [c for c in options.camera_calibrations
               if c.matches(nuclide=nuclide, manufacturer=cam.get("manufacturer", ""), model=cam.get("model", ""),
                            serial_number=cam.get("serial_number", ""), station=cam.get("station", ""))]
    if not matches:
        return
    matches.sort(key=lambda c: -c.specificity())
    best = [c for c in matches if c.specificity() == matches[0].specificity()]
    if len({c.sensitivity_cps_per_MBq for c in best}) > 1:
        s.warnings.append(f"{len(best)} camera calibrations match {s.camera_text()} for {nuclide} equally well; "
                          f"using the first ({best[0].describe()})")
    s.calibration = best[0]
    if s.role == "spect":
        s.units = f"counts, calibrated ({best[0].sensitivity_cps_per_MBq:g} cps/MBq)"



def promote_converted(ds: Dataset) -> None:
    """Legacy Converted Enhanced objects keep the single-frame attributes they have no place for (Units,
    DecayCorrection, the Radiopharmaceutical Information ...) in the Unassigned Shared Converted Attributes
    Sequence (0020,9170) of the shared functional groups (PS3.3 C.7.6.16.2.25); read them as top-level ones."""
    shared = get_item(ds, "SharedFunctionalGroupsSequence")
    unassigned = get_item(shared, "UnassignedSharedConvertedAttributesSequence")
    if unassigned is None:
        return
    for elem in unassigned:
        if elem.tag not in ds:
            ds.add(elem)
