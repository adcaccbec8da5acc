"""What the ``twin`` stage stores in :attr:`Results.twin <theratwin.results.Results.twin>`: :class:`TwinResults`.

One typed record, and the one way every export reads it: the SR writer, the FHIR bundle, the report, the Slicer
module and the web app all call :meth:`TwinResults.from_results` (or :meth:`TwinResults.from_dict` on a saved
``results.json``) and read its attributes, never keys of a dictionary. ``results.json`` holds
:meth:`TwinResults.to_dict` (same keys and numbers as before the record was typed), and
``TwinResults.from_dict(results_json["twin"])`` gives the record back (round trip tested).

Layout of ``results.json["twin"]`` (keys in this order; a value that is None is left out):

* ``notice`` — research-use notice;
* ``model`` — :meth:`PatientTwin.summary <theratwin.twin.twin.PatientTwin.summary>` (model, priors, per-structure
  posterior summary; free-form, shown as it is);
* ``config`` — the twin stage's options (:class:`~theratwin.twin.stage.TwinStageConfig` as a dict);
* ``conflicts`` — :class:`~theratwin.twin.PriorConflict` list;
* ``estimates`` — ``{"<cycle>": {structure: TwinEstimate}}`` for sparsely imaged cycles;
* ``prediction`` — :class:`~theratwin.twin.Prediction` of the next cycle (90 % intervals);
* ``pbpk`` — the PBPK patient fit (``model="pbpk_psma"`` only; free-form);
* ``trajectory`` — :class:`TwinTrajectory`, cumulative dose/BED/EQD2 after each future cycle;
* ``plan`` — :class:`~theratwin.twin.TreatmentPlan` of the remaining cycles;
* ``recommendation`` — :class:`~theratwin.twin.Recommendation` for the next cycle alone (None: none possible);
* ``forecast`` — :meth:`PatientTwin.forecast <theratwin.twin.twin.PatientTwin.forecast>` (toxicity per organ,
  response of the lesions; read through :meth:`TwinResults.forecasts`);
* ``state_file`` — the twin's saved state (``twin-state.json``) when an output folder was written.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidInputError
from ..results import RESEARCH_USE_NOTICE
from ._conflicts import PriorConflict
from .results import Interval, Prediction, Recommendation, StructurePrediction, TIAEstimate, TreatmentPlan

__all__ = ["TwinEstimate", "TwinTrajectory", "Forecast", "TwinResults"]


@dataclass(frozen=True)
class TwinEstimate:
    """The twin's TIA of a sparsely imaged structure and cycle, beside the kinetics stage's own estimate.

    ``kinetics_tia_MBq_h``/``kinetics_sd_MBq_h`` are the kinetics stage's TIA and SD of the same structure and
    cycle (single-time-point methods), ``difference_z`` the twin's minus the kinetics' TIA in their joint SD;
    all three are None when the kinetics stage gave no TIA with an SD.
    """

    tia: TIAEstimate
    kinetics_tia_MBq_h: float | None = None
    kinetics_sd_MBq_h: float | None = None
    difference_z: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The TIA estimate's JSON form (MBq·h), with the kinetics stage's TIA, SD and the z-difference
        when there are."""
        d = self.tia.to_dict()
        if self.kinetics_tia_MBq_h is not None:
            d.update(kinetics_tia_MBq_h=self.kinetics_tia_MBq_h, kinetics_sd_MBq_h=self.kinetics_sd_MBq_h,
                     difference_z=self.difference_z)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TwinEstimate:
        """The estimate from its :meth:`to_dict` form (a missing number is NaN)."""
        names = [f for f in TIAEstimate.__dataclass_fields__]
        tia = TIAEstimate(**{k: d.get(k, math.nan) for k in names})
        opt = {k: (None if d.get(k) is None else float(d[k]))
               for k in ("kinetics_tia_MBq_h", "kinetics_sd_MBq_h", "difference_z")}
        return cls(tia, **opt)


