"""Build the FHIR R4 transaction Bundle of one TheraTwin analysis.

Resources (validated with the ``fhir.resources`` R4B models, which match R4 for these types):

* ``Patient`` — conditional create on the DICOM PatientID (``ifNoneExist: identifier=system|id``), so an
  existing patient is reused and never duplicated;
* ``ImagingStudy`` per DICOM study — the input series and the RT Dose / SR / SEG series TheraTwin wrote
  (read from the files with pydicom), identified by ``urn:dicom:uid`` / ``urn:oid:<StudyInstanceUID>``;
* ``MedicationAdministration`` per cycle — radiopharmaceutical, activity in MBq (UCUM) and start datetime;
* ``Observation`` per structure and cycle — a panel whose components are the absorbed dose (DCM 128533),
  BED, EQD2, TIA, effective half-life ... in UCUM units, ``bodySite`` in SNOMED CT, ``derivedFrom`` the
  ImagingStudy, ``partOf`` the administration; and, for the digital twin's predicted cycle, panels with
  status ``preliminary``, method "twin-prediction" and 90 % intervals (clearly marked as predicted);
* ``DiagnosticReport`` grouping the Observations, with the HTML/PDF report as ``presentedForm``;
* ``RiskAssessment`` for the twin's toxicity and response forecasts (research use);
* ``CarePlan`` (intent ``proposal``) for the recommended activity of the next cycle;
* ``Device`` (the software and its version) and ``Provenance`` (software, version and methods).

Idempotence: every resource is created conditionally on a stable identifier. Facts (patient, imaging study,
administration, software) are keyed by what identifies them in the real world; results of an analysis are
keyed by an *analysis key* derived from the patient, study and the time the results were computed, so
pushing the same ``fhir-bundle.json`` twice creates nothing twice, while a new analysis is stored as new
results. Provenance has no ``identifier`` in R4, so it is made conditional on a ``meta.tag`` carrying the
analysis key (``_tag`` search). ``fullUrl`` values are ``urn:uuid`` UUIDs derived from the identifiers
(UUID v5), so the same results always give the same bundle.

DICOM datetimes are local and carry no zone; FHIR requires one, so naive datetimes are interpreted in the
``timezone`` given (IANA name) or, by default, in the local zone of the computer running the export.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..errors import ConfigurationError, InvalidInputError
from ..results import RESEARCH_USE_NOTICE, CycleResult, Results, StructureResult
from ..study import StructureKind, structure_kind
from .codes import (
    CANONICAL_BASE,
    DCM_SYSTEM,
    DICOM_UID_SYSTEM,
    IDENTIFIER_BASE,
    OBSERVATION_CATEGORY_SYSTEM,
    PROVENANCE_PARTICIPANT_SYSTEM,
    V2_0074_SYSTEM,
    coding,
    dicom_coding,
    quantity,
    scheme_system,
)

__all__ = ["BundleOptions", "build_bundle", "bundle_to_json", "validate_resource", "validate_bundle",
           "analysis_key", "patient_identifier_system"]

log = logging.getLogger(__name__)

_UUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, CANONICAL_BASE)
_ANALYSIS_TAG_SYSTEM = f"{IDENTIFIER_BASE}/analysis"
_PREDICTED_TAG = {"system": f"{CANONICAL_BASE}/CodeSystem/theratwin", "code": "twin-prediction",
                  "display": "Prediction by the TheraTwin digital twin"}
_SOP_CLASS_SYSTEM = "urn:ietf:rfc:3986"


@dataclass
class BundleOptions:
    """Settings of the FHIR export (stage options of ``fhir_export``).

    Attributes
    ----------
    timezone
        IANA zone in which the study's naive DICOM datetimes are interpreted (None: this computer's zone).
    patient_identifier_system
        Identifier system of the DICOM PatientID at the receiving site (None: derived from IssuerOfPatientID,
        see :func:`patient_identifier_system`). Must match how the EHR identifies patients, or a new
        Patient is created.
    include_reports
        Embed report.pdf / report.html as DiagnosticReport.presentedForm (base64).
    dicomweb_url
        DICOMweb base URL of the PACS holding the studies (no credentials); when given, an ``Endpoint``
        (connection type dicom-wado-rs) is added and every ImagingStudy points to it, so viewers can fetch
        the images. The stage sets it from ``PipelineConfig.pacs_url`` when that is a DICOMweb URL.
    max_attachment_bytes
        Largest report file embedded (raw bytes). Servers limit string sizes (Medplum: 1 MB per string, and
        base64 inflates by 4/3), so a larger report is not embedded; the DiagnosticReport then says so and
        points to the DICOM Encapsulated PDF listed in the ImagingStudy.

    The stage also reads ``push_retries`` and ``push_backoff_s`` for the push (see :class:`FhirClient`).
    """

    timezone: str | None = None
    patient_identifier_system: str | None = None
    include_reports: bool = True
    dicomweb_url: str | None = None
    max_attachment_bytes: int = 700_000

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BundleOptions:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known - {"push_retries", "push_backoff_s"}
        if unknown:
            raise ConfigurationError(f"Unknown fhir_export options {sorted(unknown)}; known: {sorted(known)}.")
        return cls(**{k: v for k, v in d.items() if k in known})


# ------------------------------------------------------------------------------------------ helpers
def patient_identifier_system(issuer: str) -> str:
    """Identifier system for a DICOM PatientID issued by ``issuer`` (IssuerOfPatientID).

    An OID issuer gives ``urn:oid:<issuer>``, a URI issuer is used as it is, otherwise the system is
    ``https://theratwin.org/fhir/sid/dicom-patient-id[/<issuer>]``.
    """
    issuer = (issuer or "").strip()
    if issuer and all(p.isdigit() for p in issuer.split(".")) and "." in issuer:
        return f"urn:oid:{issuer}"
    if issuer.startswith(("urn:", "http://", "https://")):
        return issuer
    base = f"{IDENTIFIER_BASE}/dicom-patient-id"
    return f"{base}/{quote(issuer, safe='')}" if issuer else base


def analysis_key(results: Results) -> str:
    """Stable key of one analysis: hash of patient, study, computation time and software version."""
    study = results.study
    pid = study.patient.patient_id if study is not None else ""
    suid = study.study_uid if study is not None else ""
    text = f"{pid}|{suid}|{results.created.isoformat()}|{results.software_version}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _fhir_datetime(dt: datetime, tz: tzinfo | None) -> str:
    """ISO datetime with a zone (FHIR dateTime with a time SHALL carry one)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=tz) if tz is not None else dt.astimezone()
    return dt.isoformat()


