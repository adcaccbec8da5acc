"""The facts of the treatment: the ``Patient`` and one ``MedicationAdministration`` per cycle.

Both are keyed by what identifies them in the real world (the DICOM PatientID; the patient, start, nuclide
and radiopharmaceutical of an administration), so an existing patient or administration is reused.
"""

from __future__ import annotations

from typing import Any

from .._time import wall_clock
from ._common import Analysis, fhir_datetime
from .codes import IDENTIFIER_BASE, dicom_coding, quantity

__all__ = ["add_patient", "add_administrations", "medication_concept"]


def medication_concept(radiopharmaceutical: str, nuclide: str) -> dict[str, Any]:
    """CodeableConcept of the radiopharmaceutical; coded only where PS3.16 has the exact product."""
    text = f"{nuclide} {radiopharmaceutical}".strip()
    rp = radiopharmaceutical.upper().replace(" ", "").replace("-", "")
    nu = nuclide.upper().replace("-", "")
    cc: dict[str, Any] = {"text": text}
    if "DOTATATE" in rp and nu in ("LU177", "177LU"):
        cc["coding"] = [dicom_coding("SCT", "Lutetium177DOTATATE")]
    return cc


def add_patient(a: Analysis, pid_system: str) -> str:
    """Add the Patient (resolved by identifier, never duplicated); returns its ``fullUrl``."""
    p = a.study.patient
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
    return a.builder.add(patient, system=pid_system, value=p.patient_id)


def add_administrations(a: Analysis) -> dict[int, str]:
    """Add one MedicationAdministration per cycle; returns their ``fullUrl`` by cycle number."""
    adm_refs: dict[int, str] = {}
    for c in a.study.cycles:
        adm = c.administration
        start = fhir_datetime(adm.start, a.tz)
        # the identifier keeps the wall-clock time (as before zones were read), so re-pushes match earlier ones
        value = (f"{a.study.patient.patient_id}/{wall_clock(adm.start).isoformat()}/{adm.nuclide}/"
                 f"{adm.radiopharmaceutical}")
        system = f"{IDENTIFIER_BASE}/administration"
        dosage: dict[str, Any] = {"dose": quantity(adm.activity_MBq, "MBq")}
        if adm.route.lower() == "intravenous":
            dosage["route"] = {"coding": [dicom_coding("SCT", "IntravenousRoute")]}
        else:
            dosage["route"] = {"text": adm.route}
        ma: dict[str, Any] = {
            "resourceType": "MedicationAdministration",
            "identifier": [{"system": system, "value": value}],
            "status": "completed",
            "category": {"text": f"Radioligand therapy, cycle {c.number}"},
            "medicationCodeableConcept": medication_concept(adm.radiopharmaceutical, adm.nuclide),
            "subject": {"reference": a.patient_ref},
            "effectiveDateTime": start,
            "dosage": dosage,
        }
        if adm.ligand_amount_ug is not None:
            ma["note"] = [{"text": f"Ligand amount {adm.ligand_amount_ug:g} ug"}]
        adm_refs[c.number] = a.builder.add(ma, system=system, value=value)
    return adm_refs
