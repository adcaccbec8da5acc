"""``ImagingStudy`` per DICOM study (the input series and the objects TheraTwin wrote) and the PACS ``Endpoint``.

The input series come from the study model; the written ones (RT Dose, SR, SEG, Encapsulated PDF) are read
from the files with pydicom. Studies are identified by ``urn:dicom:uid`` / ``urn:oid:<StudyInstanceUID>``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError
from ..results import Results
from ..study import Study
from ._common import Analysis, Builder, fhir_datetime
from .codes import DCM_SYSTEM, DICOM_UID_SYSTEM, IDENTIFIER_BASE

__all__ = ["ImagingRefs", "add_imaging_studies"]

# the export logs under its public module, as before the split
log = logging.getLogger("theratwin.fhir.bundle")

_SOP_CLASS_SYSTEM = "urn:ietf:rfc:3986"


def _dicom_files(results: Results, out_dir: Path | None) -> list[Path]:
    """DICOM files TheraTwin wrote: ``outputs["dicom"]`` (files or folders) and the encapsulated-PDF report."""
    if out_dir is None:
        return []
    items: list[Any] = []
    for kind in ("dicom", "report_dicom"):
        entry = results.outputs.get(kind)
        if isinstance(entry, Mapping):
            for v in entry.values():
                items.extend(v if isinstance(v, (list, tuple)) else [v])
        elif isinstance(entry, (list, tuple)):
            items.extend(entry)
        elif entry is not None:
            items.append(entry)
    files: list[Path] = []
    for it in items:
        p = Path(str(it))
        p = p if p.is_absolute() else out_dir / p
        if p.is_dir():
            files.extend(sorted(q for q in p.rglob("*") if q.is_file()))
        elif p.is_file():
            files.append(p)
    return list(dict.fromkeys(files))


def _series_from_dicom(files: Iterable[Path]) -> dict[str, dict[str, dict[str, Any]]]:
    """{study UID: {series UID: {"modality", "number", "description", "instances": {uid: (class, number)}}}}."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    studies: dict[str, dict[str, dict[str, Any]]] = {}
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except (InvalidDicomError, OSError) as exc:  # a non-DICOM file in dicom/ is skipped, not fatal
            log.info("FHIR export: %s is not DICOM (%s); not listed in ImagingStudy", f, exc)
            continue
        st = str(ds.get("StudyInstanceUID", ""))
        se = str(ds.get("SeriesInstanceUID", ""))
        if not st or not se:
            continue
        series = studies.setdefault(st, {}).setdefault(se, {
            "modality": str(ds.get("Modality", "OT")),
            "number": ds.get("SeriesNumber"),
            "description": str(ds.get("SeriesDescription", "")),
            "instances": {},
        })
        series["instances"][str(ds.SOPInstanceUID)] = (str(ds.SOPClassUID), ds.get("InstanceNumber"))
    return studies


def _series_from_study(results: Results) -> dict[str, dict[str, dict[str, Any]]]:
    """The input series the study was read from (NM/PT, CT, SEG), by study UID."""
    studies: dict[str, dict[str, dict[str, Any]]] = {}
    study = results.study
    if study is None:
        return studies
    refs = []
    for c in study.cycles:
        for tp in c.time_points:
            refs.extend([tp.source, tp.ct_source])
    if study.segmentation is not None:
        refs.append(study.segmentation.source)
    for r in refs:
        st = r.study_uid or study.study_uid
        if not st or not r.series_uid:
            continue
        series = studies.setdefault(st, {}).setdefault(r.series_uid, {
            "modality": r.modality or "OT", "number": None, "description": r.series_description, "instances": {},
        })
        for uid in r.sop_instance_uids:
            if r.sop_class_uid:
                series["instances"].setdefault(uid, (r.sop_class_uid, None))
    return studies


