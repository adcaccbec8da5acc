"""Comprehensive 3D SR with the TID 1500 Measurement Report of a TheraTwin run (highdicom).

Content
-------
One *Volumetric ROI Measurements* group (TID 1411) per structure and cycle, referencing the structure's
segment in the exported SEG and the reference CT series it was drawn on. The cycle is the group's Time Point
Context (TID 1502: time point ``"Cycle n"``, protocol time point identifier ``"cycle<n>"``) and is part of
the tracking identifier ``"<structure> cycle <n>"``. Each group holds, where computed:

==============================================  ======================================  ===========
Quantity                                        Concept name                            Unit (UCUM)
==============================================  ======================================  ===========
administered activity of the cycle              (113507, DCM, "Administered activity")  MBq
volume / mass                                   (118565006, SCT) / (118538004, SCT)     ml / g
time-integrated activity                        (TTW0001, 99TTWN)                       MBq.h
time-integrated activity coefficient            (TTW0002, 99TTWN)                       h
effective half-life                             (TTW0003, 99TTWN)                       h
mean / max / min / median (D50) absorbed dose   (128533 / 128531 / 128532 / 128539 DCM) Gy
D2 % and D98 %                                  (TTW0006, TTW0007, 99TTWN)              Gy
absorbed dose per administered activity        (TTW0012, 99TTWN)                       Gy/GBq
BED, EQD2, gEUD                                 (TTW0004, TTW0005, TTW0014, 99TTWN)     Gy
alpha/beta, repair half-time                    (TTW0011, 99TTWN) / (130091, DCM)       Gy / h
cumulative mean dose, BED, EQD2 up to the cycle (TTW0008..TTW0010, 99TTWN)              Gy
MIRD organ S-value dose (for comparison)        (TTW0015, 99TTWN)                       Gy
mean dose of the map before partial-volume      (TTW0016, 99TTWN)                       Gy
correction (for comparison)
==============================================  ======================================  ===========

A structure smaller than ``(2 x system FWHM)^3`` (``StructureResult.partial_volume["too_small"]``) gets the
qualitative evaluation (TTW0017, 99TTWN, "Below resolution limit") = (373066001, SCT, "Yes") in its groups: its
activity and dose rest on a partial-volume correction and are to be read with caution.

Standard deviations of TIA, mean dose, BED and EQD2 are companion measurements (``TTW03<i>1``) in the same
group. How each quantity was computed is recorded as Algorithm Identification (TID 4019) on the primary
measurement of each stage (TIA: kinetics, mean dose: dosimetry, BED: radiobiology): name ``"TheraTwin
<stage>"``, the software version, and as parameters the stage's method from ``Results.methods`` plus the
structure's own kinetic model, TIA method and dose method.

Predictions of the digital twin (``TwinResults.prediction``, read with ``TwinResults.from_results``) go into *separate* groups whose
measurements all carry the method (TTW0101, 99TTWN, "Predicted by digital twin"), whose tracking identifier
ends in ``"predicted"`` and whose time point reads ``"Cycle n (predicted)"``; their 90 % prediction interval
is given by companion measurements (``TTW03<i>5`` / ``TTW03<i>9``: 5th / 95th percentile). TIAs that the
twin *estimated* for sparsely imaged cycles (``StructureResult.estimated_by_twin``) form their own groups
(``"<structure> cycle <n> twin estimate"``) whose measurements carry the method (TTW0102, 99TTWN,
"Estimated by digital twin"), as does a cycle's TIA when its ``tia_method`` is the twin's.

The twin's prior–data conflicts (``TwinResults.conflicts``) are z-scores (unit ``{SD}``) in the
structure's prediction group (TTW0201-0203: uptake, washout, uptake rate against the population prior;
TTW0211-0213: one cycle against the patient's own, between-cycle prior). Its plan for the remaining cycles
(``TwinResults.plan``) is one group per organ at risk, ``"<organ> cycle <last planned> end of plan
predicted"``, time point ``"End of plan, after cycle n (predicted)"``: the predicted cumulative limited
quantity (BED, EQD2 or dose, with its 90 % interval), the probability that the organ exceeds its limit
(TTW0113), the joint probability that all limits hold (TTW0112), the number of planned cycles (TTW0111) and
the planned total activity (TTW0110).

Documents
---------
An export writes one SR document per cycle and one for the predictions (:func:`sr_parts`), as instances
of one series: each tree stays small enough for validators that hold it in memory.

Private codes
-------------
Where no DICOM (DCM) or SNOMED CT code exists for a quantity, the codes of the coding scheme designator
``99TTWN`` ("TheraTwin private codes", version 1; PS3.16 8.2 allows a private scheme whose designator begins
with "99") are used; :data:`TTWN_CODES` lists them with their definitions, and every SR declares the scheme in
its Coding Scheme Identification Sequence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.valuerep import DA, TM

from .._version import __version__
from ..results import MethodRecord, Results, StructureResult
from ..study import Structure
from ..twin.output import TwinResults
from .exportcontext import MANUFACTURER, MODEL_NAME, ExportContext
from .seg import coded
from .uids import new_uid

__all__ = [
    "TTWN",
    "TTWN_CODES",
    "UNITS",
    "SR_SERIES_DESCRIPTION",
    "SRMeasurement",
    "planned_measurements",
    "build_sr",
    "sr_parts",
    "read_sr_measurements",
]

SR_SERIES_DESCRIPTION = "TheraTwin dosimetry measurements TID 1500 [research use]"

#: Designator of the project's private coding scheme (PS3.16 Section 8.2: private designators start with "99").
TTWN = "99TTWN"

#: The private codes: ``{key: (code value, meaning, definition)}``.
TTWN_CODES: dict[str, tuple[str, str, str]] = {
    "tia": ("TTW0001", "Time-integrated activity",
            "Number of decays in the structure over the cycle divided by 3.6e9 (MBq.h); MIRD Pamphlet 21 "
            "(Bolch et al. 2009, J Nucl Med 50:477) symbol A-tilde."),
    "tiac": ("TTW0002", "Time-integrated activity coefficient",
             "Time-integrated activity divided by the administered activity (h); MIRD Pamphlet 21 a-tilde, "
             "formerly residence time."),
    "effective_half_life": ("TTW0003", "Effective half-life",
                            "Half-life of the clearance phase of the fitted time-activity curve, combining "
                            "physical decay and biological clearance (h)."),
    "bed": ("TTW0004", "Biologically effective dose",
            "Linear-quadratic BED for a continuous, exponentially decreasing dose rate (Dale 1985, Br J Radiol "
            "58:515), in Gy."),
    "eqd2": ("TTW0005", "Equivalent dose in 2 Gy fractions",
             "EQD2 = BED / (1 + 2 Gy / (alpha/beta)) (Withers et al. 1983), in Gy."),
    "d2": ("TTW0006", "Near-maximum absorbed dose D2%",
           "Smallest absorbed dose received by the hottest 2 % of the structure volume (ICRU Report 83), Gy."),
    "d98": ("TTW0007", "Near-minimum absorbed dose D98%",
            "Smallest absorbed dose received by 98 % of the structure volume (ICRU Report 83), Gy."),
    "cumulative_dose": ("TTW0008", "Cumulative mean absorbed dose",
                        "Sum of the mean absorbed doses of all cycles up to and including this one, Gy."),
    "cumulative_bed": ("TTW0009", "Cumulative biologically effective dose",
                       "BED summed over all cycles up to and including this one, Gy."),
    "cumulative_eqd2": ("TTW0010", "Cumulative EQD2",
                        "EQD2 of the cumulative BED, Gy."),
    "alpha_beta": ("TTW0011", "Alpha/beta ratio used",
                   "Linear-quadratic alpha/beta ratio of the tissue used for BED and EQD2, Gy."),
    "dose_per_activity": ("TTW0012", "Absorbed dose per administered activity",
                          "Mean absorbed dose divided by the administered activity, Gy/GBq."),
    "geud": ("TTW0014", "Generalised equivalent uniform dose",
             "Niemierko's gEUD of the absorbed-dose distribution in the structure, Gy."),
    "organ_s_value_dose": ("TTW0015", "Organ S-value absorbed dose",
                           "Mean absorbed dose by the MIRD organ/sphere S-value method, for comparison, Gy."),
    "mean_dose_as_imaged": ("TTW0016", "Mean absorbed dose as imaged",
                            "Mean absorbed dose of the voxel dose map before partial-volume correction (what the "
                            "system resolution and the voxel grid leave of a small structure's dose), Gy; for "
                            "comparison with the corrected mean absorbed dose."),
    "below_resolution": ("TTW0017", "Below resolution limit",
                         "The structure's largest part is smaller than (2 x system FWHM)^3: its activity and "
                         "absorbed dose rest on a partial-volume correction larger than the measurement's own "
                         "resolution allows to verify; interpret with caution."),
    "predicted": ("TTW0101", "Predicted by digital twin",
                  "Value forecast by the TheraTwin Bayesian patient twin for a cycle, before or without imaging; "
                  "not a measurement."),
    "twin_estimate": ("TTW0102", "Estimated by digital twin",
                      "Value estimated by the patient twin from sparse imaging of the cycle and the previous "
                      "cycles (Bayesian update), not from a full time-activity curve."),
    "planned_total_activity": ("TTW0110", "Planned total administered activity",
                               "Sum of the activities the twin's plan gives the remaining cycles of the protocol, MBq."),
    "planned_cycles": ("TTW0111", "Number of planned cycles",
                       "Number of further cycles in the twin's plan for the remaining cycles of the protocol."),
    "probability_all_limits": ("TTW0112", "Probability all organ limits held",
                               "Joint probability, over the twin's posterior-predictive draws, that every organ at "
                               "risk stays under its cumulative limit at the end of the plan."),
    "probability_over_limit": ("TTW0113", "Probability organ limit exceeded",
                               "Probability that this organ's cumulative limited quantity exceeds its limit at the "
                               "end of the plan."),
    "conflict_uptake": ("TTW0201", "Prior-data conflict of uptake",
                        "Standardised deviation (SD) of the patient's uptake from the population prior "
                        "(prior-predictive check); beyond the threshold the prior was widened."),
    "conflict_washout": ("TTW0202", "Prior-data conflict of washout",
                         "Standardised deviation (SD) of the patient's washout rate from the population prior."),
    "conflict_uptake_rate": ("TTW0203", "Prior-data conflict of uptake rate",
                             "Standardised deviation (SD) of the patient's uptake rate from the population prior."),
    "cycle_change_uptake": ("TTW0211", "Between-cycle change of uptake",
                            "Standardised deviation (SD) of one cycle's uptake from the patient's own, against the "
                            "between-cycle prior."),
    "cycle_change_washout": ("TTW0212", "Between-cycle change of washout",
                             "Standardised deviation (SD) of one cycle's washout rate from the patient's own."),
    "cycle_change_uptake_rate": ("TTW0213", "Between-cycle change of uptake rate",
                                 "Standardised deviation (SD) of one cycle's uptake rate from the patient's own."),
}


#: Quantities whose uncertainty is reported, with the digit used in their companion codes.
_UNCERTAIN = {"tia": 1, "mean_dose": 2, "bed": 3, "eqd2": 4, "cumulative_dose": 5, "cumulative_bed": 6,
              "cumulative_eqd2": 7}
_MEANINGS = {"tia": "time-integrated activity", "mean_dose": "mean absorbed dose",
             "bed": "biologically effective dose", "eqd2": "EQD2", "cumulative_dose": "cumulative mean absorbed dose",
             "cumulative_bed": "cumulative BED", "cumulative_eqd2": "cumulative EQD2"}
# Companion measurements carry the uncertainty of a quantity in the same group (TID 310 measurement properties
# would be the natural place, but TID 1419 as validators implement it accepts only INFERRED FROM children of a
# NUM): "TTW03<i>1" standard deviation, "TTW03<i>5" / "TTW03<i>9" 5th / 95th percentile of the prediction.
for _key, _i in _UNCERTAIN.items():
    TTWN_CODES[f"{_key}:sd"] = (f"TTW03{_i}1", f"SD of {_MEANINGS[_key]}"[:64],
                                f"Standard deviation (standard uncertainty) of the {_MEANINGS[_key]} estimate.")
    TTWN_CODES[f"{_key}:low"] = (f"TTW03{_i}5", f"5th percentile of twin {_MEANINGS[_key]}"[:64],
                                 f"Lower limit of the 90 % interval of the twin's predictive (or, for an "
                                 f"estimate, posterior) distribution of the {_MEANINGS[_key]}.")
    TTWN_CODES[f"{_key}:high"] = (f"TTW03{_i}9", f"95th percentile of twin {_MEANINGS[_key]}"[:64],
                                  f"Upper limit of the 90 % interval of the twin's predictive (or, for an "
                                  f"estimate, posterior) distribution of the {_MEANINGS[_key]}.")


def _ttwn(key: str) -> hd.sr.CodedConcept:
    value, meaning, _ = TTWN_CODES[key]
    return hd.sr.CodedConcept(value=value, scheme_designator=TTWN, meaning=meaning, scheme_version="1")


def _ucum(value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=value, scheme_designator="UCUM", meaning=meaning)


#: UCUM units used in the SR.
UNITS: dict[str, hd.sr.CodedConcept] = {
    "MBq": _ucum("MBq", "megabecquerel"),
    "MBq.h": _ucum("MBq.h", "megabecquerel hour"),
    "h": _ucum("h", "hour"),
    "Gy": _ucum("Gy", "Gray"),
    "Gy/GBq": _ucum("Gy/GBq", "Gray per gigabecquerel"),
    "ml": _ucum("ml", "milliliter"),
    "g": _ucum("g", "gram"),
    "1": _ucum("1", "no units"),
    "{SD}": _ucum("{SD}", "standard deviation"),
    "{cycles}": _ucum("{cycles}", "cycles"),
}

_STANDARD: dict[str, Any] = {
    "administered_activity": codes.DCM.AdministeredActivity,
    "volume": codes.SCT.Volume,
    "mass": codes.SCT.MassQuantity,
    "mean_dose": codes.DCM.MeanAbsorbedRadiationDose,
    "max_dose": codes.DCM.MaximumAbsorbedRadiationDose,
    "min_dose": codes.DCM.MinimumAbsorbedRadiationDose,
    "median_dose": codes.DCM.MedianAbsorbedRadiationDose,
    "repair_half_time": codes.DCM.HalfTimeForTissueRepair,
}


def _concept(key: str) -> hd.sr.CodedConcept:
    if key in _STANDARD:
        c = _STANDARD[key]
        return hd.sr.CodedConcept(c.value, c.scheme_designator, c.meaning)
    return _ttwn(key)


@dataclass(frozen=True)
class SRMeasurement:
    """One numeric measurement of the SR, in the form tests and readers compare.

    ``group`` is the tracking identifier of its measurement group (``"<structure> cycle <n>"``, with
    ``" predicted"`` appended for twin predictions); ``code`` is ``(value, scheme)``.
    """

    group: str
    structure: str
    cycle: int
    code: tuple[str, str]
    value: float
    unit: str
    predicted: bool = False
    sd: float | None = None
    low: float | None = None
    high: float | None = None
    estimate: bool = False


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


# (quantity key, StructureResult attribute or dvh_metrics key, unit, algorithm stage)
_FIELDS: tuple[tuple[str, str, str, str], ...] = (
    ("volume", "volume_mL", "ml", "segmentation"),
    ("mass", "mass_g", "g", "segmentation"),
    ("tia", "tia_MBq_h", "MBq.h", "kinetics"),
    ("tiac", "residence_time_h", "h", "kinetics"),
    ("effective_half_life", "effective_half_life_h", "h", "kinetics"),
    ("mean_dose", "mean_dose_Gy", "Gy", "dosimetry"),
    ("max_dose", "dvh:Dmax_Gy", "Gy", "dosimetry"),
    ("min_dose", "dvh:Dmin_Gy", "Gy", "dosimetry"),
    ("median_dose", "dvh:D50_Gy", "Gy", "dosimetry"),
    ("d2", "dvh:D2_Gy", "Gy", "dosimetry"),
    ("d98", "dvh:D98_Gy", "Gy", "dosimetry"),
    ("dose_per_activity", "dose_per_activity_Gy_per_GBq", "Gy/GBq", "dosimetry"),
    ("organ_s_value_dose", "organ_s_value_dose_Gy", "Gy", "dosimetry"),
    ("mean_dose_as_imaged", "mean_dose_as_imaged_Gy", "Gy", "dosimetry"),
    ("bed", "bed_Gy", "Gy", "radiobiology"),
    ("eqd2", "eqd2_Gy", "Gy", "radiobiology"),
    ("geud", "geud_Gy", "Gy", "radiobiology"),
    ("alpha_beta", "alpha_beta_Gy", "Gy", "radiobiology"),
    ("repair_half_time", "repair_half_time_h", "h", "radiobiology"),
    ("cumulative_dose", "cumulative_dose_Gy", "Gy", "radiobiology"),
    ("cumulative_bed", "cumulative_bed_Gy", "Gy", "radiobiology"),
    ("cumulative_eqd2", "cumulative_eqd2_Gy", "Gy", "radiobiology"),
)

_SD_FIELD = {"tia": "tia_sd_MBq_h", "mean_dose": "mean_dose_sd_Gy"}
_YES = hd.sr.CodedConcept(value="373066001", scheme_designator="SCT", meaning="Yes")


def _field(sr: StructureResult, attr: str) -> float | None:
    if attr.startswith("dvh:"):
        return _finite((sr.dvh_metrics or {}).get(attr[4:]))
    return _finite(getattr(sr, attr, None))


# --- twin predictions ------------------------------------------------------------------------------------------

#: The twin's predicted quantities (:data:`theratwin.twin.PREDICTED_QUANTITIES`) -> (quantity key, unit).
_PRED_KEYS = {
    "tia_MBq_h": ("tia", "MBq.h"), "dose_Gy": ("mean_dose", "Gy"), "bed_Gy": ("bed", "Gy"),
    "cumulative_dose_Gy": ("cumulative_dose", "Gy"), "cumulative_bed_Gy": ("cumulative_bed", "Gy"),
    "cumulative_eqd2_Gy": ("cumulative_eqd2", "Gy"),
}


def planned_measurements(results: Results, structures: Sequence[str]) -> list[SRMeasurement]:
    """Every numeric measurement :func:`build_sr` writes for ``structures`` (the SR's expected content)."""
    out: list[SRMeasurement] = []
    for n, cyc in sorted(results.cycles.items()):
        for name in structures:
            if name not in cyc.structures:
                continue
            sr = cyc.structures[name]
            group = f"{name} cycle {n}"
            out.append(SRMeasurement(group, name, n, _code_tuple("administered_activity"),
                                     float(cyc.administered_MBq), "MBq"))
            for key, attr, unit, _stage in _FIELDS:
                v = _field(sr, attr)
                if v is None:
                    continue
                sd = _finite(getattr(sr, _SD_FIELD[key], None)) if key in _SD_FIELD else None
                out.append(SRMeasurement(group, name, n, _code_tuple(key), v, unit, sd=sd))
            est = sr.estimated_by_twin
            if est and _finite(est.get("tia_MBq_h")) is not None:
                low, high = _finite(est.get("low")), _finite(est.get("high"))
                out.append(SRMeasurement(f"{name} cycle {n} twin estimate", name, n, _code_tuple("tia"),
                                         float(est["tia_MBq_h"]), "MBq.h", sd=_finite(est.get("sd")), low=low,
                                         high=high, estimate=True))
    twin = TwinResults.from_results(results)
    if twin is None:
        return out
    for cycle, _adm, name, sp in twin.predictions():
        if name not in structures:
            continue
        for qname, iv in sp.intervals().items():
            key, unit = _PRED_KEYS[qname]
            centre, sd, low, high = _finite(iv.mean), _finite(iv.sd), _finite(iv.low), _finite(iv.high)
            if centre is None:
                continue
            if (low is None or high is None) and sd is not None:
                # normal approximation of the 90 % interval: mean +/- 1.645 SD (z of the 95th percentile)
                low, high = centre - 1.645 * sd, centre + 1.645 * sd
            out.append(SRMeasurement(f"{name} cycle {cycle} predicted", name, cycle, _code_tuple(key), centre,
                                     unit, predicted=True, low=low, high=high))
    out += _conflict_measurements(twin, structures)
    out += _plan_measurements(twin, structures)
    return out


_CONFLICT_KEYS = {("population", "uptake"): "conflict_uptake", ("population", "washout"): "conflict_washout",
                  ("population", "uptake_rate"): "conflict_uptake_rate", ("cycle", "uptake"): "cycle_change_uptake",
                  ("cycle", "washout"): "cycle_change_washout", ("cycle", "uptake_rate"): "cycle_change_uptake_rate"}
_PLAN_QUANTITY = {"bed": "cumulative_bed", "eqd2": "cumulative_eqd2", "dose": "cumulative_dose"}


def _conflict_measurements(twin: TwinResults, structures: Sequence[str]) -> list[SRMeasurement]:
    """Prior–data conflicts (``TwinResults.conflicts``) as z-scores in the structure's prediction group."""
    cycle = twin.prediction.cycle
    out: list[SRMeasurement] = []
    seen: set[tuple[str, str]] = set()
    for c in twin.conflicts:
        key = _CONFLICT_KEYS.get((c.level, c.parameter))
        z = _finite(c.z_sd)
        s = c.structure
        if key is None or z is None or s not in structures or (s, key) in seen:
            continue
        seen.add((s, key))  # one value per concept and group (the largest cycle change is listed first)
        out.append(SRMeasurement(f"{s} cycle {cycle} predicted", s, cycle, _code_tuple(key), z, "{SD}",
                                 predicted=True))
    return out


def _plan_measurements(twin: TwinResults, structures: Sequence[str]) -> list[SRMeasurement]:
    """The twin's plan (``TwinResults.plan``): per organ at risk, one group at the end of the plan with the
    predicted cumulative limited quantity (90 % interval), its probability of exceeding the limit, the joint
    probability of all limits and the planned cycles and total activity."""
    plan = twin.plan
    if plan is None:
        return []
    last = max(plan.activities_MBq) if plan.activities_MBq else plan.next_cycle - 1
    out: list[SRMeasurement] = []
    for organ in plan.organs:
        quantity, end, p_over = plan.end_of_plan(organ)
        key = _PLAN_QUANTITY.get(quantity)
        if organ not in structures or key is None or end is None:
            continue
        centre, low, high = _finite(end.mean), _finite(end.low), _finite(end.high)
        if centre is None:
            continue
        group = f"{organ} cycle {last} end of plan predicted"
        out.append(SRMeasurement(group, organ, last, _code_tuple(key), centre, "Gy", predicted=True, low=low, high=high))
        for k, v, unit in (("probability_over_limit", p_over, "1"),
                           ("probability_all_limits", plan.probability_within_limits, "1"),
                           ("planned_cycles", plan.n_cycles_planned, "{cycles}"),
                           ("planned_total_activity", plan.total_planned_MBq, "MBq")):
            value = _finite(v)
            if value is not None:
                out.append(SRMeasurement(group, organ, last, _code_tuple(k), value, unit, predicted=True))
    return out


def _code_tuple(key: str) -> tuple[str, str]:
    c = _concept(key)
    return (str(c.value), str(c.scheme_designator))


# --- building ---------------------------------------------------------------------------------------------------

#: Each stage's algorithm is identified once per group, on its primary quantity (TIA: kinetics, mean dose:
#: dosimetry, BED: radiobiology; the twin's on its TIA and dose); the group's other measurements come from
#: the same stage runs. Inputs (administered activity, volume, mass, LQ parameters) carry none.
_ALGORITHM_KEYS = {"tia", "mean_dose", "bed"}


def _algorithm(stage: str, methods: Sequence[MethodRecord], extra: Sequence[str] = ()) -> hd.sr.AlgorithmIdentification:
    """TID 4019 Algorithm Identification of a pipeline stage: its method(s) and the structure's own choices.

    Only the method names go into the SR (they repeat on every measurement); the full parameter sets are in
    ``results.json`` and the FHIR Provenance.
    """
    # the first clause of each method description (the full text is in results.json)
    params = [m.method.split(";")[0][:160] for m in methods if m.stage == stage] + [e[:160] for e in extra]
    return hd.sr.AlgorithmIdentification(name=f"TheraTwin {stage}"[:64], version=__version__,
                                         parameters=params[:16] or None)


def _tia_method_text(method: str) -> str:
    """``TIA method=<method> (<how>)``: the kinetics stage's method string and, for its own methods, what it did."""
    from ..kinetics.fit import describe_method

    how = describe_method(method)
    return f"TIA method={method}" + (f" ({how})" if how != method else "")


def _companions(key: str, m: SRMeasurement) -> list[tuple[str, float]]:
    """(private code key, value) of the uncertainty measurements that accompany ``m``."""
    if key not in _UNCERTAIN:
        return []
    out = []
    for suffix, value in (("sd", m.sd), ("low", m.low), ("high", m.high)):
        if value is not None:
            out.append((f"{key}:{suffix}", value))
    return out


def _procedure(results: Results) -> hd.sr.CodedConcept:
    """Procedure reported, from CID 100: NM or PET "unspecified body region" (LOINC) by the imaging modality."""
    modalities = {tp.source.modality for c in (results.study.cycles if results.study else [])
                  for tp in c.time_points}
    c = codes.cid100.PETUnspecifiedBodyRegion if modalities == {"PT"} else codes.cid100.NMUnspecifiedBodyRegion
    return hd.sr.CodedConcept(c.value, c.scheme_designator, c.meaning)


@dataclass(frozen=True)
class SegmentRef:
    """Where a structure is in the exported SEG."""

    segment_number: int
    structure: Structure


def sr_parts(results: Results, structures: Sequence[str]) -> list[str]:
    """The SR documents of an export: ``"cycle<n>"`` per cycle with results, then ``"predicted"``.

    One document per cycle (and one for the twin's predictions) keeps each TID 1500 tree small enough for
    validators that hold the whole tree in memory (pixelmed needs ~5 GB for 850 content items).
    """
    parts: list[str] = []
    for m in planned_measurements(results, structures):
        p = _part(m)
        if p not in parts:
            parts.append(p)
    return parts


def _part(m: SRMeasurement) -> str:
    return "predicted" if m.predicted else f"cycle{m.cycle}"


def build_sr(results: Results, seg: Dataset, segments: dict[str, SegmentRef], ctx: ExportContext, *,
             series_number: int, evidence: Sequence[Dataset] = (), part: str | None = None,
             series_instance_uid: str | None = None, instance_number: int = 1) -> hd.sr.Comprehensive3DSR:
    """Make the TID 1500 Comprehensive 3D SR of ``results`` (see the module docstring for its content).

    Parameters
    ----------
    results
        The run's results (per cycle and structure, methods, twin output).
    seg
        The exported SEG; every group references its structure's segment.
    segments
        ``{structure name: SegmentRef}`` for the structures in the SEG.
    ctx
        The export context (reference CT series, timing).
    series_number
        SeriesNumber of the new SR series.
    evidence
        Further objects the SR summarises (RT Dose objects, source images), listed as evidence.
    part
        Only the groups of this document (see :func:`sr_parts`); all groups when None.
    series_instance_uid, instance_number
        To put several SR documents of one export into one series.
    """
    methods = list(results.methods)
    ct_series = str(ctx.reference_ct[0].SeriesInstanceUID) if ctx.reference_ct else None
    plan = planned_measurements(results, list(segments))
    groups: dict[str, list[SRMeasurement]] = {}
    for m in plan:
        if part is None or _part(m) == part:
            groups.setdefault(m.group, []).append(m)
    stage_of = {key: stage for key, _a, _u, stage in _FIELDS}
    stage_of["administered_activity"] = "input"
    key_of = {_code_tuple(k): k for k in stage_of}
    key_of.update({_code_tuple(k): k for k, _u in _PRED_KEYS.values()})
    key_of.update({_code_tuple(k): k for k in (*_CONFLICT_KEYS.values(), "planned_total_activity", "planned_cycles",
                                                "probability_all_limits", "probability_over_limit")})
    imaging = []
    for group_name, items in groups.items():
        first = items[0]
        ref = segments[first.structure]
        kind = ref.structure.kind
        predicted = first.predicted
        cres = results.cycles.get(first.cycle)
        sres = cres.structures.get(first.structure) if cres is not None else None
        estimate = first.estimate
        twin_tia = sres is not None and (sres.tia_method or "").startswith("twin")
        extra = {
            "kinetics": [f"kinetic model={sres.kinetic_model}" if sres and sres.kinetic_model else "",
                         _tia_method_text(sres.tia_method) if sres and sres.tia_method else ""],
            "dosimetry": [f"dose method={sres.dose_method}" if sres and sres.dose_method else ""],
        }
        algos = {stage: _algorithm(stage, methods, [e for e in extra.get(stage, []) if e])
                 for stage in ("kinetics", "dosimetry", "radiobiology", "twin")}
        measurements = []
        for m in items:
            key = key_of[m.code]
            unit = UNITS[m.unit]
            method = None
            if predicted:
                method = _ttwn("predicted")
            elif estimate or (key in ("tia", "tiac") and twin_tia):
                method = _ttwn("twin_estimate")
            stage = "twin" if (predicted or estimate) else stage_of.get(key, "")
            # inputs (administered activity, volume, mass, LQ parameters) carry no algorithm; companions
            # (SD, interval limits) share their quantity's, given once on the quantity itself
            algo = algos.get(stage) if key in _ALGORITHM_KEYS else None
            measurements.append(hd.sr.Measurement(name=_concept(key), value=m.value, unit=unit, method=method,
                                                  algorithm_id=algo))
            for name_key, value in _companions(key, m):
                measurements.append(hd.sr.Measurement(name=_concept(name_key), value=value, unit=unit,
                                                      method=method))
        # Time Point Order (126073, DCM) is left out: pixelmed's TID 1419 (2022) takes it for a measurement
        end_of_plan = group_name.endswith("end of plan predicted")
        tp = hd.sr.TimePointContext(
            time_point=(f"End of plan, after cycle {first.cycle} (predicted)" if end_of_plan else
                        f"Cycle {first.cycle}" + (" (predicted)" if predicted else " (twin estimate)" if estimate
                                                  else "")),
            protocol_time_point_identifier=f"cycle{first.cycle}",
        )
        group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=new_uid(), identifier=group_name[:64]),
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID,
                segment_number=ref.segment_number,
                source_series=hd.sr.SourceSeriesForSegmentation(ct_series) if ct_series else None,
            ),
            time_point_context=tp,
            finding_type=coded(kind.type),
            finding_sites=[hd.sr.FindingSite(coded(kind.anatomic_region))] if kind.anatomic_region else None,
            # the group-level Measurement Method is left out: highdicom writes it as CONTAINS, TID 1419 row 1
            # (and pixelmed) want HAS CONCEPT MOD; every measurement of the group carries the method instead
            measurements=measurements,
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(_ttwn("below_resolution"), _YES)]
            if (not predicted and sres is not None and (sres.partial_volume or {}).get("too_small")) else None,
        )
        imaging.append(group)
    observer = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=new_uid(), name="TheraTwin", manufacturer_name=MANUFACTURER, model_name=MODEL_NAME),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=_procedure(results),
        imaging_measurements=imaging,
    )
    _add_cautions(report[0], results)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[seg, *evidence],
        content=report[0],
        series_instance_uid=series_instance_uid or new_uid(),
        series_number=series_number,
        sop_instance_uid=new_uid(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=SR_SERIES_DESCRIPTION,
    )
    sr.ContentDate = DA(ctx.created.strftime("%Y%m%d"))
    sr.ContentTime = TM(ctx.created.strftime("%H%M%S"))
    ctx.stamp_timezone(sr)
    sr.ManufacturerModelName = MODEL_NAME
    sr.SoftwareVersions = __version__
    _declare_private_scheme(sr)
    return sr


