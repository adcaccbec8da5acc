"""Code systems, codes and units used in TheraTwin's FHIR resources.

Standard codes are used where a standard concept exists and is looked up, not typed in, wherever a source is
at hand: SNOMED CT and DICOM (DCM) codes come from pydicom's PS3.16 code dictionary
(``pydicom.sr.codedict.codes``), the same source the DICOM SEG/SR writers use, so FHIR and DICOM carry the
same concepts. Units are UCUM (https://ucum.org; ``MBq``, ``Gy``, ``h``, ``MBq.h``, ``g``, ``mL``).

No LOINC or SNOMED CT observable exists (checked against PS3.16, which maps the SNOMED/LOINC concepts DICOM
uses) for the time-integrated activity, the effective half-life of a structure, the biologically effective
dose or EQD2 of a radionuclide therapy; DICOM has "Mean Absorbed Radiation Dose" (DCM 128533), which is used
for the absorbed dose. The rest are concepts of TheraTwin's own code system, :data:`THERATWIN_SYSTEM`,
published as the CodeSystem resource ``codesystem-theratwin.json`` shipped in this package (see
:func:`codesystem_resource`), so that receivers can look every code up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from pydicom.sr.codedict import codes

__all__ = [
    "CANONICAL_BASE",
    "THERATWIN_SYSTEM",
    "IDENTIFIER_BASE",
    "SNOMED_SYSTEM",
    "DCM_SYSTEM",
    "UCUM_SYSTEM",
    "LOINC_SYSTEM",
    "DICOM_UID_SYSTEM",
    "OBSERVATION_CATEGORY_SYSTEM",
    "V2_0074_SYSTEM",
    "PROVENANCE_PARTICIPANT_SYSTEM",
    "Concept",
    "CONCEPTS",
    "concept",
    "coding",
    "scheme_system",
    "dicom_coding",
    "quantity",
    "codesystem_resource",
    "load_published_codesystem",
]

#: Canonical base URL of TheraTwin's FHIR artefacts (code system, identifier systems).
CANONICAL_BASE = "https://theratwin.org/fhir"
#: TheraTwin's own code system (canonical URL of the CodeSystem resource).
THERATWIN_SYSTEM = f"{CANONICAL_BASE}/CodeSystem/theratwin"
#: Prefix of the identifier systems of the resources TheraTwin creates (``{IDENTIFIER_BASE}/observation`` ...).
IDENTIFIER_BASE = f"{CANONICAL_BASE}/sid"

SNOMED_SYSTEM = "http://snomed.info/sct"
DCM_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
UCUM_SYSTEM = "http://unitsofmeasure.org"
LOINC_SYSTEM = "http://loinc.org"
#: Identifier system for DICOM UIDs (FHIR R4 ImagingStudy: value is ``urn:oid:<UID>``).
DICOM_UID_SYSTEM = "urn:dicom:uid"
OBSERVATION_CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
#: HL7 v2 table 0074 (diagnostic service section), used for DiagnosticReport.category ("NMS").
V2_0074_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-0074"
PROVENANCE_PARTICIPANT_SYSTEM = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"

_SCHEME_SYSTEMS = {"SCT": SNOMED_SYSTEM, "DCM": DCM_SYSTEM, "LN": LOINC_SYSTEM, "UCUM": UCUM_SYSTEM}


@dataclass(frozen=True)
class Concept:
    """A concept of TheraTwin's code system: code, display, definition and UCUM unit (if a quantity)."""

    code: str
    display: str
    definition: str
    unit: str | None = None


