"""The report PDF as a DICOM Encapsulated PDF instance (PS3.3 A.45.1, Encapsulated PDF IOD).

The instance joins the patient's study (the reference CT's Study Instance UID and patient/study attributes,
copied from the reference CT file when it is available) in a new series of modality DOC, so that a PACS
shows the report next to the images and the RT Dose/SR/SEG series.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

from .._files import atomic_path
from .._time import aware, offset_text, zone_assumed
from .._version import __version__
from ..errors import InvalidInputError
from ..results import Results
from ..study import SourceRef, Study

__all__ = ["encapsulated_pdf_dataset", "write_encapsulated_pdf", "REPORT_SERIES_NUMBER", "REPORT_DOCUMENT_CODE"]

#: Series number of the report series (high, so it sorts after acquired and RT series in viewers).
REPORT_SERIES_NUMBER = 9901

#: Document title code: LOINC 49118-3 "Nuclear Medicine Report", as listed in PS3.16 CID 7000
#: "Diagnostic Imaging Report Document Titles" (looked up in pydicom's code dictionary, not typed in).
REPORT_DOCUMENT_CODE = codes.LN.NuclearMedicineReport

# Patient and General Study module attributes copied from the reference CT so the report joins its study.
_COPIED = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
    "StudyDescription",
)


def _source_header(study: Study | None) -> Dataset | None:
    """Header of the first readable reference-CT (else first time-point) file, without pixel data."""
    if study is None:
        return None
    refs: list[SourceRef] = [study.reference_ct_source]
    for c in study.cycles:
        for tp in c.time_points:
            refs += [tp.ct_source, tp.source]
    for ref in refs:
        for f in ref.files[:1]:
            try:
                return pydicom.dcmread(f, stop_before_pixels=True)
            except (OSError, pydicom.errors.InvalidDicomError):
                continue
    return None


def _source_instances(study: Study | None) -> list[Dataset]:
    """SOP references of the images the report is derived from (reference CT and the time-point series)."""
    if study is None:
        return []
    refs: list[SourceRef] = [study.reference_ct_source]
    for c in study.cycles:
        refs += [tp.source for tp in c.time_points]
    out: list[Dataset] = []
    seen: set[str] = set()
    for ref in refs:
        if not ref.sop_class_uid:
            continue
        for uid in ref.sop_instance_uids:
            if uid in seen:
                continue
            seen.add(uid)
            item = Dataset()
            item.ReferencedSOPClassUID = ref.sop_class_uid
            item.ReferencedSOPInstanceUID = uid
            out.append(item)
    return out


def _dicom_date_time(dt: datetime) -> tuple[str, str]:
    return dt.strftime("%Y%m%d"), dt.strftime("%H%M%S")


def encapsulated_pdf_dataset(pdf: bytes, results: Results, *, title: str = "TheraTwin dosimetry report",
                             series_uid: str | None = None, sop_instance_uid: str | None = None,
                             study: Study | None = None) -> Dataset:
    """Build an Encapsulated PDF Storage instance holding ``pdf``.

    Parameters
    ----------
    pdf
        The PDF document.
    results
        The run's results (creation time, study).
    title
        Document Title (0042,0010).
    series_uid, sop_instance_uid
        UIDs to use (new ones by default, so that a re-export never collides with an earlier one).
    study
        The study (default ``results.study``): patient and study identity.

    Returns
    -------
    pydicom.Dataset
        The instance, with file meta information.
    """
    if not pdf.startswith(b"%PDF-"):
        raise InvalidInputError("Encapsulated PDF: the document does not start with '%PDF-'; pass a PDF file's bytes.")
    study = study if study is not None else results.study
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    # DA/TM in the data's offset, stated by TimezoneOffsetFromUTC when the data gave it (PS3.3 C.12.1.1.8)
    created = aware(results.created)
    start = study.cycles[0].administration.start if study is not None and study.cycles else None
    if start is not None:
        created = created.astimezone(start.tzinfo)
        if not zone_assumed(start):
            ds.TimezoneOffsetFromUTC = offset_text(start.utcoffset())
    else:
        created = created.astimezone()
    cdate, ctime = _dicom_date_time(created)
    ds.InstanceCreationDate, ds.InstanceCreationTime = cdate, ctime
    ds.SOPClassUID = EncapsulatedPDFStorage
    ds.SOPInstanceUID = sop_instance_uid or generate_uid()

    # Patient and General Study modules: from the reference CT file when available, else the study model.
    header = _source_header(study)
    for kw in _COPIED:
        if header is not None and kw in header:
            setattr(ds, kw, header[kw].value)
    if "PatientID" not in ds or not ds.PatientID:
        if study is None:
            raise InvalidInputError("Encapsulated PDF: the results have no study, so no PatientID to file it under.")
        ds.PatientID = study.patient.patient_id
    if "PatientName" not in ds and study is not None:
        ds.PatientName = study.patient.name
    if "PatientBirthDate" not in ds:
        bd = study.patient.birth_date if study is not None else None
        ds.PatientBirthDate = bd.strftime("%Y%m%d") if bd else ""
    if "PatientSex" not in ds:
        ds.PatientSex = study.patient.sex if study is not None else ""
    if study is not None and study.patient.issuer and "IssuerOfPatientID" not in ds:
        ds.IssuerOfPatientID = study.patient.issuer
    if "StudyInstanceUID" not in ds or not ds.StudyInstanceUID:
        uid = (study.study_uid or study.reference_ct_source.study_uid) if study is not None else ""
        ds.StudyInstanceUID = uid or generate_uid()
    for kw in ("StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber"):
        if kw not in ds:
            setattr(ds, kw, "")
    if study is not None and study.description and "StudyDescription" not in ds:
        ds.StudyDescription = study.description[:64]

    # Encapsulated Document Series module (PS3.3 C.24.1)
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SeriesNumber = REPORT_SERIES_NUMBER
    ds.SeriesDescription = "TheraTwin dosimetry report (research use)"
    ds.SeriesDate, ds.SeriesTime = cdate, ctime

    # General Equipment and SC Equipment modules
    ds.Manufacturer = "TheraTwin"
    ds.SoftwareVersions = __version__
    ds.ConversionType = "WSD"  # workstation: the document was made by software, not scanned

    # Encapsulated Document module (PS3.3 C.24.2)
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = cdate, ctime
    ds.AcquisitionDateTime = created.strftime("%Y%m%d%H%M%S")
    # the PDF shows the patient's name and ID in its text: identifying information is burned in
    ds.BurnedInAnnotation = "YES"
    ds.RecognizableVisualFeatures = "NO"
    ds.DocumentTitle = title[:64] if title else "TheraTwin dosimetry report"
    concept = Dataset()
    concept.CodeValue = REPORT_DOCUMENT_CODE.value
    concept.CodingSchemeDesignator = REPORT_DOCUMENT_CODE.scheme_designator
    concept.CodeMeaning = REPORT_DOCUMENT_CODE.meaning
    ds.ConceptNameCodeSequence = [concept]
    ds.VerificationFlag = "UNVERIFIED"
    sources = _source_instances(study)
    if sources:
        ds.SourceInstanceSequence = sources
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocumentLength = len(pdf)
    # OB values have even length; the pad byte is excluded by Encapsulated Document Length (PS3.3 C.24.2)
    ds.EncapsulatedDocument = pdf + (b"\x00" if len(pdf) % 2 else b"")

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def write_encapsulated_pdf(pdf: bytes | str | Path, results: Results, path: str | Path, *,
                           title: str = "TheraTwin dosimetry report", study: Study | None = None) -> Path:
    """Write the report PDF as a DICOM Encapsulated PDF file (new series and instance UIDs).

    Parameters
    ----------
    pdf
        PDF bytes or the path of a PDF file.
    results
        The run's results.
    path
        Output ``.dcm`` path.
    title
        Document Title.
    study
        The study (default ``results.study``).

    Returns
    -------
    Path
        The written file.
    """
    data = pdf if isinstance(pdf, bytes) else Path(pdf).read_bytes()
    ds = encapsulated_pdf_dataset(data, results, title=title, study=study)
    out = Path(path)
    with atomic_path(out) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return out