def _urn(system: str, value: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_UUID_NAMESPACE, system + '|' + value)}"


def _search_token(system: str, value: str) -> str:
    return f"{quote(system, safe=':/')}|{quote(value, safe='')}"


def _sct(concept: Any) -> dict[str, str]:
    return {"system": scheme_system(concept.scheme), "code": concept.value, "display": concept.meaning}


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f == f and f not in (float("inf"), float("-inf")) else None


class _Builder:
    """Accumulates entries; each has a fullUrl, a resource and a conditional-create request."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def add(self, resource: dict[str, Any], *, system: str, value: str, if_none_exist: str | None = None) -> str:
        full_url = _urn(system, value)
        if_none_exist = if_none_exist or f"identifier={_search_token(system, value)}"
        rt = resource["resourceType"]
        self.entries.append({
            "fullUrl": full_url,
            "resource": resource,
            "request": {"method": "POST", "url": rt, "ifNoneExist": if_none_exist},
        })
        return full_url


# ------------------------------------------------------------------------------------------- twin
def _interval(v: Any) -> tuple[float | None, float | None, float | None]:
    """(central, low, high) from a number or a dict such as {"mean_Gy", "low_Gy", "high_Gy"}."""
    if isinstance(v, Mapping):
        central = low = high = None
        for k, x in v.items():
            k = str(k).lower()
            if central is None and k.startswith(("mean", "median", "value", "estimate")):
                central = _finite(x)
            elif low is None and k.startswith(("low", "lower", "p05", "q05")):
                low = _finite(x)
            elif high is None and k.startswith(("high", "upper", "p95", "q95")):
                high = _finite(x)
        return central, low, high
    return _finite(v), None, None


#: Predicted quantities of the twin (``results.twin["prediction"]["structures"][name]``): key -> (code, unit).
_PREDICTED_QUANTITIES = {
    "tia_MBq_h": ("predicted-time-integrated-activity", "MBq.h"),
    "dose_Gy": ("predicted-absorbed-dose", "Gy"),
    "bed_Gy": ("predicted-biologically-effective-dose", "Gy"),
    "cumulative_dose_Gy": ("predicted-cumulative-absorbed-dose", "Gy"),
    "cumulative_bed_Gy": ("predicted-cumulative-biologically-effective-dose", "Gy"),
    "cumulative_eqd2_Gy": ("predicted-cumulative-equieffective-dose-2gy", "Gy"),
}


def _interval_component(code: str, unit: str, low: float, high: float, level: float | None) -> dict[str, Any]:
    display = coding(code)["display"].lower()
    if level is None or abs(level - 0.9) < 1e-9:
        head, text = coding("prediction-interval-90"), f"90 % prediction interval of {display}"
    else:
        head, text = coding("prediction-interval"), f"{100 * level:g} % prediction interval of {display}"
    return {"code": {"coding": [head], "text": text},
            "valueRange": {"low": quantity(low, unit), "high": quantity(high, unit)}}


def _predicted_components(values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Components (value and interval) of one structure's predicted quantities."""
    comps: list[dict[str, Any]] = []
    for key, (code, unit) in _PREDICTED_QUANTITIES.items():
        if key not in values:
            continue
        central, low, high = _interval(values[key])
        if central is None:
            continue
        comps.append({"code": {"coding": [coding(code)]}, "valueQuantity": quantity(central, unit)})
        if low is not None and high is not None:
            v = values[key]
            level = _finite(v.get("level")) if isinstance(v, Mapping) else None
            comps.append(_interval_component(code, unit, low, high, level))
    return comps