#: Concepts of :data:`THERATWIN_SYSTEM`, by code. Add, never rename: codes are stored in EHRs.
CONCEPTS: dict[str, Concept] = {
    c.code: c
    for c in [
        Concept("structure-dosimetry", "Radiopharmaceutical therapy dosimetry of a structure",
                "Panel of the dosimetric results of one segmented structure for one treatment cycle; the "
                "quantities are components."),
        Concept("predicted-structure-dosimetry", "Predicted radiopharmaceutical therapy dosimetry of a structure",
                "Panel of quantities predicted by the patient's digital twin for a planned (not yet given) "
                "cycle; predicted, not measured."),
        Concept("time-integrated-activity", "Time-integrated activity",
                "Activity in the structure integrated from the start of administration to infinity "
                "(MIRD: cumulated activity, Ã).", "MBq.h"),
        Concept("time-integrated-activity-sd", "Standard deviation of the time-integrated activity",
                "One standard deviation of the time-integrated activity, propagated from the fit covariance.",
                "MBq.h"),
        Concept("twin-estimated-time-integrated-activity", "Time-integrated activity estimated by the digital twin",
                "Time-integrated activity of a sparsely imaged cycle estimated by the digital twin from the "
                "patient's earlier cycles and the population prior (posterior mean).", "MBq.h"),
        Concept("effective-half-life", "Effective half-life",
                "Effective half-life of the activity in the structure (biological clearance and physical decay).",
                "h"),
        Concept("biologically-effective-dose", "Biologically effective dose (BED)",
                "Biologically effective dose of the cycle for the structure's tissue (Dale's linear-quadratic "
                "model for radionuclide therapy).", "Gy"),
        Concept("equieffective-dose-2gy", "Equieffective dose in 2 Gy fractions (EQD2)",
                "Dose in 2 Gy fractions with the same effect as the BED: EQD2 = BED / (1 + 2 Gy / (alpha/beta)).",
                "Gy"),
        Concept("cumulative-absorbed-dose", "Cumulative mean absorbed dose",
                "Mean absorbed dose summed over all cycles up to and including this one.", "Gy"),
        Concept("cumulative-biologically-effective-dose", "Cumulative biologically effective dose",
                "BED summed over all cycles up to and including this one.", "Gy"),
        Concept("cumulative-equieffective-dose-2gy", "Cumulative EQD2",
                "EQD2 of the cumulative BED.", "Gy"),
        Concept("absorbed-dose-per-activity", "Mean absorbed dose per administered activity",
                "Mean absorbed dose divided by the administered activity of the cycle.", "Gy/GBq"),
        Concept("alpha-beta-ratio", "Alpha/beta ratio of the linear-quadratic model",
                "Tissue alpha/beta ratio used for the BED of this structure.", "Gy"),
        Concept("generalized-equivalent-uniform-dose", "Generalised equivalent uniform dose (gEUD)",
                "gEUD of the structure's absorbed-dose distribution (Niemierko), for lesions.", "Gy"),
        Concept("dose-to-2-percent-volume", "D2 (dose to 2 % of the volume)",
                "Minimum absorbed dose to the hottest 2 % of the structure's volume (cumulative DVH).", "Gy"),
        Concept("dose-to-98-percent-volume", "D98 (dose to 98 % of the volume)",
                "Minimum absorbed dose to the hottest 98 % of the structure's volume (cumulative DVH).", "Gy"),
        Concept("mean-absorbed-dose-as-imaged", "Mean absorbed dose as imaged",
                "Mean absorbed dose of the voxel dose map before partial-volume correction (what the system "
                "resolution and the voxel grid leave of a small structure's dose); for comparison.", "Gy"),
        Concept("below-resolution-limit", "Structure below the resolution limit",
                "True when the structure's largest part is smaller than (2 x system FWHM)^3: its activity and "
                "absorbed dose rest on a partial-volume correction; interpret with caution."),
        Concept("structure-mass", "Mass of the structure", "Mass of the segmented structure.", "g"),
        Concept("structure-volume", "Volume of the structure", "Volume of the segmented structure.", "mL"),
        Concept("administered-activity-assumed", "Administered activity assumed for the prediction",
                "Activity the digital twin assumed for the predicted cycle.", "MBq"),
        Concept("predicted-time-integrated-activity", "Predicted time-integrated activity",
                "Time-integrated activity predicted by the digital twin (posterior mean).", "MBq.h"),
        Concept("predicted-absorbed-dose", "Predicted mean absorbed dose",
                "Mean absorbed dose predicted by the digital twin (posterior mean).", "Gy"),
        Concept("predicted-biologically-effective-dose", "Predicted biologically effective dose",
                "BED predicted by the digital twin (posterior mean).", "Gy"),
        Concept("predicted-cumulative-biologically-effective-dose", "Predicted cumulative BED",
                "Cumulative BED after the predicted cycle, predicted by the digital twin.", "Gy"),
        Concept("predicted-cumulative-absorbed-dose", "Predicted cumulative mean absorbed dose",
                "Cumulative mean absorbed dose after the predicted cycle, predicted by the digital twin.", "Gy"),
        Concept("predicted-cumulative-equieffective-dose-2gy", "Predicted cumulative EQD2",
                "Cumulative EQD2 after the predicted cycle, predicted by the digital twin.", "Gy"),
        Concept("prediction-interval", "Prediction interval",
                "Qualifier: the component's Range is a central prediction interval (level stated in the "
                "component text) of the quantity named in the component text."),
        Concept("prediction-interval-90", "90 % prediction interval",
                "Qualifier: the component's Range is the central 90 % prediction interval of the quantity named "
                "in the component text."),
        Concept("twin-prediction", "Prediction by the TheraTwin digital twin",
                "Method: Bayesian patient-specific radiopharmacokinetic model updated with each cycle's imaging; "
                "research use."),
        Concept("twin-estimate", "Estimate by the TheraTwin digital twin from sparse imaging",
                "Method: time-integrated activity of a sparsely imaged cycle estimated by the digital twin from the "
                "patient's earlier cycles and the population prior."),
        Concept("dosimetry-report", "Radiopharmaceutical therapy dosimetry report",
                "Report of the patient-specific dosimetry of a radiopharmaceutical therapy."),
        Concept("organ-toxicity-forecast", "Organ toxicity forecast",
                "Probability of a normal-tissue complication in an organ at risk (NTCP model); research use."),
        Concept("lesion-response-forecast", "Lesion response forecast",
                "Probability that a lesion responds, from its absorbed dose (dose-response model); research use."),
        Concept("recommended-next-cycle-activity", "Recommended activity for the next cycle",
                "Largest activity that keeps every organ at risk under its cumulative limit at the stated "
                "confidence, per the digital twin; a proposal for the physician, research use.", "MBq"),
        Concept("planned-cycle-activity", "Planned activity of a treatment cycle",
                "Activity the digital twin's plan gives one remaining cycle of the protocol, such that every organ "
                "at risk stays under its cumulative limit with the stated joint probability; a proposal for the "
                "physician, research use.", "MBq"),
        Concept("prior-data-conflict", "Prior-data conflict of the digital twin",
                "Standardised deviation of the patient's kinetic parameter from the population prior (or of one "
                "cycle from the patient's own, between-cycle prior) found by a prior-predictive check; beyond the "
                "threshold the twin widened that prior so that the patient's data decide.", "{SD}"),
        Concept("dosimetry-analysis", "Dosimetry analysis by TheraTwin",
                "Provenance activity: kinetic fitting, absorbed-dose calculation, radiobiology and digital-twin "
                "prediction by TheraTwin."),
        Concept("method", "Method used",
                "Provenance entity: a method (algorithm, model, parameters, references) used for the results."),
        Concept("software", "Dosimetry software", "Device type: the TheraTwin software."),
    ]
}