def _imaging_study(study_uid: str, series: Mapping[str, Mapping[str, Any]], patient_ref: str,
                   started: str | None) -> dict[str, Any]:
    modalities = sorted({s["modality"] for s in series.values()})
    res: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "identifier": [{"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study_uid}"}],
        "status": "available",
        "modality": [{"system": DCM_SYSTEM, "code": m} for m in modalities],
        "subject": {"reference": patient_ref},
        "numberOfSeries": len(series),
        "numberOfInstances": sum(len(s["instances"]) for s in series.values()),
        "series": [],
    }
    if started:
        res["started"] = started
    for uid, s in series.items():
        ser: dict[str, Any] = {"uid": uid, "modality": {"system": DCM_SYSTEM, "code": s["modality"]},
                               "numberOfInstances": len(s["instances"])}
        if s.get("number") is not None:
            ser["number"] = int(s["number"])
        if s.get("description"):
            ser["description"] = s["description"]
        insts = []
        for iuid, (cls_uid, num) in s["instances"].items():
            inst: dict[str, Any] = {"uid": iuid, "sopClass": {"system": _SOP_CLASS_SYSTEM, "code": f"urn:oid:{cls_uid}"}}
            if num is not None:
                inst["number"] = int(num)
            insts.append(inst)
        if insts:
            ser["instance"] = insts
        res["series"].append(ser)
    return res


def _endpoint(b: Builder, url: str) -> str:
    """An Endpoint for the PACS's DICOMweb service (WADO-RS), created once per address."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.username or parts.password:
        raise ConfigurationError("fhir_export dicomweb_url must be an http(s) DICOMweb base URL without "
                                 "credentials.")
    address = url.rstrip("/")
    system = f"{IDENTIFIER_BASE}/endpoint"
    ep = {
        "resourceType": "Endpoint",
        "identifier": [{"system": system, "value": address}],
        "status": "active",
        "connectionType": {"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                           "code": "dicom-wado-rs", "display": "DICOM WADO-RS"},
        "name": "PACS (DICOMweb)",
        "payloadType": [{"text": "DICOM"}],
        "payloadMimeType": ["application/dicom"],
        "address": address,
    }
    return b.add(ep, system=system, value=address)


@dataclass
class ImagingRefs:
    """The ImagingStudy entries of the bundle and the studies TheraTwin wrote objects into."""

    by_uid: dict[str, str]
    written: set[str]

    @property
    def refs(self) -> list[str]:
        return list(self.by_uid.values())

    def derived_for(self, study: Study, cycle_number: int | None) -> list[dict[str, str]]:
        """The imaging studies a cycle's results come from: its time points' studies and TheraTwin's outputs."""
        uids = set(self.written) | ({study.study_uid} if study.study_uid else set())
        for c in study.cycles:
            if c.number == cycle_number:
                for tp in c.time_points:
                    uids |= {tp.source.study_uid, tp.ct_source.study_uid}
        refs = [self.by_uid[u] for u in self.by_uid if u in uids]
        return [{"reference": r} for r in (refs or self.refs)]


def add_imaging_studies(a: Analysis, out: Path | None, dicomweb_url: str | None) -> ImagingRefs:
    """Add an ImagingStudy per DICOM study (the inputs and what TheraTwin wrote), and the PACS Endpoint."""
    study = a.study
    studies = _series_from_study(a.results)
    written = _series_from_dicom(_dicom_files(a.results, out))
    for st, series in written.items():
        studies.setdefault(st, {}).update(series)
    endpoint_ref = _endpoint(a.builder, dicomweb_url) if dicomweb_url and studies else None
    imaging_by_uid: dict[str, str] = {}
    for st, series in studies.items():
        acqs = [tp.acquisition_start for c in study.cycles for tp in c.time_points
                if st in (tp.source.study_uid, tp.ct_source.study_uid)]
        res = _imaging_study(st, series, a.patient_ref, fhir_datetime(min(acqs), a.tz) if acqs else None)
        if endpoint_ref:
            res["endpoint"] = [{"reference": endpoint_ref}]
        imaging_by_uid[st] = a.builder.add(res, system=DICOM_UID_SYSTEM, value=f"urn:oid:{st}")
    return ImagingRefs(by_uid=imaging_by_uid, written=set(written))
