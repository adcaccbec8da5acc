"""FHIR R4 export of TheraTwin results: bundle building, push with authentication and retries, outbox.

``build_bundle(results, out_dir=...)`` makes one transaction Bundle (Patient, ImagingStudy,
MedicationAdministration, Observation, DiagnosticReport, RiskAssessment, CarePlan, Device, Provenance) with
conditional creates on stable identifiers; ``push_output_dir(out_dir, fhir_url)`` sends it and completes the
outbox (used by ``theratwin push``); the pipeline stage ``fhir_export`` writes ``fhir-bundle.json``.
"""

from .bundle import (
    BundleOptions,
    analysis_key,
    build_bundle,
    bundle_to_json,
    patient_identifier_system,
    validate_bundle,
    validate_resource,
)
from .client import FhirAuth, FhirClient, FhirPushError, outcome_summary
from .codes import CONCEPTS, THERATWIN_SYSTEM, codesystem_resource, load_published_codesystem
from .push import (
    FhirPushReport,
    TransactionSummary,
    destination_key,
    fhir_outbox,
    push_bundle,
    push_output_dir,
)
from .smart import SmartBackendAuth, public_jwk, sign_rs384_jwt

__all__ = [
    "BundleOptions",
    "build_bundle",
    "bundle_to_json",
    "analysis_key",
    "patient_identifier_system",
    "validate_bundle",
    "validate_resource",
    "FhirAuth",
    "FhirClient",
    "FhirPushError",
    "outcome_summary",
    "CONCEPTS",
    "THERATWIN_SYSTEM",
    "codesystem_resource",
    "load_published_codesystem",
    "fhir_outbox",
    "destination_key",
    "FhirPushReport",
    "TransactionSummary",
    "push_bundle",
    "push_output_dir",
    "SmartBackendAuth",
    "public_jwk",
    "sign_rs384_jwt",
]
