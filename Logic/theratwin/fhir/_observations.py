"""Measured ``Observation`` per structure and cycle: a panel of the absorbed dose, BED, EQD2, TIA ... in UCUM.

``bodySite`` is in SNOMED CT, ``derivedFrom`` the ImagingStudy and ``partOf`` the cycle's administration.
"""

from __future__ import annotations

from datetime import tzinfo
from typing import Any

from ..results import CycleResult, StructureResult
from ..study import StructureKind, structure_kind
from ._common import Analysis, fhir_datetime, finite, interval, interval_component, sct
from ._imaging import ImagingRefs
from .codes import IDENTIFIER_BASE, OBSERVATION_CATEGORY_SYSTEM, coding, dicom_coding, quantity

__all__ = ["OBSERVATION_SYSTEM", "add_measured_observations", "body_site"]

OBSERVATION_SYSTEM = f"{IDENTIFIER_BASE}/observation"


def body_site(kind: StructureKind, name: str) -> dict[str, Any]:
    """SNOMED CT body site: the anatomic region of a lesion, else the structure's type."""
    concept = kind.anatomic_region if (kind.role.value == "lesion" and kind.anatomic_region) else kind.type
    cc: dict[str, Any] = {"text": name}
    if concept.scheme == "SCT":
        cc["coding"] = [sct(concept)]
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
    ("mean_dose_as_imaged_Gy", "mean-absorbed-dose-as-imaged", "Gy"),
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
        v = finite(getattr(sr, fld))
        if v is not None:
            comps.append({"code": _component_code(code), "valueQuantity": quantity(v, unit)})
    for key, code in _DVH_COMPONENTS:
        v = finite((sr.dvh_metrics or {}).get(key))
        if v is not None:
            comps.append({"code": _component_code(code), "valueQuantity": quantity(v, "Gy")})
    pv = sr.partial_volume or {}
    if "too_small" in pv:
        comps.append({"code": _component_code("below-resolution-limit"), "valueBoolean": bool(pv["too_small"])})
    lim = sr.limit or {}
    target = _LIMIT_COMPONENT.get(str(lim.get("quantity")))
    limit_Gy = finite(lim.get("value_Gy"))
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
        central, low, high = interval({"mean": e.get("tia_MBq_h", e.get("mean_MBq_h")),
                                        "low": e.get("low_MBq_h", e.get("low")),
                                        "high": e.get("high_MBq_h", e.get("high"))})
        code = "twin-estimated-time-integrated-activity"
        if central is not None:
            comps.append({"code": {"coding": [coding(code)]}, "valueQuantity": quantity(central, "MBq.h")})
            if low is not None and high is not None:
                comps.append(interval_component(code, "MBq.h", low, high, finite(e.get("level"))))
    return comps


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
        "bodySite": body_site(kind, name),
        "component": comps,
    }
    start = fhir_datetime(cr.administration_start, tz)
    last = None
    if cycle is not None and cycle.time_points:
        last = fhir_datetime(cycle.time_points[-1].acquisition_start, tz)
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
    pv = sr.partial_volume or {}
    if pv.get("too_small"):
        notes.append(f"Below the resolution limit: the largest part ({float(pv['largest_part_mL']):.1f} mL) is smaller "
                     f"than (2 x FWHM)^3 = {float(pv['threshold_mL']):.1f} mL at {float(pv['system_fwhm_mm']):g} mm "
                     "FWHM; activity and absorbed dose rest on a partial-volume correction. Interpret with caution.")
    if sr.estimated_by_twin:
        notes.append("The time-integrated activity of this sparsely imaged cycle was estimated by the digital twin "
                     "from the patient's earlier cycles (method twin-estimate).")
    if notes:
        obs["note"] = [{"text": t} for t in notes]
    return obs


def add_measured_observations(a: Analysis, imaging: ImagingRefs, adm_refs: dict[int, str],
                              kinds: dict[str, StructureKind]) -> dict[tuple[int, str], str]:
    """Add an Observation per structure and cycle with results; returns their ``fullUrl`` by (cycle, structure)."""
    study = a.study
    obs_refs: dict[tuple[int, str], str] = {}
    for n, cr in sorted(a.results.cycles.items()):
        cyc = study.cycle(n) if n in [c.number for c in study.cycles] else None
        for name, sr in cr.structures.items():
            comps = _measured_components(sr)
            if not comps:
                continue
            kind = kinds.get(name) or structure_kind(name)
            obs = _observation(sr, cr, name, kind, comps, a.patient_ref, imaging.derived_for(study, n),
                               adm_refs.get(n), a.issued, a.tz, cyc, a.tag)
            value = f"{a.key}/cycle{n}/{name}"
            obs["identifier"] = [{"system": OBSERVATION_SYSTEM, "value": value}]
            obs_refs[(n, name)] = a.builder.add(obs, system=OBSERVATION_SYSTEM, value=value)
    return obs_refs
