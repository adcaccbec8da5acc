"""The report PDF as a DICOM Encapsulated PDF instance (PS3.3 A.45.1, Encapsulated PDF IOD).

The instance joins the patient's study in a new series of modality DOC, so that a PACS shows the report next to
the images and the RT Dose/SR/SEG series: its patient, study and equipment attributes, UIDs and dates come from the
same :class:`~theratwin.dicom.exportcontext.ExportContext` as theirs (copied from the reference CT file when it is
available).
"""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, EncapsulatedPDFStorage, ExplicitVRLittleEndian

from .._files import atomic_path
from .._time import aware
from ..dicom.exportcontext import ExportContext
from ..dicom.uids import new_uid
from ..errors import InvalidInputError
from ..results import Results
from ..study import SourceRef, Study

__all__ = ["encapsulated_pdf_dataset", "write_encapsulated_pdf", "REPORT_SERIES_NUMBER", "REPORT_DOCUMENT_CODE"]

#: Series number of the report series (high, so it sorts after acquired and RT series in viewers).
REPORT_SERIES_NUMBER = 9901

#: Document title code: LOINC 49118-3 "Nuclear Medicine Report", as listed in PS3.16 CID 7000
#: "Diagnostic Imaging Report Document Titles" (looked up in pydicom's code dictionary, not typed in).
REPORT_DOCUMENT_CODE = codes.LN.NuclearMedicineReport


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


def encapsulated_pdf_dataset(pdf: bytes, results: Results, *, title: str = "TheraTwin dosimetry report",
                             series_uid: str | None = None, sop_instance_uid: str | None = None,
                             study: Study | None = None, context: ExportContext | None = None) -> Dataset:
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
    context
        The export's shared identity (:class:`~theratwin.dicom.exportcontext.ExportContext`, as the RT Dose, SEG
        and SR use); default: one made for ``study`` with the results' creation time.

    Returns
    -------
    pydicom.Dataset
        The instance, with file meta information.
    """
    if not pdf.startswith(b"%PDF-"):
        raise InvalidInputError("Encapsulated PDF: the document does not start with '%PDF-'; pass a PDF file's bytes.")
    study = study if study is not None else results.study
    if context is None:
        if study is None:
            raise InvalidInputError("Encapsulated PDF: the results have no study, so no PatientID to file it under.")
        context = ExportContext.for_study(study, created=aware(results.created))
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = EncapsulatedPDFStorage
    ds.SOPInstanceUID = sop_instance_uid or new_uid()
    # Patient and General Study modules: the export's (copied from the reference CT file when available)
    context.copy_patient_study(ds)
    if study is not None and study.description and "StudyDescription" not in ds:
        ds.StudyDescription = study.description[:64]
    # General Equipment, SOP Common and content date/time (one instant, in the data's offset, with
    # TimezoneOffsetFromUTC when the data gave their zone, PS3.3 C.12.1.1.8)
    context.equipment(ds)
    created = context.created

    # Encapsulated Document Series module (PS3.3 C.24.1)
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = series_uid or new_uid()
    ds.SeriesNumber = REPORT_SERIES_NUMBER
    ds.SeriesDescription = "TheraTwin dosimetry report (research use)"

    # SC Equipment module
    ds.ConversionType = "WSD"  # workstation: the document was made by software, not scanned

    # Encapsulated Document module (PS3.3 C.24.2)
    ds.InstanceNumber = 1
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