def concept(code: str) -> Concept:
    """The concept ``code`` of TheraTwin's code system (KeyError names the code if unknown)."""
    return CONCEPTS[code]


def coding(code: str) -> dict[str, str]:
    """FHIR Coding of a TheraTwin concept."""
    c = CONCEPTS[code]
    return {"system": THERATWIN_SYSTEM, "code": c.code, "display": c.display}


def scheme_system(scheme: str) -> str:
    """FHIR system URI of a DICOM coding-scheme designator (``SCT``, ``DCM``, ``LN``, ``UCUM``)."""
    if scheme not in _SCHEME_SYSTEMS:
        raise KeyError(f"No FHIR system known for coding scheme {scheme!r}; known: {sorted(_SCHEME_SYSTEMS)}")
    return _SCHEME_SYSTEMS[scheme]


def dicom_coding(scheme: str, keyword: str) -> dict[str, str]:
    """FHIR Coding of a PS3.16 concept looked up by keyword, e.g. ``dicom_coding("SCT", "Kidney")``."""
    c = getattr(getattr(codes, scheme), keyword)
    return {"system": scheme_system(c.scheme_designator), "code": str(c.value), "display": str(c.meaning)}


def quantity(value: float, unit: str) -> dict[str, Any]:
    """A UCUM Quantity (``unit`` is both the human unit and the UCUM code; TheraTwin units are UCUM)."""
    return {"value": float(value), "unit": unit, "system": UCUM_SYSTEM, "code": unit}


def codesystem_resource() -> dict[str, Any]:
    """TheraTwin's code system as an R4 CodeSystem resource (what ``codesystem-theratwin.json`` holds)."""
    return {
        "resourceType": "CodeSystem",
        "id": "theratwin",
        "url": THERATWIN_SYSTEM,
        "version": "1",
        "name": "TheraTwinCodes",
        "title": "TheraTwin dosimetry and digital-twin concepts",
        "status": "active",
        "experimental": False,
        "publisher": "TheraTwin developers",
        "description": (
            "Concepts used by TheraTwin for radiopharmaceutical therapy dosimetry results, digital-twin "
            "predictions and forecasts where no LOINC, SNOMED CT or DICOM concept exists. Quantity concepts state "
            "their UCUM unit in the property 'unit'. Codes are added, never renamed."
        ),
        "caseSensitive": True,
        "content": "complete",
        "count": len(CONCEPTS),
        "property": [{"code": "unit", "description": "UCUM unit of the quantity", "type": "string"}],
        "concept": [
            {
                "code": c.code,
                "display": c.display,
                "definition": c.definition,
                **({"property": [{"code": "unit", "valueString": c.unit}]} if c.unit else {}),
            }
            for c in CONCEPTS.values()
        ],
    }


def load_published_codesystem() -> dict[str, Any]:
    """The CodeSystem resource as shipped in the package (``codesystem-theratwin.json``)."""
    text = resources.files(__package__).joinpath("codesystem-theratwin.json").read_text(encoding="utf-8")
    return dict(json.loads(text))

