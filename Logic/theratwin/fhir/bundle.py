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

FHIR dateTimes carry the data's offset: the study's datetimes are timezone-aware (DT offsets, Timezone Offset From
UTC, or the site zone given to the reader). Only when the files gave no zone (the offset was assumed from the
computer running the read) does the ``timezone`` option (IANA name) replace it, reading the wall-clock times there.

The resources are built by the private modules of this package, one per concern (``_patient``, ``_imaging``,
``_observations``, ``_report``, ``_twin``, ``_provenance``, on the shared ``_common``); this module keeps the
public entry points and the order of the entries.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timezone, tzinfo
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..errors import ConfigurationError, InvalidInputError
from ..options import parse_options
from ..results import Results
from ._common import ANALYSIS_TAG_SYSTEM, Analysis, Builder
from ._imaging import add_imaging_studies
from ._observations import add_measured_observations
from ._patient import add_administrations, add_patient
from ._provenance import add_device_and_provenance
from ._report import add_diagnostic_report
from ._twin import add_care_plan, add_predicted_observations, add_risk_assessments
from .codes import IDENTIFIER_BASE

__all__ = ["BundleOptions", "build_bundle", "bundle_to_json", "validate_resource", "validate_bundle",
           "analysis_key", "patient_identifier_system"]


@dataclass(frozen=True)
class BundleOptions:
    """Settings of the FHIR bundle (stage options of ``fhir_export``, with the push settings of
    :class:`~theratwin.fhir.stage.FhirExportOptions`).

    Attributes
    ----------
    timezone
        IANA zone for datetimes whose zone the DICOM did not give (None: the zone assumed when reading).
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
    """

    timezone: str | None = None
    patient_identifier_system: str | None = None
    include_reports: bool = True
    dicomweb_url: str | None = None
    max_attachment_bytes: int = 700_000

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BundleOptions:
        """The options from a plain mapping (:func:`~theratwin.options.parse_options`, ``stage="fhir_export"``)."""
        return parse_options(cls, d, stage="fhir_export")


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
    tag = {"system": ANALYSIS_TAG_SYSTEM, "code": key, "display": "TheraTwin analysis"}
    created = results.created if results.created.tzinfo else results.created.replace(tzinfo=timezone.utc)
    issued = created.isoformat()
    b = Builder()
    a = Analysis(results=results, study=study, builder=b, key=key, tag=tag, issued=issued, tz=tz)

    # the entries in this order: the Provenance, last, targets every result entry added before it
    a.patient_ref = add_patient(a, opts.patient_identifier_system or patient_identifier_system(study.patient.issuer))
    imaging = add_imaging_studies(a, out, opts.dicomweb_url)
    adm_refs = add_administrations(a)
    kinds = {s.name: s.kind for s in study.segmentation.structures} if study.segmentation else {}
    obs_refs = add_measured_observations(a, imaging, adm_refs, kinds)
    pred_structs = add_predicted_observations(a, imaging, kinds)
    report_ref = add_diagnostic_report(a, list(obs_refs.values()) + [r for r, _ in pred_structs], imaging.refs, out,
                                       include_reports=opts.include_reports,
                                       max_attachment_bytes=opts.max_attachment_bytes)
    risk_refs = add_risk_assessments(a, kinds, obs_refs, pred_structs, report_ref)
    add_care_plan(a, report_ref, risk_refs)
    add_device_and_provenance(a, imaging.refs)

    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": b.entries}
    validate_bundle(bundle)
    return bundle


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