@dataclass
class TwinTrajectory:
    """Cumulative dose, BED and EQD2 per structure after each cycle up to the protocol's last, every future cycle
    at ``administered_MBq_per_future_cycle`` (``{cycle: {structure: {quantity: Interval}}}``)."""

    administered_MBq_per_future_cycle: float
    cumulative_by_cycle: dict[int, dict[str, dict[str, Interval]]]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (cycle numbers as strings, each quantity's :class:`Interval` as a dict)."""
        return {"administered_MBq_per_future_cycle": self.administered_MBq_per_future_cycle,
                "cumulative_by_cycle": {str(c): {s: {q: iv.to_dict() for q, iv in per.items()}
                                                 for s, per in by_s.items()}
                                        for c, by_s in self.cumulative_by_cycle.items()}}

    @classmethod
    def from_prediction(cls, prediction: Prediction) -> TwinTrajectory:
        """The trajectory of a prediction made with ``cumulative_by_cycle`` (empty without it)."""
        return cls(prediction.administered_MBq, dict(prediction.cumulative_by_cycle or {}))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TwinTrajectory:
        """The trajectory from its :meth:`to_dict` form."""
        return cls(float(d["administered_MBq_per_future_cycle"]),
                   {int(c): {str(s): {str(q): Interval.from_dict(iv) for q, iv in per.items()}
                             for s, per in by_s.items()}
                    for c, by_s in (d.get("cumulative_by_cycle") or {}).items()})


@dataclass(frozen=True)
class Forecast:
    """One outcome forecast: ``name`` (an organ for toxicity, ``"lesions"`` for response), the probability
    (:class:`Interval`, 90 %), the dose–effect ``model`` (its parameters and reference) and the dose
    ``quantity`` and ``endpoint`` it refers to when given."""

    name: str
    probability: Interval
    model: Mapping[str, Any]
    quantity: str | None = None
    endpoint: str | None = None


@dataclass
class TwinResults:
    """Everything the ``twin`` stage computed for one run (see the module docstring for each field).

    Attributes
    ----------
    prediction
        Prediction of the next cycle, per structure (:class:`StructurePrediction` of :class:`Interval`).
    plan
        Plan of the remaining cycles (None when the stage wrote none).
    recommendation
        Largest activity for the next cycle alone within every organ limit (None: no recommendation possible).
    conflicts
        Prior–data conflicts the fit found (also run warnings).
    estimates
        ``{cycle: {structure: TwinEstimate}}`` for sparsely imaged cycles.
    trajectory
        Cumulative quantities after each future cycle up to the protocol's last (None: none beyond the next).
    forecast
        Toxicity and response forecasts as :meth:`PatientTwin.forecast` returns them; read with
        :meth:`forecasts`.
    model, config, pbpk
        The twin's summary, the stage's options and (PBPK model only) the patient fit, free-form.
    state_file
        File name of the saved twin state in the output folder, or None.
    """

    prediction: Prediction
    model: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    conflicts: list[PriorConflict] = field(default_factory=list)
    estimates: dict[int, dict[str, TwinEstimate]] = field(default_factory=dict)
    pbpk: dict[str, Any] | None = None
    trajectory: TwinTrajectory | None = None
    plan: TreatmentPlan | None = None
    recommendation: Recommendation | None = None
    forecast: dict[str, Any] | None = None
    state_file: str | None = None
    notice: str = RESEARCH_USE_NOTICE

    # --- the one reader ------------------------------------------------------------------------------------------

    @classmethod
    def from_results(cls, results: Any) -> TwinResults | None:
        """The twin results of ``results`` (a :class:`~theratwin.results.Results`), or None without a twin.

        ``results.twin`` may also hold the JSON form (a dict, e.g. set by code written before the record was
        typed); it is read with :meth:`from_dict`.
        """
        twin = getattr(results, "twin", None)
        if twin is None or isinstance(twin, cls):
            return twin
        if isinstance(twin, Mapping):
            return cls.from_dict(twin) if twin else None
        raise InvalidInputError(f"Results.twin holds a {type(twin).__name__}; expected TwinResults or its dict form.")

    def predictions(self) -> Iterator[tuple[int, float, str, StructurePrediction]]:
        """(cycle, administered MBq assumed, structure, prediction) of every predicted structure."""
        p = self.prediction
        for name, sp in p.structures.items():
            yield p.cycle, p.administered_MBq, name, sp

    def conflicts_of(self, structure: str) -> list[PriorConflict]:
        """The prior–data conflicts of ``structure``, in the order the fit listed them."""
        return [c for c in self.conflicts if c.structure == structure]

    def forecasts(self, kind: str) -> list[Forecast]:
        """The ``"toxicity"`` forecasts (one per organ) or the ``"response"`` forecast (``"lesions"``)."""
        block = (self.forecast or {}).get(kind)
        if not isinstance(block, Mapping):
            return []
        items = [("lesions", block)] if "probability" in block else list(block.items())
        out = []
        for name, fc in items:
            if not isinstance(fc, Mapping) or not isinstance(fc.get("probability"), Mapping):
                continue
            out.append(Forecast(str(name), Interval.from_dict(fc["probability"]), fc.get("model") or {},
                                fc.get("quantity"), fc.get("endpoint")))
        return out

    # --- serialisation -------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``results.json["twin"]``; None values are dropped by ``to_jsonable`` on writing)."""
        out: dict[str, Any] = {
            "notice": self.notice,
            "model": self.model,
            "config": self.config,
            "conflicts": [c.to_dict() for c in self.conflicts],
            "estimates": {str(n): {s: e.to_dict() for s, e in per.items()} for n, per in self.estimates.items()},
            "prediction": self.prediction.to_dict(),
        }
        if self.pbpk is not None:
            out["pbpk"] = self.pbpk
        if self.trajectory is not None:
            out["trajectory"] = self.trajectory.to_dict()
        if self.plan is not None:
            out["plan"] = self.plan.to_dict()
        out["recommendation"] = None if self.recommendation is None else self.recommendation.to_dict()
        out["forecast"] = self.forecast
        if self.state_file is not None:
            out["state_file"] = self.state_file
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TwinResults:
        """The record from its JSON form (``results.json["twin"]``)."""
        if not isinstance(d.get("prediction"), Mapping):
            raise InvalidInputError("The twin results hold no 'prediction'; expected results.json's 'twin' block "
                                    "as the twin stage writes it (schema theratwin-results/1).")
        rec, plan, traj = d.get("recommendation"), d.get("plan"), d.get("trajectory")
        return cls(
            prediction=Prediction.from_dict(d["prediction"]),
            model=dict(d.get("model") or {}), config=dict(d.get("config") or {}),
            conflicts=[PriorConflict.from_dict(dict(c)) for c in d.get("conflicts") or []],
            estimates={int(n): {str(s): TwinEstimate.from_dict(e) for s, e in per.items()}
                       for n, per in (d.get("estimates") or {}).items()},
            pbpk=None if d.get("pbpk") is None else dict(d["pbpk"]),
            trajectory=None if traj is None else TwinTrajectory.from_dict(traj),
            plan=None if plan is None else TreatmentPlan.from_dict(plan),
            recommendation=None if rec is None else Recommendation.from_dict(rec),
            forecast=None if d.get("forecast") is None else dict(d["forecast"]),
            state_file=d.get("state_file"), notice=str(d.get("notice", RESEARCH_USE_NOTICE)))

    # --- compatibility: ``results.twin["plan"]`` of code written for the untyped dict ---------------------------

    def __getitem__(self, key: str) -> Any:
        """The JSON form of one part (``results.twin["prediction"]`` keeps working for older callers)."""
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        """As ``dict.get`` on the JSON form (compatibility with the untyped dict)."""
        return self.to_dict().get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self.to_dict()