def _twin_predictions(twin: Mapping[str, Any] | None) -> list[tuple[int, float | None, str, Mapping[str, Any]]]:
    """[(cycle, administered_MBq, structure, values)] from ``results.twin``'s prediction block(s)."""
    if not twin:
        return []
    block = twin.get("prediction", twin.get("predictions"))
    if block is None:
        return []
    preds: list[Mapping[str, Any]]
    if isinstance(block, Mapping) and "structures" in block:
        preds = [block]
    elif isinstance(block, Mapping):
        preds = [dict(v, cycle=v.get("cycle", k)) for k, v in block.items() if isinstance(v, Mapping)]
    elif isinstance(block, list):
        preds = [p for p in block if isinstance(p, Mapping)]
    else:
        return []
    out = []
    for p in preds:
        try:
            cyc = int(p.get("cycle"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        adm = _finite(p.get("administered_MBq", p.get("activity_MBq")))
        for name, vals in (p.get("structures") or {}).items():
            if isinstance(vals, Mapping):
                out.append((cyc, adm, str(name), vals))
    return out


def _forecasts(twin: Mapping[str, Any] | None, kind: str) -> list[tuple[str, Mapping[str, Any]]]:
    """[(structure or "lesions", forecast)] of ``kind`` ("toxicity" or "response") from ``results.twin``.

    The twin gives toxicity per organ (``{"organ": {"model", "probability"}}``) and one response forecast
    for the patient's lesions together (``{"model", "probability", "quantity"}``).
    """
    if not twin:
        return []
    fc = twin.get("forecast", twin.get("forecasts")) or {}
    block = fc.get(kind) if isinstance(fc, Mapping) else None
    if isinstance(block, Mapping) and "probability" in block:
        return [("lesions", block)]
    if isinstance(block, Mapping):
        return [(str(k), v) for k, v in block.items() if isinstance(v, Mapping)]
    return []


def _model_text(model: Any) -> str:
    if isinstance(model, Mapping):
        parts = [str(model.get("name") or model.get("type") or "model")]
        params = [f"{k}={v}" for k, v in model.items() if k not in ("name", "type", "reference", "kind")]
        if params:
            parts.append("(" + ", ".join(params) + ")")
        if model.get("reference"):
            parts.append(f"reference: {model['reference']}")
        return " ".join(parts)
    return str(model)


def _recommendation(twin: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if not twin:
        return None
    rec = twin.get("recommendation", twin.get("recommended_activity"))
    return rec if isinstance(rec, Mapping) else None


# ------------------------------------------------------------------------------------------- DICOM
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


def _endpoint(b: _Builder, url: str) -> str:
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


# ------------------------------------------------------------------------------------- resources
def _medication_concept(radiopharmaceutical: str, nuclide: str) -> dict[str, Any]:
    """CodeableConcept of the radiopharmaceutical; coded only where PS3.16 has the exact product."""
    text = f"{nuclide} {radiopharmaceutical}".strip()
    rp = radiopharmaceutical.upper().replace(" ", "").replace("-", "")
    nu = nuclide.upper().replace("-", "")
    cc: dict[str, Any] = {"text": text}
    if "DOTATATE" in rp and nu in ("LU177", "177LU"):
        cc["coding"] = [dicom_coding("SCT", "Lutetium177DOTATATE")]
    return cc


def _body_site(kind: StructureKind, name: str) -> dict[str, Any]:
    """SNOMED CT body site: the anatomic region of a lesion, else the structure's type."""
    concept = kind.anatomic_region if (kind.role.value == "lesion" and kind.anatomic_region) else kind.type
    cc: dict[str, Any] = {"text": name}
    if concept.scheme == "SCT":
        cc["coding"] = [_sct(concept)]
    return cc


_MEASURED_COMPONENTS = (
    # (StructureResult field, concept code or "dcm:<PS3.16 keyword>", UCUM unit)
    ("mean_dose_Gy", "dcm:MeanAbsorbedRadiationDose", "Gy"),
    ("bed_Gy", "biologically-effective-dose", "Gy"),
    ("eqd2_Gy", "equieffective-dose-2gy", "Gy"),
    ("tia_MBq_h", "time-integrated-activity", "MBq.h"),
    ("tia_sd_MBq_h", "time-integrated-activity-sd", "MBq.h"),
    ("effective_half_life_h", "effective-half-life", "h"),
    ("cumulative_dose_Gy", "cumulative-absorbed-dose", "Gy"),
    ("cumulative_bed_Gy", "cumulative-biologically-effective-dose", "Gy"),
    ("cumulative_eqd2_Gy", "cumulative-equieffective-dose-2gy", "Gy"),
    ("dose_per_activity_Gy_per_GBq", "absorbed-dose-per-activity", "Gy/GBq"),
    ("geud_Gy", "generalized-equivalent-uniform-dose", "Gy"),
    ("alpha_beta_Gy", "alpha-beta-ratio", "Gy"),
    ("repair_half_time_h", "dcm:HalfTimeForTissueRepair", "h"),
    ("mass_g", "structure-mass", "g"),
    ("volume_mL", "structure-volume", "mL"),
)

#: DVH metrics (``StructureResult.dvh_metrics`` keys) -> concept; Dmean is the mean dose above.
_DVH_COMPONENTS = (
    ("Dmax_Gy", "dcm:MaximumAbsorbedRadiationDose"),
    ("Dmin_Gy", "dcm:MinimumAbsorbedRadiationDose"),
    ("D50_Gy", "dcm:MedianAbsorbedRadiationDose"),
    ("D2_Gy", "dose-to-2-percent-volume"),
    ("D98_Gy", "dose-to-98-percent-volume"),
)

#: Which cumulative component a limit of ``StructureResult.limit["quantity"]`` applies to.
_LIMIT_COMPONENT = {"BED": "cumulative-biologically-effective-dose", "EQD2": "cumulative-equieffective-dose-2gy",
                    "dose": "cumulative-absorbed-dose"}
_INTERPRETATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"


def _component_code(code: str) -> dict[str, Any]:
    if code.startswith("dcm:"):
        return {"coding": [dicom_coding("DCM", code[4:])]}
    return {"coding": [coding(code)]}


def _measured_components(sr: StructureResult) -> list[dict[str, Any]]:
    """Components of one structure's results in one cycle (fields that are None are left out).

    The organ-at-risk limit (``sr.limit``) becomes the ``referenceRange`` of the cumulative quantity it
    applies to, with interpretation H (above) or N. A sparsely imaged cycle's TIA estimated by the twin is a
    separate component (with its interval), next to the kinetics stage's own value, so they stay apart.
    """
    comps: list[dict[str, Any]] = []
    for fld, code, unit in _MEASURED_COMPONENTS:
        v = _finite(getattr(sr, fld))
        if v is not None:
            comps.append({"code": _component_code(code), "valueQuantity": quantity(v, unit)})
    for key, code in _DVH_COMPONENTS:
        v = _finite((sr.dvh_metrics or {}).get(key))
        if v is not None:
            comps.append({"code": _component_code(code), "valueQuantity": quantity(v, "Gy")})
    lim = sr.limit or {}
    target = _LIMIT_COMPONENT.get(str(lim.get("quantity")))
    limit_Gy = _finite(lim.get("value_Gy"))
    if target and limit_Gy is not None:
        for comp in comps:
            if comp["code"]["coding"][0]["code"] == target:
                text = f"Cumulative {lim['quantity']} limit {limit_Gy:g} Gy"
                if lim.get("risk_factors"):
                    text += " (with risk factors)"
                if lim.get("reference"):
                    text += f"; {lim['reference']}"
                comp["referenceRange"] = [{"high": quantity(limit_Gy, "Gy"), "text": text[:1000]}]
                above = comp["valueQuantity"]["value"] > limit_Gy
                comp["interpretation"] = [{"coding": [{"system": _INTERPRETATION_SYSTEM,
                                                       "code": "H" if above else "N",
                                                       "display": "High" if above else "Normal"}]}]
    e = sr.estimated_by_twin
    if e:
        central, low, high = _interval({"mean": e.get("tia_MBq_h", e.get("mean_MBq_h")),
                                        "low": e.get("low_MBq_h", e.get("low")),
                                        "high": e.get("high_MBq_h", e.get("high"))})
        code = "twin-estimated-time-integrated-activity"
        if central is not None:
            comps.append({"code": {"coding": [coding(code)]}, "valueQuantity": quantity(central, "MBq.h")})
            if low is not None and high is not None:
                comps.append(_interval_component(code, "MBq.h", low, high, _finite(e.get("level"))))
    return comps


def build_bundle(results: Results, *, out_dir: str | Path | None = None,
                 options: BundleOptions | None = None) -> dict[str, Any]:
    """Build the transaction Bundle of ``results`` (a JSON-ready dict, validated with fhir.resources).

    Parameters
    ----------
    results
        The results of a pipeline run (``results.study`` must be set: the patient comes from it).
    out_dir
        The run's output directory, to read the DICOM objects and reports listed in ``results.outputs``.
    options
        Export settings (time zone, patient identifier system, reports).

    Returns
    -------
    dict
        A ``Bundle`` of type ``transaction`` whose entries are conditional creates (``ifNoneExist``).

    Raises
    ------
    InvalidInputError
        If ``results.study`` is missing or a resource fails validation (the message names the resource).
    """
    opts = options or BundleOptions()
    study = results.study
    if study is None:
        raise InvalidInputError("FHIR export needs results.study (the patient and administrations come from it).")
    try:
        tz: tzinfo | None = ZoneInfo(opts.timezone) if opts.timezone else None
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigurationError(f"fhir_export timezone {opts.timezone!r} is not an IANA zone: {exc}") from exc
    out = Path(out_dir) if out_dir is not None else None
    key = analysis_key(results)
    tag = {"system": _ANALYSIS_TAG_SYSTEM, "code": key, "display": "TheraTwin analysis"}
    created = results.created if results.created.tzinfo else results.created.replace(tzinfo=timezone.utc)
    issued = created.isoformat()
    b = _Builder()

    # Patient: resolved by identifier, never duplicated
    p = study.patient
    pid_system = opts.patient_identifier_system or patient_identifier_system(p.issuer)
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [{"use": "usual", "system": pid_system, "value": p.patient_id}],
        "gender": {"M": "male", "F": "female", "O": "other"}.get(p.sex, "unknown"),
    }
    alphabetic = p.name.split("=")[0]  # DICOM PN: alphabetic=ideographic=phonetic groups; FHIR text is alphabetic
    if alphabetic:
        family, _, rest = alphabetic.partition("^")
        given = [g for g in rest.split("^")[:2] if g]
        human_name: dict[str, Any] = {"text": " ".join([*given, family]).strip() or alphabetic}
        if family:
            human_name["family"] = family
        if given:
            human_name["given"] = given
        patient["name"] = [human_name]
    if p.birth_date is not None:
        patient["birthDate"] = p.birth_date.isoformat()
    patient_ref = b.add(patient, system=pid_system, value=p.patient_id)

    # ImagingStudy per DICOM study: the inputs and what TheraTwin wrote
    studies = _series_from_study(results)
    written = _series_from_dicom(_dicom_files(results, out))
    for st, series in written.items():
        studies.setdefault(st, {}).update(series)
    endpoint_ref = _endpoint(b, opts.dicomweb_url) if opts.dicomweb_url and studies else None
    imaging_by_uid: dict[str, str] = {}
    for st, series in studies.items():
        acqs = [tp.acquisition_start for c in study.cycles for tp in c.time_points
                if st in (tp.source.study_uid, tp.ct_source.study_uid)]
        res = _imaging_study(st, series, patient_ref, _fhir_datetime(min(acqs), tz) if acqs else None)
        if endpoint_ref:
            res["endpoint"] = [{"reference": endpoint_ref}]
        imaging_by_uid[st] = b.add(res, system=DICOM_UID_SYSTEM, value=f"urn:oid:{st}")
    imaging_refs = list(imaging_by_uid.values())

    def derived_for(cycle_number: int | None) -> list[dict[str, str]]:
        """The imaging studies a cycle's results come from: its time points' studies and TheraTwin's outputs."""
        uids = set(written) | ({study.study_uid} if study.study_uid else set())
        for c in study.cycles:
            if c.number == cycle_number:
                for tp in c.time_points:
                    uids |= {tp.source.study_uid, tp.ct_source.study_uid}
        refs = [imaging_by_uid[u] for u in imaging_by_uid if u in uids]
        return [{"reference": r} for r in (refs or imaging_refs)]

    # MedicationAdministration per cycle
    adm_refs: dict[int, str] = {}
    for c in study.cycles:
        a = c.administration
        start = _fhir_datetime(a.start, tz)
        value = f"{p.patient_id}/{a.start.isoformat()}/{a.nuclide}/{a.radiopharmaceutical}"
        system = f"{IDENTIFIER_BASE}/administration"
        dosage: dict[str, Any] = {"dose": quantity(a.activity_MBq, "MBq")}
        if a.route.lower() == "intravenous":
            dosage["route"] = {"coding": [dicom_coding("SCT", "IntravenousRoute")]}
        else:
            dosage["route"] = {"text": a.route}
        ma: dict[str, Any] = {
            "resourceType": "MedicationAdministration",
            "identifier": [{"system": system, "value": value}],
            "status": "completed",
            "category": {"text": f"Radioligand therapy, cycle {c.number}"},
            "medicationCodeableConcept": _medication_concept(a.radiopharmaceutical, a.nuclide),
            "subject": {"reference": patient_ref},
            "effectiveDateTime": start,
            "dosage": dosage,
        }
        if a.ligand_amount_ug is not None:
            ma["note"] = [{"text": f"Ligand amount {a.ligand_amount_ug:g} ug"}]
        adm_refs[c.number] = b.add(ma, system=system, value=value)

    # Observations per structure and cycle
    kinds = {s.name: s.kind for s in study.segmentation.structures} if study.segmentation else {}
    obs_system = f"{IDENTIFIER_BASE}/observation"
    obs_refs: dict[tuple[int, str], str] = {}
    for n, cr in sorted(results.cycles.items()):
        cyc = study.cycle(n) if n in [c.number for c in study.cycles] else None
        for name, sr in cr.structures.items():
            comps = _measured_components(sr)
            if not comps:
                continue
            kind = kinds.get(name) or structure_kind(name)
            obs = _observation(sr, cr, name, kind, comps, patient_ref, derived_for(n), adm_refs.get(n), issued, tz,
                               cyc, tag)
            value = f"{key}/cycle{n}/{name}"
            obs["identifier"] = [{"system": obs_system, "value": value}]
            obs_refs[(n, name)] = b.add(obs, system=obs_system, value=value)

    # predicted cycle(s) from the twin
    pred_refs: list[str] = []
    pred_structs: list[tuple[str, str]] = []
    for cyc_n, adm_MBq, name, vals in _twin_predictions(results.twin):
        comps = _predicted_components(vals)
        if not comps:
            continue
        if adm_MBq is not None:
            comps.insert(0, {"code": {"coding": [coding("administered-activity-assumed")]},
                             "valueQuantity": quantity(adm_MBq, "MBq")})
        kind = kinds.get(name) or structure_kind(name)
        value = f"{key}/predicted/cycle{cyc_n}/{name}"
        obs = {
            "resourceType": "Observation",
            "meta": {"tag": [tag, _PREDICTED_TAG]},
            "identifier": [{"system": obs_system, "value": value}],
            "status": "preliminary",
            "category": [{"coding": [{"system": OBSERVATION_CATEGORY_SYSTEM, "code": "imaging",
                                      "display": "Imaging"}]}],
            "code": {"coding": [coding("predicted-structure-dosimetry")],
                     "text": f"PREDICTED dosimetry of {name}, cycle {cyc_n} (digital twin, not measured)"},
            "subject": {"reference": patient_ref},
            "issued": issued,
            "bodySite": _body_site(kind, name),
            "method": {"coding": [coding("twin-prediction")]},
            "note": [{"text": "Predicted by the TheraTwin digital twin for a planned cycle; not a measurement. "
                              + RESEARCH_USE_NOTICE}],
            "component": comps,
        }
        derived = derived_for(None)
        if derived:
            obs["derivedFrom"] = derived
        pred_refs.append(b.add(obs, system=obs_system, value=value))
        pred_structs.append((pred_refs[-1], name))

    # DiagnosticReport grouping them
    report_system = f"{IDENTIFIER_BASE}/diagnostic-report"
    dr: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "meta": {"tag": [tag]},
        "identifier": [{"system": report_system, "value": f"{key}/report"}],
        "status": "final",
        "category": [{"coding": [{"system": V2_0074_SYSTEM, "code": "NMS", "display": "Nuclear Medicine Scan"}]}],
        "code": {"coding": [coding("dosimetry-report")], "text": "Radioligand therapy dosimetry (TheraTwin)"},
        "subject": {"reference": patient_ref},
        "effectiveDateTime": _fhir_datetime(study.cycles[-1].administration.start, tz),
        "issued": issued,
        "conclusion": _conclusion(results),
    }
    all_obs = list(obs_refs.values()) + pred_refs
    if all_obs:
        dr["result"] = [{"reference": r} for r in all_obs]
    if imaging_refs:
        dr["imagingStudy"] = [{"reference": r} for r in imaging_refs]
    forms, too_big = _presented_forms(results, out, opts.max_attachment_bytes) if opts.include_reports else ([], [])
    if forms:
        dr["presentedForm"] = forms
    if too_big:
        dr["conclusion"] += (f" Report file(s) {', '.join(too_big)} too large to embed (> "
                             f"{opts.max_attachment_bytes} bytes); see the DICOM Encapsulated PDF in the imaging study.")
    report_ref = b.add(dr, system=report_system, value=f"{key}/report")

    # RiskAssessments (toxicity, response)
    risk_refs = []
    risk_system = f"{IDENTIFIER_BASE}/risk-assessment"
    for kind_name, code in (("toxicity", "organ-toxicity-forecast"), ("response", "lesion-response-forecast")):
        fcs = _forecasts(results.twin, kind_name)
        preds = []
        basis = []
        for name, fc in fcs:
            prob, low, high = _interval(fc.get("probability", fc))
            if prob is None:
                continue
            prob = min(max(prob, 0.0), 1.0)
            what = f"{name}: {'normal-tissue complication' if kind_name == 'toxicity' else 'response'}"
            if fc.get("endpoint"):
                what += f" ({fc['endpoint']})"
            pred: dict[str, Any] = {
                "outcome": {"coding": [coding(code)], "text": what},
                "probabilityDecimal": round(prob, 6),
            }
            why = []
            if low is not None and high is not None:
                why.append(f"90 % interval {low:.3g} to {high:.3g}")
            if fc.get("model"):
                why.append("model " + _model_text(fc["model"]))
            if fc.get("quantity"):
                why.append(f"from the {fc['quantity']}")
            if why:
                pred["rationale"] = "; ".join(why)
            preds.append(pred)
            lesion_names = [n for n in kinds if kinds[n].role.value == "lesion"] if name == "lesions" else [name]
            basis += [{"reference": r} for (_, sn), r in obs_refs.items() if sn in lesion_names]
            basis += [{"reference": r} for r, sn in pred_structs if sn in lesion_names]
        if not preds:
            continue
        value = f"{key}/{kind_name}"
        ra = {
            "resourceType": "RiskAssessment",
            "meta": {"tag": [tag, _PREDICTED_TAG]},
            "identifier": [{"system": risk_system, "value": value}],
            "status": "preliminary",
            "method": {"coding": [coding("twin-prediction")]},
            "code": {"coding": [coding(code)]},
            "subject": {"reference": patient_ref},
            "occurrenceDateTime": issued,
            "basis": basis + [{"reference": report_ref}],
            "prediction": preds,
            "note": [{"text": f"Forecast by the TheraTwin digital twin ({kind_name}). {RESEARCH_USE_NOTICE}"}],
        }
        risk_refs.append(b.add(ra, system=risk_system, value=value))

    # CarePlan: recommended next-cycle activity
    rec = _recommendation(results.twin)
    rec_MBq = _finite(rec.get("administered_MBq", rec.get("activity_MBq"))) if rec else None
    if rec is not None and rec_MBq is not None:
        last = study.cycles[-1].administration
        cp_system = f"{IDENTIFIER_BASE}/care-plan"
        desc = f"Recommended activity {rec_MBq:.0f} MBq for cycle {rec.get('cycle', '?')}"
        if rec.get("confidence") is not None:
            desc += f", keeping every organ at risk under its cumulative limit at confidence {float(rec['confidence']):.2f}"
        if rec.get("status") == "upper_bound":
            desc += "; no limit is reached up to the largest activity considered"
            if rec.get("limiting_structure"):
                desc += f" (closest to its limit: {rec['limiting_structure']})"
        elif rec.get("limiting_structure"):
            desc += f"; limited by {rec['limiting_structure']}"
        if rec.get("status") == "limit_reached":
            desc += "; a limit is already reached: no further cycle is recommended"
        if rec.get("remaining_cycles_at_standard_activity") is not None and rec.get("standard_activity_MBq"):
            desc += (f"; {rec['remaining_cycles_at_standard_activity']} more cycle(s) possible at "
                     f"{float(rec['standard_activity_MBq']):.0f} MBq")
        cp = {
            "resourceType": "CarePlan",
            "meta": {"tag": [tag, _PREDICTED_TAG]},
            "identifier": [{"system": cp_system, "value": f"{key}/recommendation"}],
            "status": "draft",
            "intent": "proposal",
            "title": "Radioligand therapy: recommended next-cycle activity (research use)",
            "description": desc,
            "subject": {"reference": patient_ref},
            "created": issued,
            "supportingInfo": [{"reference": report_ref}] + [{"reference": r} for r in risk_refs],
            "activity": [{"detail": {
                "kind": "MedicationRequest",
                "code": {"coding": [coding("recommended-next-cycle-activity")]},
                "status": "not-started",
                "productCodeableConcept": _medication_concept(last.radiopharmaceutical, last.nuclide),
                "quantity": quantity(rec_MBq, "MBq"),
                "description": desc,
            }}],
            "note": [{"text": "Proposal computed by the TheraTwin digital twin; the physician decides. "
                              + RESEARCH_USE_NOTICE}],
        }
        b.add(cp, system=cp_system, value=f"{key}/recommendation")

    # Device (software) and Provenance (software, version, methods)
    dev_system = f"{IDENTIFIER_BASE}/software"
    dev_value = f"TheraTwin/{results.software_version}"
    device = {
        "resourceType": "Device",
        "identifier": [{"system": dev_system, "value": dev_value}],
        "status": "active",
        "deviceName": [{"name": "TheraTwin", "type": "user-friendly-name"}],
        "type": {"coding": [coding("software")], "text": "Dosimetry software"},
        "version": [{"value": results.software_version}],
        "note": [{"text": RESEARCH_USE_NOTICE}],
    }
    device_ref = b.add(device, system=dev_system, value=dev_value)
    targets = [e["fullUrl"] for e in b.entries
               if e["resource"]["resourceType"] not in ("Patient", "Device", "Endpoint")]
    entities: list[dict[str, Any]] = [{"role": "source", "what": {"reference": r}} for r in imaging_refs]
    for m in results.methods:
        text = f"{m.stage}: {m.method} ({m.software} {m.version})"
        if m.parameters:
            text += "; parameters " + ", ".join(f"{k}={v}" for k, v in m.parameters.items())
        if m.references:
            text += "; references " + " | ".join(m.references)
        entities.append({"role": "derivation", "what": {"display": text[:4000]}})
    prov = {
        "resourceType": "Provenance",
        "meta": {"tag": [tag]},
        "target": [{"reference": r} for r in targets],
        "recorded": issued,
        "activity": {"coding": [coding("dosimetry-analysis")]},
        "agent": [{
            "type": {"coding": [{"system": PROVENANCE_PARTICIPANT_SYSTEM, "code": "assembler",
                                 "display": "Assembler"}]},
            "who": {"reference": device_ref, "display": dev_value},
        }],
    }
    if entities:
        prov["entity"] = entities
    b.add(prov, system=_ANALYSIS_TAG_SYSTEM, value=f"{key}/provenance",
          if_none_exist=f"_tag={_search_token(_ANALYSIS_TAG_SYSTEM, key)}")

    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": b.entries}
    validate_bundle(bundle)
    return bundle


def _observation(sr: StructureResult, cr: CycleResult, name: str, kind: StructureKind,
                 comps: list[dict[str, Any]], patient_ref: str, derived: list[dict[str, str]],
                 adm_ref: str | None, issued: str, tz: tzinfo | None, cycle: Any,
                 tag: dict[str, str]) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "meta": {"tag": [tag]},
        "status": "final",
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY_SYSTEM, "code": "imaging", "display": "Imaging"}]}],
        "code": {"coding": [coding("structure-dosimetry")], "text": f"Dosimetry of {name}, cycle {cr.cycle}"},
        "subject": {"reference": patient_ref},
        "issued": issued,
        "bodySite": _body_site(kind, name),
        "component": comps,
    }
    start = _fhir_datetime(cr.administration_start, tz)
    last = None
    if cycle is not None and cycle.time_points:
        last = _fhir_datetime(cycle.time_points[-1].acquisition_start, tz)
    obs["effectivePeriod"] = {"start": start, **({"end": last} if last else {})}
    if adm_ref:
        obs["partOf"] = [{"reference": adm_ref}]
    if derived:
        obs["derivedFrom"] = derived
    methods = [f"{k}: {v}" for k, v in (("TIA", sr.tia_method), ("kinetic model", sr.kinetic_model),
                                         ("dose", sr.dose_method)) if v]
    if methods:
        obs["method"] = {"text": "; ".join(methods)}
    notes = []
    if sr.estimated_by_twin:
        notes.append("The time-integrated activity of this sparsely imaged cycle was estimated by the digital twin "
                     "from the patient's earlier cycles (method twin-estimate).")
    if notes:
        obs["note"] = [{"text": t} for t in notes]
    return obs