#: TID 1500 row "Qualitative Evaluations" (C0034375, UMLS) and the concept of each free-text caution in it.
_QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
_COMMENT = hd.sr.CodedConcept("121106", "DCM", "Comment")


def caution_texts(results: Results) -> list[str]:
    """The warnings a reader of the SR must see: failed plausibility checks accepted knowingly, and errors."""
    return [f"CHECK BEFORE USE ({w.stage}): {w.message}"[:1024] for w in results.warnings
            if w.stage == "plausibility" or w.severity == "error"]


def _add_cautions(root: Any, results: Results) -> None:
    """Put :func:`caution_texts` in the report's Qualitative Evaluations container (TID 1500), as TEXT items."""
    texts = caution_texts(results)
    if not texts:
        return
    container = hd.sr.ContainerContentItem(name=_QUALITATIVE_EVALUATIONS,
                                           relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    container.ContentSequence = hd.sr.ContentSequence(
        [hd.sr.TextContentItem(name=_COMMENT, value=t, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
         for t in texts])
    root.ContentSequence.append(container)


def read_sr_cautions(ds: Dataset) -> list[str]:
    """The free-text cautions of a TheraTwin SR (see :func:`caution_texts`)."""
    out: list[str] = []
    for item in getattr(ds, "ContentSequence", []):
        name = item.ConceptNameCodeSequence[0] if "ConceptNameCodeSequence" in item else None
        if name is not None and name.CodeValue == _QUALITATIVE_EVALUATIONS.value:
            out.extend(str(t.TextValue) for t in getattr(item, "ContentSequence", []) if "TextValue" in t)
    return out


def _declare_private_scheme(ds: Dataset) -> None:
    """Add the 99TTWN scheme to the Coding Scheme Identification Sequence (SOP Common module)."""
    item = Dataset()
    item.CodingSchemeDesignator = TTWN
    item.CodingSchemeName = "TheraTwin private codes"
    item.CodingSchemeVersion = "1"
    item.CodingSchemeResponsibleOrganization = "TheraTwin project"
    seq = list(ds.get("CodingSchemeIdentificationSequence", []))
    seq.append(item)
    ds.CodingSchemeIdentificationSequence = seq


# --- reading back -------------------------------------------------------------------------------------------------

def read_sr_measurements(ds: Dataset) -> list[SRMeasurement]:
    """Every numeric measurement of a TheraTwin TID 1500 SR, read with highdicom.

    The structure and cycle come from the group's tracking identifier (``"<structure> cycle <n>"``); a group
    is a prediction when its measurement method is (TTW0101, 99TTWN). Measurement uncertainty is read back as
    the 90 % interval for predictions and as +/- one standard deviation otherwise.
    """
    sr = hd.sr.Comprehensive3DSR.from_dataset(ds)
    out: list[SRMeasurement] = []
    pred = _ttwn("predicted")
    report = cast(hd.sr.MeasurementReport, sr.content)
    for g in report.get_volumetric_roi_measurement_groups():
        label = str(g.tracking_identifier)
        predicted = any(m.method is not None and m.method.value == pred.value and m.method.scheme_designator == TTWN
                        for m in g.get_measurements())
        structure, _, rest = label.partition(" cycle ")
        cycle = int(rest.split()[0]) if rest else 0
        companions = {TTWN_CODES[k][0]: k for k in TTWN_CODES if ":" in k}
        mains: dict[str, dict[str, Any]] = {}
        extra: dict[str, dict[str, float]] = {}
        for m in g.get_measurements():
            code = (str(m.name.value), str(m.name.scheme_designator))
            if code[1] == TTWN and code[0] in companions:
                qkey, suffix = companions[code[0]].split(":")
                extra.setdefault(qkey, {})[suffix] = float(m.value)
                continue
            mains[code[0] + "|" + code[1]] = {"code": code, "value": float(m.value), "unit": str(m.unit.value)}
        key_of = {_code_tuple(k): k for k in _UNCERTAIN}
        for d in mains.values():
            e = extra.get(key_of.get(d["code"], ""), {})
            out.append(SRMeasurement(label, structure, cycle, d["code"], d["value"], d["unit"], predicted,
                                     e.get("sd"), e.get("low"), e.get("high"), label.endswith("twin estimate")))
    return out
