"""What all objects of one DICOM export share: patient and study identity, frame of reference, numbering.

Every DICOM writer of TheraTwin builds on it: RT Dose (:mod:`.rtdose`), SEG (:mod:`.seg`), SR (:mod:`.sr`) and the
report's Encapsulated PDF (:mod:`theratwin.report.dicom`).

Results are written into the study of the *reference CT* (``Study.reference_ct_source``) and its frame of
reference, so that a viewer shows the RT Dose, SEG and SR with the images they were computed from. When the
reference CT's DICOM files are available, patient and study attributes are copied from them verbatim (a PACS
files the results into the existing study only if these match); otherwise they are built from the in-memory
:class:`~theratwin.study.Patient` and new UIDs are made (and the export says so in a warning).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from .._time import offset_text, zone_assumed
from .._version import __version__
from ..errors import InvalidInputError
from ..study import Study
from .uids import SeriesNumbering, max_series_number, new_uid

__all__ = ["ExportContext", "MANUFACTURER", "MODEL_NAME", "PATIENT_STUDY_KEYWORDS"]

MANUFACTURER = "TheraTwin project"
MODEL_NAME = "TheraTwin"

#: Patient and General Study module attributes copied from the reference CT into every exported object.
PATIENT_STUDY_KEYWORDS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientAge",
    "PatientWeight", "PatientSize", "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName",
    "StudyID", "AccessionNumber", "StudyDescription",
)


def _read_header(path: str | Path) -> Dataset | None:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, AttributeError):
        return None


@dataclass
class ExportContext:
    """Identity and numbering shared by the objects of one export.

    Attributes
    ----------
    patient_study
        A dataset holding the Patient and General Study attributes (type 2 ones present, maybe empty).
    frame_of_reference_uid
        The frame of reference of the reference CT (and of the dose grid registered to it).
    reference_ct
        Headers (no pixel data) of the reference CT slices, when the files exist; highdicom needs them as
        source images of the SEG.
    source_images
        Headers of the emission images (NM/PT) per cycle, when their files exist: ``{cycle: [datasets]}``.
    numbering
        Series numbers for this export.
    created
        Content date/time of every object in this export (one instant, so they sort together), timezone-aware in
        the data's offset: DA/TM written in that offset, with Timezone Offset From UTC (0008,0201) when the data
        gave their zone (PS3.3 C.12.1.1.8: it applies to every DA/TM of the instance, the copied Study Date/Time
        included).
    warnings
        Things the caller should tell the user (e.g. "no reference CT files: new study UID").
    """

    patient_study: Dataset
    frame_of_reference_uid: str
    reference_ct: list[Dataset] = field(default_factory=list)
    source_images: dict[int, list[Dataset]] = field(default_factory=dict)
    numbering: SeriesNumbering = field(default_factory=SeriesNumbering)
    created: datetime = field(default_factory=lambda: datetime.now().astimezone().replace(microsecond=0))
    warnings: list[str] = field(default_factory=list)
    timezone_offset: str = ""  # "+HHMM" written as TimezoneOffsetFromUTC, "" when the data gave no zone

    @property
    def study_uid(self) -> str:
        """Study Instance UID of ``patient_study``, which every object of this export is written into."""
        return str(self.patient_study.StudyInstanceUID)

    @classmethod
    def for_study(cls, study: Study, *, existing_files: Sequence[str | Path] = (),
                  created: datetime | None = None) -> ExportContext:
        """Build the context of an export of results of ``study``.

        Parameters
        ----------
        study
            The study the results were computed from.
        existing_files
            DICOM files already in the output folder; their series numbers are avoided.
        created
            Content date/time of the objects (timezone-aware; default: now), written in the data's offset.

        Raises
        ------
        InvalidInputError
            When the reference CT's PatientID is not the study's (results are never filed under another patient).
        """
        warnings: list[str] = []
        src = study.reference_ct_source
        ct_headers = [h for h in (_read_header(f) for f in src.files) if h is not None]
        ct_headers.sort(key=lambda d: int(d.get("InstanceNumber", 0) or 0))
        ps = Dataset()
        if ct_headers:
            first = ct_headers[0]
            for kw in PATIENT_STUDY_KEYWORDS:
                if kw in first:
                    setattr(ps, kw, first[kw].value)
            if str(first.PatientID) != study.patient.patient_id:
                raise InvalidInputError(
                    f"{src.files[0]}: PatientID (0010,0020) is {first.PatientID!r} but the study is of patient "
                    f"{study.patient.patient_id!r}; refusing to write results into another patient's study."
                )
        else:
            p = study.patient
            ps.PatientName = p.name
            ps.PatientID = p.patient_id
            if p.issuer:
                ps.IssuerOfPatientID = p.issuer
            ps.PatientBirthDate = p.birth_date.strftime("%Y%m%d") if p.birth_date else ""
            ps.PatientSex = p.sex
            study_uid = src.study_uid or study.study_uid
            if not study_uid:
                study_uid = new_uid()
                warnings.append("The study has no StudyInstanceUID: results were written into a new study "
                                f"{study_uid}.")
            ps.StudyInstanceUID = study_uid
            ps.StudyDate = ""
            ps.StudyTime = ""
            ps.ReferringPhysicianName = ""
            ps.StudyID = ""
            ps.AccessionNumber = ""
            if not src.files:
                warnings.append("The reference CT has no DICOM files: no SEG can be written and patient/study "
                                "attributes come from the in-memory study.")
        for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                   "ReferringPhysicianName", "StudyID", "AccessionNumber"):
            if kw not in ps:
                setattr(ps, kw, "")  # type 2 attributes must be present
        for_uid = src.frame_of_reference_uid or study.frame_of_reference_uid
        if not for_uid and ct_headers:
            for_uid = str(ct_headers[0].get("FrameOfReferenceUID", ""))
        if not for_uid:
            for_uid = new_uid()
            warnings.append(f"The reference CT has no FrameOfReferenceUID: a new frame of reference {for_uid} "
                            "was made; viewers will not overlay the dose on the CT automatically.")
        images: dict[int, list[Dataset]] = {}
        for c in study.cycles:
            hs = [h for tp in c.time_points for h in (_read_header(f) for f in tp.source.files) if h is not None]
            if hs:
                images[c.number] = hs
        used = max_series_number([*src.files, *existing_files,
                                  *(f for c in study.cycles for tp in c.time_points for f in tp.source.files)])
        start = study.cycles[0].administration.start
        when = created if created is not None else datetime.now(timezone.utc)
        created = when.replace(microsecond=0).astimezone(start.tzinfo)
        offset = "" if zone_assumed(start) else offset_text(start.utcoffset())
        return cls(ps, for_uid, ct_headers, images, SeriesNumbering.above(used), created=created, warnings=warnings,
                   timezone_offset=offset)

    def stamp_timezone(self, ds: Dataset) -> None:
        """Timezone Offset From UTC of the data, when they gave one (the zone of every DA/TM written)."""
        if self.timezone_offset:
            ds.TimezoneOffsetFromUTC = self.timezone_offset

    def copy_patient_study(self, ds: Dataset) -> None:
        """Copy the patient and study attributes into ``ds``."""
        for elem in self.patient_study:
            ds.add(pydicom.DataElement(elem.tag, elem.VR, elem.value))

    def equipment(self, ds: Dataset) -> None:
        """General Equipment and SOP Common timing attributes of an object made by TheraTwin."""
        ds.Manufacturer = MANUFACTURER
        ds.ManufacturerModelName = MODEL_NAME
        ds.SoftwareVersions = __version__
        ds.DeviceSerialNumber = "1"
        ds.InstanceCreationDate = self.created.strftime("%Y%m%d")
        ds.InstanceCreationTime = self.created.strftime("%H%M%S")
        ds.ContentDate = self.created.strftime("%Y%m%d")
        ds.ContentTime = self.created.strftime("%H%M%S")
        ds.SeriesDate = ds.ContentDate
        ds.SeriesTime = ds.ContentTime
        self.stamp_timezone(ds)