def _conclusion(results: Results) -> str:
    lines = []
    for n, cr in sorted(results.cycles.items()):
        parts = []
        for name, sr in cr.structures.items():
            if sr.mean_dose_Gy is not None:
                parts.append(f"{name} {sr.mean_dose_Gy:.2f} Gy")
        if parts:
            lines.append(f"Cycle {n} ({cr.administered_MBq:.0f} MBq {cr.nuclide} {cr.radiopharmaceutical}): mean "
                         "absorbed dose " + ", ".join(parts) + ".")
    lines.append(RESEARCH_USE_NOTICE)
    return " ".join(lines)


def _presented_forms(results: Results, out: Path | None,
                     max_bytes: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Attachments of the PDF/HTML reports (base64) and the names of those too large to embed."""
    forms: list[dict[str, Any]] = []
    too_big: list[str] = []
    for kind, ctype, title in (("report_pdf", "application/pdf", "TheraTwin dosimetry report (PDF)"),
                               ("report_html", "text/html", "TheraTwin dosimetry report (HTML)")):
        rel = results.outputs.get(kind)
        if not rel or out is None:
            continue
        path = Path(str(rel))
        path = path if path.is_absolute() else out / path
        if not path.is_file():
            log.warning("FHIR export: %s listed as %s does not exist; not attached", path, kind)
            continue
        data = path.read_bytes()
        if len(data) > max_bytes:
            log.info("FHIR export: %s is %d bytes (> %d); not embedded", path, len(data), max_bytes)
            too_big.append(path.name)
            continue
        forms.append({
            "contentType": ctype,
            "language": "en",
            "data": base64.b64encode(data).decode("ascii"),
            "size": len(data),
            # Attachment.hash is the base64 SHA-1 of the data (FHIR R4 datatypes, Attachment)
            "hash": base64.b64encode(hashlib.sha1(data).digest()).decode("ascii"),
            "title": title,
        })
    return forms, too_big


# ------------------------------------------------------------------------------------ validation
def validate_resource(resource: Mapping[str, Any]) -> Any:
    """Validate one resource with its ``fhir.resources`` R4B model; returns the model.

    Raises
    ------
    InvalidInputError
        Naming the resource type, its identifier and the first errors.
    """
    from fhir.resources.R4B import get_fhir_model_class
    from pydantic import ValidationError

    rt = str(resource.get("resourceType", ""))
    try:
        cls = get_fhir_model_class(rt)
    except (KeyError, ValueError) as exc:
        raise InvalidInputError(f"Unknown FHIR resource type {rt!r}.") from exc
    try:
        return cls.model_validate(dict(resource))
    except ValidationError as exc:
        ident = (resource.get("identifier") or [{}])[0].get("value", "") if isinstance(resource.get("identifier"), list) else ""
        raise InvalidInputError(f"FHIR {rt} {ident} is invalid (fhir.resources R4B): {exc}") from exc


def validate_bundle(bundle: Mapping[str, Any]) -> Any:
    """Validate every entry's resource and the Bundle itself with fhir.resources; returns the Bundle model."""
    for e in bundle.get("entry", []):
        validate_resource(e["resource"])
    return validate_resource(bundle)


def bundle_to_json(bundle: Mapping[str, Any], *, indent: int | None = 2) -> str:
    """Serialise a bundle dict (plain JSON; the dict is already R4-shaped)."""
    import json

    return json.dumps(bundle, indent=indent, ensure_ascii=False, allow_nan=False)
