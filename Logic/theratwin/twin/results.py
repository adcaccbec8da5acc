"""Records of the patient twin: its measurement error model and observations, and what it returns.

:class:`~theratwin.twin.twin.PatientTwin` takes :class:`MeasurementErrorModel` and stores one
:class:`Observation` per structure and cycle; it returns :class:`TIAEstimate`, :class:`Prediction` (of
:class:`StructurePrediction`, each of :class:`Interval`) and :class:`Recommendation`. Every record has a
``to_dict`` giving plain JSON data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import ConfigurationError
from ..results import RESEARCH_USE_NOTICE
from ..study.codes import structure_kind
from .tissues import OrganLimit

__all__ = [
    "MeasurementErrorModel",
    "Observation",
    "Interval",
    "TIAEstimate",
    "StructurePrediction",
    "Prediction",
    "Recommendation",
    "TreatmentPlan",
    "PREDICTED_QUANTITIES",
]


@dataclass(frozen=True)
class MeasurementErrorModel:
    """Error of measured structure activities: random per scan, correlated within a cycle, additive.

    ``ln y_j = ln A(t_j) + δ_k + ε_j`` for scan j of cycle k, with

    * ``ε_j`` independent between scans (counting statistics, reconstruction, patient set-up, model misfit):
      SD ``√(σ_p² + (σ_a² + sd_j²)/y_j²)`` — proportional σ_p (``proportional_sd`` for organs,
      ``lesion_proportional_sd`` for lesions), additive σ_a, and the per-scan SD ``sd_j`` supplied with the
      data (the kinetics stage's random part);
    * ``δ_k`` one factor shared by every scan of one structure in one cycle (camera calibration,
      segmentation, partial-volume recovery): SD σ_c (``correlated_sd`` / ``lesion_correlated_sd``, or the
      per-observation ``correlated_rel_sd`` supplied with the data). It moves all scans of the cycle together,
      so it cannot be averaged away by more scans and it is *not* a change of the patient's kinetics: the
      twin estimates it (as a nuisance parameter) separately from the inter-occasion variability.

    Defaults (assumptions, configurable): σ_p = 5 % for organs (SPECT/CT activity quantification
    repeatability), 8 % for lesions; σ_c = 5 % for organs (calibration a few per cent, Gear et al. 2018 EJNMMI
    45:2456; Staanum 2021 EJNMMI Phys 8:78 estimate 13 % total per fraction including it), 10 % for lesions
    (segmentation and recovery); σ_a = 0.05 MBq.
    """

    proportional_sd: float = 0.05
    lesion_proportional_sd: float = 0.08
    additive_sd_MBq: float = 0.05
    correlated_sd: float = 0.05
    lesion_correlated_sd: float = 0.10

    def __post_init__(self) -> None:
        for k, v in asdict(self).items():
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ConfigurationError(f"MeasurementErrorModel.{k} must be a number >= 0, got {v!r}.")
        for k in ("proportional_sd", "lesion_proportional_sd", "correlated_sd", "lesion_correlated_sd"):
            if getattr(self, k) >= 1.0:
                raise ConfigurationError(f"MeasurementErrorModel.{k} is a relative SD and must be < 1, "
                                         f"got {getattr(self, k)}.")

    def for_structure(self, structure: str) -> float:
        """Random (per-scan) proportional SD of ``structure``."""
        return self.lesion_proportional_sd if _is_lesion(structure) else self.proportional_sd

    def correlated_for_structure(self, structure: str) -> float:
        """Correlated (per-cycle) relative SD of ``structure``."""
        return self.lesion_correlated_sd if _is_lesion(structure) else self.correlated_sd


def _is_lesion(structure: str) -> bool:
    return structure_kind(structure).role.value == "lesion"


@dataclass
class Observation:
    """Data of one structure in one cycle (times in h after the start of that cycle's administration)."""

    cycle: int
    structure: str
    time_h: list[float]
    activity_MBq: list[float]
    administered_MBq: float
    activity_sd_MBq: list[float] | None = None
    ligand_nmol: float | None = None
    mass_g: float | None = None
    dose_per_tia_Gy_per_MBq_h: float | None = None
    correlated_rel_sd: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of the observation (times in h, activities in MBq); fields that are None are left
        out."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Interval:
    """Summary of a predictive distribution: mean, SD, median and the central interval (default 90 %)."""

    mean: float
    sd: float
    median: float
    low: float
    high: float
    level: float = 0.9

    @classmethod
    def from_draws(cls, draws: np.ndarray, level: float = 0.9) -> Interval:
        """Summarise Monte Carlo draws: mean, SD (``ddof=1``), median and the central ``level`` interval.

        Parameters
        ----------
        draws
            Samples of the quantity (any unit; the interval keeps it).
        level
            Probability content of the central interval, e.g. 0.9 for the 5th-95th percentiles.
        """
        q = np.quantile(draws, [0.5, (1 - level) / 2, (1 + level) / 2])
        return cls(float(np.mean(draws)), float(np.std(draws, ddof=1)), float(q[0]), float(q[1]), float(q[2]), level)

    def to_dict(self) -> dict[str, float]:
        """``{mean, sd, median, low, high, level}`` (the quantity's unit; :meth:`from_dict` reads it back)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Interval:
        """The interval from its :meth:`to_dict` form (a value that was not finite, dropped from JSON, is NaN)."""
        return cls(mean=_number(d, "mean"), sd=_number(d, "sd"), median=_number(d, "median"), low=_number(d, "low"),
                   high=_number(d, "high"), level=float(d.get("level", 0.9)))


def _number(d: Mapping[str, Any], key: str) -> float:
    """``d[key]`` as a float; NaN when missing (``to_jsonable`` drops non-finite numbers from results.json)."""
    v = d.get(key)
    return math.nan if v is None else float(v)


def _intervals(d: Mapping[str, Any] | None) -> dict[str, Interval]:
    return {str(k): Interval.from_dict(v) for k, v in (d or {}).items()}


@dataclass(frozen=True)
class TIAEstimate:
    """Time-integrated activity of one structure in one cycle, MBq·h (90 % interval by default)."""

    structure: str
    cycle: int
    mean_MBq_h: float
    sd_MBq_h: float
    median_MBq_h: float
    low_MBq_h: float
    high_MBq_h: float
    level: float
    n_points: int
    method: str

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: the estimate's mean, SD, median and interval in MBq·h with its level, points and
        method."""
        return asdict(self)


#: The quantities of a :class:`StructurePrediction`, each an :class:`Interval`, in the order every export lists
#: them: TIA (MBq·h), absorbed dose, BED of the predicted cycle, and cumulative dose, BED and EQD2 after it (Gy).
PREDICTED_QUANTITIES = ("tia_MBq_h", "dose_Gy", "bed_Gy", "cumulative_dose_Gy", "cumulative_bed_Gy",
                        "cumulative_eqd2_Gy")


@dataclass
class StructurePrediction:
    """Predictive distributions of one structure for one cycle (intervals at ``Prediction.level``)."""

    structure: str
    tia_MBq_h: Interval
    dose_Gy: Interval
    bed_Gy: Interval
    cumulative_dose_Gy: Interval
    cumulative_bed_Gy: Interval
    cumulative_eqd2_Gy: Interval
    dose_per_tia_Gy_per_MBq_h: float
    alpha_beta_Gy: float
    repair_half_time_h: float

    def intervals(self) -> dict[str, Interval]:
        """The predicted quantities, ``{name: Interval}`` in :data:`PREDICTED_QUANTITIES` order."""
        return {k: getattr(self, k) for k in PREDICTED_QUANTITIES}

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: each predicted quantity's :class:`Interval` (MBq·h, Gy) and the dose per TIA
        (Gy per MBq·h), α/β (Gy) and repair half-time (h) used."""
        d: dict[str, Any] = {"structure": self.structure}
        for k, iv in self.intervals().items():
            d[k] = iv.to_dict()
        d.update(dose_per_tia_Gy_per_MBq_h=self.dose_per_tia_Gy_per_MBq_h, alpha_beta_Gy=self.alpha_beta_Gy,
                 repair_half_time_h=self.repair_half_time_h)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], structure: str | None = None) -> StructurePrediction:
        """The prediction from its :meth:`to_dict` form (``structure``: its name when ``d`` does not say it).

        Reading is tolerant: a quantity that is missing (e.g. not finite when written, so dropped from JSON) is an
        all-NaN :class:`Interval`, which every export skips as "not computed".
        """
        iv = {k: Interval.from_dict(d[k]) if isinstance(d.get(k), Mapping) else _NAN_INTERVAL
              for k in PREDICTED_QUANTITIES}
        return cls(structure=str(d.get("structure", structure)), tia_MBq_h=iv["tia_MBq_h"], dose_Gy=iv["dose_Gy"],
                   bed_Gy=iv["bed_Gy"], cumulative_dose_Gy=iv["cumulative_dose_Gy"],
                   cumulative_bed_Gy=iv["cumulative_bed_Gy"], cumulative_eqd2_Gy=iv["cumulative_eqd2_Gy"],
                   dose_per_tia_Gy_per_MBq_h=_number(d, "dose_per_tia_Gy_per_MBq_h"),
                   alpha_beta_Gy=_number(d, "alpha_beta_Gy"), repair_half_time_h=_number(d, "repair_half_time_h"))


_NAN_INTERVAL = Interval(math.nan, math.nan, math.nan, math.nan, math.nan)


@dataclass
class Prediction:
    """Output of :meth:`PatientTwin.predict`: per-structure predictions for ``cycle``.

    ``draws`` (kept only when asked) holds the raw posterior-predictive draws, ``{quantity: (S, N) array}``
    with rows in ``structures`` order.
    """

    cycle: int
    administered_MBq: float
    ligand_nmol: float | None
    n_draws: int
    level: float
    structures: dict[str, StructurePrediction]
    schedule_MBq: dict[int, float]
    draws: dict[str, np.ndarray] | None = None
    cumulative_by_cycle: dict[int, dict[str, dict[str, Interval]]] | None = None
    notice: str = RESEARCH_USE_NOTICE

    def __getitem__(self, structure: str) -> StructurePrediction:
        return self.structures[structure]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (the raw ``draws`` are left out); :meth:`from_dict` reads it back."""
        return {
            "cycle": self.cycle, "administered_MBq": self.administered_MBq, "ligand_nmol": self.ligand_nmol,
            "n_draws": self.n_draws, "interval_level": self.level,
            "schedule_MBq": {str(k): v for k, v in self.schedule_MBq.items()},
            "structures": {k: v.to_dict() for k, v in self.structures.items()},
            "cumulative_by_cycle": None if self.cumulative_by_cycle is None else {
                str(c): {s: {q: iv.to_dict() for q, iv in d.items()} for s, d in per.items()}
                for c, per in self.cumulative_by_cycle.items()},
            "notice": self.notice,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Prediction:
        """The prediction from its :meth:`to_dict` form (``draws`` are never serialised: None)."""
        cum = d.get("cumulative_by_cycle")
        return cls(
            cycle=int(d["cycle"]), administered_MBq=float(d["administered_MBq"]),
            ligand_nmol=None if d.get("ligand_nmol") is None else float(d["ligand_nmol"]),
            n_draws=int(d.get("n_draws", 0)), level=float(d.get("interval_level", 0.9)),
            structures={str(k): StructurePrediction.from_dict(v, str(k)) for k, v in d["structures"].items()},
            schedule_MBq={int(k): float(v) for k, v in (d.get("schedule_MBq") or {}).items()},
            cumulative_by_cycle=None if cum is None else {
                int(c): {str(s): _intervals(q) for s, q in per.items()} for c, per in cum.items()},
            notice=str(d.get("notice", RESEARCH_USE_NOTICE)))


@dataclass
class Recommendation:
    """Output of :meth:`PatientTwin.recommend_activity` (research use).

    ``probability_within_limits`` is the joint probability that every organ at risk stays under its limit at
    the recommended activity; ``within_protocol`` whether that activity lies inside the protocol's bounds.
    """

    cycle: int
    administered_MBq: float
    confidence: float
    limiting_structure: str | None
    limits: dict[str, OrganLimit]
    predicted_at_limit_quantile_Gy: dict[str, float]
    predicted_cumulative: dict[str, Interval]
    lesion_dose_Gy: dict[str, Interval]
    responder_probability: Interval | None
    equal_activity_per_cycle_MBq: dict[int, float]
    remaining_cycles_at_standard_activity: int
    standard_activity_MBq: float
    status: str
    notice: str = RESEARCH_USE_NOTICE
    probability_within_limits: float | None = None
    within_protocol: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, with the research-use notice; :meth:`from_dict` reads it back."""
        return {
            "cycle": self.cycle, "administered_MBq": self.administered_MBq, "confidence": self.confidence,
            "probability_within_limits": self.probability_within_limits, "within_protocol": self.within_protocol,
            "limiting_structure": self.limiting_structure,
            "limits": {k: v.to_dict() for k, v in self.limits.items()},
            "predicted_at_limit_quantile_Gy": self.predicted_at_limit_quantile_Gy,
            "predicted_cumulative": {k: v.to_dict() for k, v in self.predicted_cumulative.items()},
            "lesion_dose_Gy": {k: v.to_dict() for k, v in self.lesion_dose_Gy.items()},
            "responder_probability": None if self.responder_probability is None else self.responder_probability.to_dict(),
            "equal_activity_per_cycle_MBq": {str(k): v for k, v in self.equal_activity_per_cycle_MBq.items()},
            "remaining_cycles_at_standard_activity": self.remaining_cycles_at_standard_activity,
            "standard_activity_MBq": self.standard_activity_MBq, "status": self.status, "notice": self.notice,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Recommendation:
        """The recommendation from its :meth:`to_dict` form."""
        rp = d.get("responder_probability")
        return cls(
            cycle=int(d["cycle"]), administered_MBq=float(d["administered_MBq"]), confidence=float(d["confidence"]),
            limiting_structure=d.get("limiting_structure"),
            limits={str(k): OrganLimit(**v) for k, v in (d.get("limits") or {}).items()},
            predicted_at_limit_quantile_Gy={str(k): float(v) for k, v in
                                            (d.get("predicted_at_limit_quantile_Gy") or {}).items()},
            predicted_cumulative=_intervals(d.get("predicted_cumulative")),
            lesion_dose_Gy=_intervals(d.get("lesion_dose_Gy")),
            responder_probability=None if rp is None else Interval.from_dict(rp),
            equal_activity_per_cycle_MBq={int(k): float(v) for k, v in
                                          (d.get("equal_activity_per_cycle_MBq") or {}).items()},
            remaining_cycles_at_standard_activity=int(d["remaining_cycles_at_standard_activity"]),
            standard_activity_MBq=float(d["standard_activity_MBq"]), status=str(d["status"]),
            notice=str(d.get("notice", RESEARCH_USE_NOTICE)),
            probability_within_limits=d.get("probability_within_limits"), within_protocol=d.get("within_protocol"))


@dataclass
class TreatmentPlan:
    """Output of :meth:`PatientTwin.plan_treatment`: activities for the remaining cycles (research use).

    Attributes
    ----------
    next_cycle
        First cycle of the plan.
    cycles_given
        ``{cycle: administered MBq}`` before it.
    protocol
        The regimen the plan stays in.
    confidence
        Required joint probability that every organ at risk stays under its limit at the end of the plan.
    shape
        ``"equal"`` or ``"adapted"`` activities.
    activities_MBq
        ``{cycle: MBq}`` of the planned cycles (empty: no further cycle).
    total_planned_MBq
        Sum of the planned activities.
    probability_within_limits
        Joint probability at the plan (≥ ``confidence`` unless no cycle is planned).
    status
        ``"protocol"`` (the protocol bounds the plan), ``"organ_limit"``, ``"limit_reached"`` (not even one
        cycle at the protocol's minimum activity) or ``"protocol_complete"``.
    binding_constraint
        The organ that bounds the plan, or ``"the protocol"``.
    closest_to_limit
        The organ closest to its limit at the end of the plan (quantile at ``confidence`` / limit).
    limits
        The limits used.
    organs
        Per limited organ: quantity, limit, value after the cycles given and at the end of the plan (90 %
        intervals), its quantile at ``confidence``, fraction of the limit, probability over the limit.
    tumour_dose_Gy, lesion_dose_Gy
        Cumulative whole-tumour (mass-weighted) and per-lesion absorbed dose at the end of the plan.
    sensitivity
        What would change the plan (``text``; for a binding organ the limit increase that allows the next step).
    alternatives
        The same plan at other confidences, with the other shape, and the standard regimen: activities, joint
        probability and tumour dose of each.
    """

    next_cycle: int
    cycles_given: dict[int, float]
    protocol: Any
    confidence: float
    shape: str
    activities_MBq: dict[int, float]
    total_planned_MBq: float
    probability_within_limits: float
    status: str
    binding_constraint: str
    closest_to_limit: str | None
    limits: dict[str, OrganLimit]
    organs: dict[str, dict[str, Any]]
    tumour_dose_Gy: Interval | None
    lesion_dose_Gy: dict[str, Interval]
    sensitivity: dict[str, Any]
    alternatives: dict[str, Any]
    n_draws: int
    notes: list[str]
    notice: str = RESEARCH_USE_NOTICE

    @property
    def n_cycles_planned(self) -> int:
        """Number of further cycles in the plan (0: no further cycle)."""
        return len(self.activities_MBq)

    def headline(self) -> str:
        """One line: the plan, its confidence and what binds."""
        if not self.activities_MBq:
            what = ("no further cycle: the protocol's cycles are all given" if self.status == "protocol_complete"
                    else f"no further cycle within the limits (binding: {self.binding_constraint})")
            return what[0].upper() + what[1:]
        acts = list(self.activities_MBq.values())
        cycles = sorted(self.activities_MBq)
        span = f"cycle {cycles[0]}" if len(cycles) == 1 else f"cycles {cycles[0]}-{cycles[-1]}"
        each = (f"{acts[0]:.0f} MBq each" if max(acts) - min(acts) < 1.0
                else " / ".join(f"{a:.0f}" for a in acts) + " MBq")
        return (f"{len(cycles)} more cycle(s), {span}: {each}; all organ limits held with probability "
                f"{self.probability_within_limits:.2f} (required {self.confidence:.2f}); binding: "
                f"{self.binding_constraint}")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, with ``headline`` and ``n_cycles_planned`` added for readers of the file;
        :meth:`from_dict` reads it back."""
        return {
            "next_cycle": self.next_cycle,
            "cycles_given": {str(k): v for k, v in self.cycles_given.items()},
            "protocol": self.protocol.to_dict(), "confidence": self.confidence, "shape": self.shape,
            "activities_MBq": {str(k): v for k, v in self.activities_MBq.items()},
            "n_cycles_planned": self.n_cycles_planned, "total_planned_MBq": self.total_planned_MBq,
            "probability_within_limits": self.probability_within_limits, "status": self.status,
            "binding_constraint": self.binding_constraint, "closest_to_limit": self.closest_to_limit,
            "headline": self.headline(),
            "limits": {k: v.to_dict() for k, v in self.limits.items()}, "organs": self.organs,
            "tumour_dose_Gy": None if self.tumour_dose_Gy is None else self.tumour_dose_Gy.to_dict(),
            "lesion_dose_Gy": {k: v.to_dict() for k, v in self.lesion_dose_Gy.items()},
            "sensitivity": self.sensitivity, "alternatives": self.alternatives, "n_draws": self.n_draws,
            "notes": list(self.notes), "notice": self.notice,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TreatmentPlan:
        """The plan from its :meth:`to_dict` form (``headline`` and ``n_cycles_planned`` are derived again)."""
        from .protocol import TreatmentProtocol

        tumour = d.get("tumour_dose_Gy")
        return cls(
            next_cycle=int(d["next_cycle"]),
            cycles_given={int(k): float(v) for k, v in (d.get("cycles_given") or {}).items()},
            protocol=TreatmentProtocol.from_dict(d["protocol"]), confidence=float(d["confidence"]),
            shape=str(d["shape"]), activities_MBq={int(k): float(v) for k, v in (d.get("activities_MBq") or {}).items()},
            total_planned_MBq=float(d["total_planned_MBq"]),
            probability_within_limits=float(d["probability_within_limits"]), status=str(d["status"]),
            binding_constraint=str(d["binding_constraint"]), closest_to_limit=d.get("closest_to_limit"),
            limits={str(k): OrganLimit(**v) for k, v in (d.get("limits") or {}).items()},
            organs={str(k): dict(v) for k, v in (d.get("organs") or {}).items()},
            tumour_dose_Gy=None if tumour is None else Interval.from_dict(tumour),
            lesion_dose_Gy=_intervals(d.get("lesion_dose_Gy")), sensitivity=dict(d.get("sensitivity") or {}),
            alternatives=dict(d.get("alternatives") or {}), n_draws=int(d["n_draws"]),
            notes=[str(n) for n in d.get("notes") or []], notice=str(d.get("notice", RESEARCH_USE_NOTICE)))

    def end_of_plan(self, organ: str) -> tuple[str, Interval | None, float | None]:
        """(limited quantity, cumulative value at the end of the plan, probability over the limit) of ``organ``.

        The quantity is ``"bed"``, ``"eqd2"`` or ``"dose"``; the interval and probability are None when the plan
        does not give them.
        """
        o = self.organs.get(organ) or {}
        end = o.get("end_of_plan_Gy")
        p = o.get("probability_over_limit")
        return (str(o.get("quantity", "")), Interval.from_dict(end) if isinstance(end, Mapping) else None,
                None if p is None else float(p))
