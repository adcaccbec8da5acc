"""The patient twin: a Bayesian kinetic model of one patient, updated every cycle (research use).

>>> import theratwin as tt
>>> twin = tt.twin.PatientTwin(nuclide="Lu-177", radiopharmaceutical="PSMA-617")
>>> twin.observe(cycle=1, structure="kidneys", time_h=[4, 24, 48, 96],
...              activity_MBq=[190, 200, 130, 54], administered_MBq=7400)
>>> twin.observe(cycle=2, structure="kidneys", time_h=[96], activity_MBq=[50], administered_MBq=7400)
>>> est = twin.tia(cycle=2, structure="kidneys")
>>> pred = twin.predict(cycle=3, administered_MBq=7400)
>>> rec = twin.recommend_activity(cycle=3, confidence=0.9)
>>> plan = twin.plan_treatment(confidence=0.9)   # the remaining cycles of the protocol, limits held jointly

How it works (details in :mod:`theratwin.twin.model`, :mod:`theratwin.twin.population` and
:mod:`theratwin.twin.priors`): every structure has patient parameters θ (IIV prior from the population, its
uptake scaled to the structure's own mass) and one deviation κ per cycle (IOV prior); every cycle's scans of
a structure share one correlated measurement factor δ. ``observe`` adds data; the posterior of
(θ, κ_1..κ_K, δ_1..δ_K) is the MAP + Laplace fit of all structures at once, recomputed lazily after new data,
after which priors the data contradict are widened (:attr:`PatientTwin.conflicts`). A sparsely imaged cycle
is estimated from its own points, the patient's earlier cycles (through θ) and the IOV prior. Posterior draws
are the Laplace Gaussian's, importance-resampled towards the exact posterior. Predictions for a future cycle
draw θ from the posterior and a fresh κ from the IOV prior, and push all draws through the closed-form TIA,
dose and BED in one vectorised pass.

Validation (tests): the Laplace posterior agrees with an importance-sampled exact posterior (mean within
1 %, 90 % limits within 2 %); on virtual cohorts (``Testing/python/test_twin_cohort.py``) the twin is within
2 points of an independent Bayes oracle given the same data (share of cycle-2 TIAs off by > 10 %), beats
Hänscheid, Madsen and prior-cycle scaling, and its 90 % intervals cover the truth in about 90 % of patients;
the joint-limit plan holds its confidence on fresh posterior draws and on virtual patients' true doses
(``Testing/python/test_twin_plan.py``).

Limitations (research use): several prior numbers and all IOV values are unpublished assumptions
(:mod:`theratwin.twin.priors`; a site replaces them with its own file); structures are independent given the
data (no between-organ correlation); the dose per TIA is taken as exact (no mass/S-value uncertainty); a
calibration error common to all cycles is not separated from the patient's uptake; the PBPK option applies a saturation
curve to the patient's fitted kinetics — the population one, or the patient's own from
:class:`~theratwin.twin.pbpk.PBPKPatientFit` (a separate MAP + Laplace fit of receptor amounts and release
rates, not yet propagated into the twin's intervals);
the outcome models come from external-beam data or small cohorts; coverage drops to about 80 % if the true
inter-cycle variability is twice the assumed one.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..nuclides import get as get_nuclide
from ..results import RESEARCH_USE_NOTICE
from . import _planning
from ._conflicts import PriorConflict, detect_conflicts, widened_priors
from ._observations import checked_observation, fit_data
from ._posterior import TwinPosterior
from ._state import SCHEMA, state_from_dict, state_to_dict
from .model import (
    TWIN_MODELS,
    LaplacePosterior,
    fit_map_laplace,
    tia_from_exponentials,
)
from .population import (
    PRIORS_SCHEMA,
    MeasurementSpec,
    PopulationPrior,
    PopulationPriors,
    builtin_priors,
    load_priors,
)
from .priors import KineticPriorSpec, StructurePrior, prior_key, radiopharmaceutical_key
from .protocol import TreatmentProtocol, default_protocol
from .results import (
    Interval,
    MeasurementErrorModel,
    Observation,
    Prediction,
    Recommendation,
    StructurePrediction,
    TIAEstimate,
    TreatmentPlan,
)
from .tissues import TissueParameters, dose_per_tia_Gy_per_MBq_h, tissue_parameters

__all__ = [
    "SCHEMA",
    "MeasurementErrorModel",
    "Observation",
    "Interval",
    "TIAEstimate",
    "StructurePrediction",
    "Prediction",
    "Recommendation",
    "TreatmentPlan",
    "PatientTwin",
]

_Z90 = 1.6448536269514722  # standard normal 95th percentile


class PatientTwin:
    """Digital twin of one patient's radiopharmacokinetics (see the module docstring).

    Parameters
    ----------
    nuclide
        Therapy nuclide (ICRP-107 name), e.g. ``"Lu-177"``.
    radiopharmaceutical
        Selects the population prior (``"PSMA-617"``, ``"DOTATATE"``; ``"custom"`` with ``prior_overrides``).
    model
        Twin model name in :data:`theratwin.twin.model.TWIN_MODELS` (``"biexp"``, ``"pbpk_psma"``) or an
        instance.
    prior_overrides
        ``{structure name or prior key: KineticPriorSpec}`` replacing built-in priors.
    measurement
        Measurement error model for every structure (default: per structure from the priors, else
        :class:`MeasurementErrorModel`'s defaults).
    tissues
        ``{structure name or tissue key: TissueParameters}`` overriding α/β and repair half-times.
    limits
        Default organ-at-risk limits for :meth:`plan_treatment` and :meth:`recommend_activity` (merged over the
        built-in ones).
    reference_ligand_nmol
        Ligand amount assumed when an administration does not state one (nmol).
    seed
        Seed of the posterior draws (results are reproducible).
    priors
        A site's population priors: a :class:`~theratwin.twin.population.PopulationPriors` or the path of a
        priors file (schema ``theratwin-priors/1``); structures it lacks use the built-in priors.
    conflict_sd, conflict_handling
        Prior–data conflict threshold (SD) and what to do (``"widen"`` the prior, or ``"none"``); see
        :attr:`conflicts`.
    protocol
        The treatment protocol the plan stays in (default: the labelled regimen of ``radiopharmaceutical``).
    """

    def __init__(self, nuclide: str = "Lu-177", radiopharmaceutical: str = "PSMA-617", *, model: str | Any = "biexp",
                 prior_overrides: dict[str, KineticPriorSpec] | None = None,
                 measurement: MeasurementErrorModel | None = None,
                 tissues: dict[str, TissueParameters] | None = None,
                 limits: dict[str, Any] | None = None,
                 reference_ligand_nmol: float = 100.0,
                 patient_id: str | None = None,
                 seed: int = 20240617,
                 priors: PopulationPriors | str | os.PathLike[str] | None = None,
                 conflict_sd: float = 3.0,
                 conflict_handling: str = "widen",
                 protocol: TreatmentProtocol | None = None) -> None:
        self.nuclide = nuclide
        self._lambda_phys = float(get_nuclide(nuclide).decay_constant_per_h)
        self.radiopharmaceutical = radiopharmaceutical
        self._rph_key = "custom" if radiopharmaceutical == "custom" else radiopharmaceutical_key(radiopharmaceutical)
        self.model_name = model if isinstance(model, str) else str(getattr(model, "name", type(model).__name__))
        entry = TWIN_MODELS.get(model) if isinstance(model, str) else model
        self.model = entry() if isinstance(entry, type) else entry
        self.prior_overrides = dict(prior_overrides or {})
        #: The measurement error model given by the caller (None: per structure from the priors, else default).
        self.measurement = measurement
        if priors is not None and not isinstance(priors, PopulationPriors):
            priors = load_priors(os.fspath(priors))
        if priors is not None and self._rph_key != "custom":
            priors.check_matches(radiopharmaceutical, nuclide)
        #: A site's population priors (None: the built-in ones).
        self.priors: PopulationPriors | None = priors
        if not conflict_sd > 0:
            raise InvalidInputError(f"conflict_sd must be positive (in SD), got {conflict_sd}.")
        if conflict_handling not in ("widen", "none"):
            raise InvalidInputError(f"conflict_handling must be 'widen' or 'none', got {conflict_handling!r}.")
        self.conflict_sd = float(conflict_sd)
        self.conflict_handling = conflict_handling
        self.protocol = protocol or default_protocol(radiopharmaceutical)
        self.tissues = dict(tissues or {})
        self.limits = dict(limits or {})
        if not reference_ligand_nmol > 0:
            raise InvalidInputError(f"reference_ligand_nmol must be positive, got {reference_ligand_nmol}.")
        self.reference_ligand_nmol = float(reference_ligand_nmol)
        self.patient_id = patient_id
        self.seed = int(seed)
        self.observations: dict[tuple[int, str], Observation] = {}
        self.planned: dict[int, tuple[float, float | None]] = {}
        self._fitted: TwinPosterior | None = None
        self._conflicts: list[PriorConflict] = []
        # the built-in priors (or the site's with the built-in as fallback); a bad radiopharmaceutical fails here
        self._population = priors if priors is not None else builtin_priors(
            self._rph_key if self._rph_key == "custom" else radiopharmaceutical, nuclide, self.prior_overrides)

    # ------------------------------------------------------------------ data
    def observe(self, cycle: int, structure: str, time_h: Any, activity_MBq: Any, administered_MBq: float, *,
                activity_sd_MBq: Any = None, ligand_nmol: float | None = None, mass_g: float | None = None,
                dose_per_tia_Gy_per_MBq_h: float | None = None, correlated_rel_sd: float | None = None) -> None:
        """Add (or replace) one structure's measured activities in one cycle.

        Parameters
        ----------
        cycle
            Cycle number (1, 2, ...).
        structure
            Structure name; its kind (``theratwin.study.codes.structure_kind``) selects the prior.
        time_h, activity_MBq
            Sampling times (h after administration start) and measured activities (MBq), same length.
        administered_MBq
            Administered activity of this cycle, MBq.
        activity_sd_MBq
            Optional per-point SD (MBq) of the *random* error (independent between scans: counting statistics,
            reconstruction), added to the measurement error model's random part.
        ligand_nmol
            Ligand amount administered (nmol; used by ligand-dependent models such as ``pbpk_psma``).
        mass_g
            Structure mass (g) for the S-value dose conversion.
        dose_per_tia_Gy_per_MBq_h
            The patient's own dose per TIA (e.g. voxel dosimetry mean dose / TIA); preferred over S-values.
        correlated_rel_sd
            Relative SD of the error shared by all scans of this structure in this cycle (calibration,
            segmentation, recovery), replacing the measurement error model's correlated part for it.
        """
        self.observations[(int(cycle), structure)] = checked_observation(
            self.observations, cycle, structure, time_h, activity_MBq, administered_MBq,
            activity_sd_MBq=activity_sd_MBq, ligand_nmol=ligand_nmol, mass_g=mass_g,
            dose_per_tia_Gy_per_MBq_h=dose_per_tia_Gy_per_MBq_h, correlated_rel_sd=correlated_rel_sd)
        self._fitted = None

    def plan(self, cycle: int, administered_MBq: float, ligand_nmol: float | None = None) -> None:
        """Record a planned (not yet imaged) administration, used for cumulative predictions."""
        if not administered_MBq >= 0:
            raise InvalidInputError(f"Planned activity of cycle {cycle} must be >= 0 MBq, got {administered_MBq}.")
        self.planned[int(cycle)] = (float(administered_MBq), ligand_nmol)

    @property
    def structures(self) -> list[str]:
        """Structures with data, in order of first observation."""
        out: list[str] = []
        for (_, s) in self.observations:
            if s not in out:
                out.append(s)
        return out

    @property
    def observed_cycles(self) -> list[int]:
        """Cycles with at least one observation, ascending."""
        return sorted({c for (c, _) in self.observations})

    def _administration(self, cycle: int) -> tuple[float, float] | None:
        """(administered MBq, ligand nmol) of a cycle from its observations or the plan, else None."""
        for (c, _), ob in self.observations.items():
            if c == cycle:
                return ob.administered_MBq, ob.ligand_nmol or self.default_ligand_nmol(ob.administered_MBq)
        if cycle in self.planned:
            a, lig = self.planned[cycle]
            return a, lig if lig is not None else self.default_ligand_nmol(a)
        return None

    @property
    def radiopharmaceutical_key(self) -> str:
        """The radiopharmaceutical's key in the priors (``"psma-617"``, ``"dotatate"``, ``"custom"`` ...)."""
        return self._rph_key

    def default_ligand_nmol(self, administered_MBq: float) -> float:
        """Ligand amount assumed when none is given (the twin's reference amount, whatever the activity)."""
        return self.reference_ligand_nmol

    # ------------------------------------------------------------------ priors and measurement model
    def structure_mass_g(self, structure: str) -> float | None:
        """The structure's mass (g) from its latest observation that states one, else None."""
        obs = [ob for (c, s), ob in sorted(self.observations.items()) if s == structure and ob.mass_g]
        return obs[-1].mass_g if obs else None

    def population_prior(self, structure: str) -> tuple[PopulationPrior, str]:
        """The population prior of ``structure`` (per gram) and where it comes from (file or built-in, key)."""
        for key in (structure, prior_key(structure)):
            if key in self.prior_overrides and self.priors is not None:
                pp = builtin_priors("custom", self.nuclide, {key: self.prior_overrides[key]}).structures[key]
                return pp, f"prior_overrides: {key}"
        return self._population.lookup(structure)

    def _prior(self, structure: str) -> StructurePrior:
        """The prior of ``structure`` before any conflict handling: the population prior at the structure's
        own mass for the built-in model family, else the plug-in model's own prior."""
        if getattr(self.model, "uses_population_priors", False):
            pp, source = self.population_prior(structure)
            return pp.structure_prior(self.structure_mass_g(structure), source=source)
        return self.model.prior(structure, self._rph_key, self.nuclide, self.prior_overrides)

    def _priors(self, structures: list[str]) -> list[StructurePrior]:
        return [self._prior(s) for s in structures]

    def measurement_spec(self, structure: str) -> MeasurementSpec:
        """Measurement error of ``structure``: the twin's explicit model, else the priors', else the default."""
        if self.measurement is None:
            m = self._prior(structure).measurement
            if isinstance(m, MeasurementSpec):
                return m
        model = self.measurement or MeasurementErrorModel()
        return MeasurementSpec(model.for_structure(structure), model.correlated_for_structure(structure),
                               model.additive_sd_MBq)

    # ------------------------------------------------------------------ posterior
    def posterior(self) -> LaplacePosterior:
        """The (cached) Laplace posterior of all observed structures (:attr:`TwinPosterior.laplace
        <theratwin.twin._posterior.TwinPosterior.laplace>` of :meth:`fitted`)."""
        return self.fitted().laplace

    def fitted(self) -> TwinPosterior:
        """The fitted twin of the current observations: posterior, priors, data and draws (cached).

        Prior–data conflicts (:attr:`conflicts`) are checked on the first fit; with ``conflict_handling=
        "widen"`` the conflicting priors are widened and the posterior refitted (see :meth:`conflicts`).
        """
        if self._fitted is not None:
            return self._fitted
        structures = self.structures
        if not structures:
            raise InvalidInputError("The twin has no observations yet; call observe(...) first.")
        cycles = self.observed_cycles
        data = fit_data(self.observations, structures, cycles, measurement=self.measurement_spec,
                        default_ligand_nmol=self.default_ligand_nmol, reference_ligand_nmol=self.reference_ligand_nmol)
        priors = self._priors(structures)
        post = fit_map_laplace(self.model, structures, priors, data, self._lambda_phys)
        # population level first: a wrong population prior distorts the cycle deviations, so those are tested
        # only once the population priors the data contradict have been widened
        conflicts: list[PriorConflict] = []
        for level in ("population", "cycle"):
            found = detect_conflicts(self.model, structures, cycles, priors, post, observed=set(self.observations),
                                     lambda_phys=self._lambda_phys, conflict_sd=self.conflict_sd,
                                     conflict_handling=self.conflict_handling, level=level)
            conflicts += found
            if found and self.conflict_handling == "widen":
                priors = widened_priors(structures, priors, found)
                post = fit_map_laplace(self.model, structures, priors, data, self._lambda_phys)
        self._conflicts = conflicts
        self._fitted = TwinPosterior(self.model, structures, cycles, priors, data, post, self._lambda_phys)
        return self._fitted

    @property
    def conflicts(self) -> list[PriorConflict]:
        """Prior–data conflicts found in the last fit (see :mod:`theratwin.twin._conflicts`).

        A parameter is in conflict when the patient's estimate lies more than ``conflict_sd`` (default 3) SD
        from the prior mean, standardised by the spread the estimate would have if the prior were right (a
        prior-predictive check, Box 1980; for a cycle's deviation the same with the IOV prior). With
        ``conflict_handling="widen"`` that prior's SD is multiplied by the conflict's z, so the data lie about
        one SD from it and decide, and the twin is refitted.
        """
        self.posterior()
        return list(self._conflicts)

    # ------------------------------------------------------------------ dose constants
    def _dose_per_tia(self, structure: str) -> tuple[float, str]:
        """Gy per MBq·h: the patient's own dosimetry pooled over cycles, else S-value with the observed mass.

        Pooling: the mean of the cycles' dose/TIA ratios over the fully imaged cycles (≥ 3 scans), or over all
        cycles when none is. A linear dose engine gives the same ratio in every cycle; differences come from
        how the voxel and the structure TIAs of a sparsely imaged cycle are estimated (by two different
        single-time-point approximations), not from the patient, so one cycle's ratio is not used alone.
        """
        obs = [ob for (c, s), ob in sorted(self.observations.items()) if s == structure]
        with_dpt = [ob for ob in obs if ob.dose_per_tia_Gy_per_MBq_h is not None]
        if with_dpt:
            pooled = [ob for ob in with_dpt if len(ob.time_h) >= 3] or with_dpt
            value = float(np.mean([ob.dose_per_tia_Gy_per_MBq_h for ob in pooled]))
            return value, "patient_dosimetry:pooled(cycles " + ",".join(str(ob.cycle) for ob in pooled) + ")"
        mass = self.structure_mass_g(structure)
        if mass is None:
            if getattr(self.model, "uses_population_priors", False):
                mass = self.population_prior(structure)[0].reference_mass_g
            else:  # a plug-in model's own prior: its spec's mass, else the built-in prior's reference mass
                spec = self._prior(structure).spec
                mass = spec.reference_mass_g if spec is not None else self.population_prior(structure)[0].reference_mass_g
            value, method = dose_per_tia_Gy_per_MBq_h(structure, self.nuclide, mass)
            return value, method + ":reference_mass"
        return dose_per_tia_Gy_per_MBq_h(structure, self.nuclide, mass)

    def structure_constants(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per fitted structure: dose per TIA (Gy/(MBq·h)), α/β (Gy) and repair rate (1/h)."""
        structures = self.fitted().structures
        dpt = np.array([self._dose_per_tia(s)[0] for s in structures])
        tp = [tissue_parameters(s, self.tissues) for s in structures]
        return dpt, np.array([x.alpha_beta_Gy for x in tp]), np.array([x.repair_rate_per_h for x in tp])

    def schedule(self, cycle: int, administered_MBq: float | None, ligand_nmol: float | None
                  ) -> dict[int, tuple[float, float]]:
        """Administrations of cycles 1..cycle: observed, planned, else the requested one (documented rule)."""
        sched: dict[int, tuple[float, float]] = {}
        for c in range(1, cycle + 1):
            known = self._administration(c)
            if c == cycle and administered_MBq is not None and c not in self.observed_cycles:
                known = (float(administered_MBq),
                         ligand_nmol if ligand_nmol is not None else self.default_ligand_nmol(administered_MBq))
            if known is None:
                if administered_MBq is None:
                    raise InvalidInputError(
                        f"Cycle {c} has no observation or plan; give administered_MBq or call twin.plan({c}, ...).")
                known = (float(administered_MBq),
                         ligand_nmol if ligand_nmol is not None else self.default_ligand_nmol(administered_MBq))
            sched[c] = known
        return sched

    # ------------------------------------------------------------------ public API
    def tia(self, cycle: int, structure: str, *, level: float = 0.9, n_draws: int = 4000) -> TIAEstimate:
        """Time-integrated activity of ``structure`` in ``cycle`` (MBq·h) with its ``level`` interval.

        For an observed cycle this is the posterior given all data (its own points, earlier cycles, prior);
        for an unobserved cycle it is the predictive distribution (administration from ``plan``).
        """
        fit = self.fitted()
        if structure not in fit.structures:
            raise InvalidInputError(f"No data for structure '{structure}'; observed: {fit.structures}.")
        adm = self._administration(cycle)
        if adm is None:
            raise InvalidInputError(
                f"Cycle {cycle} has no observation or plan; call twin.plan({cycle}, administered_MBq) first.")
        a, lig = adm
        rng = np.random.default_rng(self.seed + 7919 * cycle)
        i = fit.structures.index(structure)
        eta = fit.draw_eta([cycle], n_draws, rng, rows=[i])[cycle]
        coef, rate = self.model.exponentials(eta, np.asarray(a), np.asarray(lig), [structure], self._lambda_phys)
        draws = tia_from_exponentials(coef, rate)[0]
        iv = Interval.from_draws(draws, level)
        ob = self.observations.get((cycle, structure))
        n_pts = 0 if ob is None else len(ob.time_h)
        method = "twin:posterior" if n_pts else "twin:prediction"
        return TIAEstimate(structure, cycle, iv.mean, iv.sd, iv.median, iv.low, iv.high, level, n_pts, method)

    def predict(self, cycle: int, administered_MBq: float | None = None, *, ligand_nmol: float | None = None,
                n_draws: int = 10000, level: float = 0.9, keep_draws: bool = False,
                seed: int | None = None) -> Prediction:
        """Predict TIA, mean dose, BED and cumulative dose/BED/EQD2 of every structure for ``cycle``.

        Cycles before ``cycle`` contribute their posterior (observed) or predictive (planned) values to the
        cumulative quantities, from the same joint draws; ``Prediction.cumulative_by_cycle`` gives the
        cumulative dose and BED after every cycle up to ``cycle`` (the trajectory of a planned schedule). Unobserved, unplanned cycles up to ``cycle`` are
        assumed to receive ``administered_MBq``. BED per cycle uses the Lea–Catcheside factor of the drawn
        kinetics; BED and EQD2 add across cycles (full repair between cycles; Dale 1985).

        Parameters
        ----------
        cycle
            Cycle to predict.
        administered_MBq
            Activity of ``cycle`` (required unless observed or planned).
        ligand_nmol
            Ligand amount of ``cycle`` (ligand-dependent models only).
        n_draws
            Number of posterior draws.
        level
            Central interval probability (0.9 = 90 % prediction interval).
        keep_draws
            Keep the raw draws in ``Prediction.draws``.
        """
        if n_draws < 10:
            raise InvalidInputError(f"n_draws must be at least 10, got {n_draws}.")
        fit = self.fitted()
        sched = self.schedule(cycle, administered_MBq, ligand_nmol)
        rng = np.random.default_rng(self.seed if seed is None else seed)
        etas = fit.draw_eta(sorted(sched), n_draws, rng)
        dpt, ab, mu = self.structure_constants()
        cum_dose = np.zeros((len(fit.structures), n_draws))
        cum_bed = np.zeros_like(cum_dose)
        cum_eqd2 = np.zeros_like(cum_dose)
        q: dict[str, np.ndarray] = {}
        trajectory: dict[int, dict[str, dict[str, Interval]]] = {}
        for c in sorted(sched):
            a, lig = sched[c]
            q = fit.cycle_quantities(etas[c], a, lig, dpt, ab, mu)
            cum_dose += q["dose"]
            cum_bed += q["bed"]
            cum_eqd2 += q["bed"] / (1.0 + 2.0 / ab[:, None])  # EQD2 = BED / (1 + d/(α/β)), d = 2 Gy
            trajectory[c] = {s: {"cumulative_dose_Gy": Interval.from_draws(cum_dose[i], level),
                                 "cumulative_bed_Gy": Interval.from_draws(cum_bed[i], level)}
                             for i, s in enumerate(fit.structures)}
        out: dict[str, StructurePrediction] = {}
        for i, s in enumerate(fit.structures):
            tp = tissue_parameters(s, self.tissues)
            out[s] = StructurePrediction(
                s, Interval.from_draws(q["tia"][i], level), Interval.from_draws(q["dose"][i], level),
                Interval.from_draws(q["bed"][i], level), Interval.from_draws(cum_dose[i], level),
                Interval.from_draws(cum_bed[i], level), Interval.from_draws(cum_eqd2[i], level),
                float(dpt[i]), tp.alpha_beta_Gy, tp.repair_half_time_h)
        draws = None
        if keep_draws:
            draws = {"tia_MBq_h": q["tia"], "dose_Gy": q["dose"], "bed_Gy": q["bed"],
                     "cumulative_dose_Gy": cum_dose, "cumulative_bed_Gy": cum_bed, "cumulative_eqd2_Gy": cum_eqd2}
        a_c, lig_c = sched[cycle]
        return Prediction(cycle, a_c, lig_c, n_draws, level, out, {c: v[0] for c, v in sched.items()}, draws,
                          trajectory)

    def plan_treatment(self, next_cycle: int | None = None, limits: dict[str, Any] | None = None,
                       confidence: float = 0.9, *, protocol: TreatmentProtocol | dict[str, Any] | None = None,
                       shape: str | None = None, ligand_nmol: float | None = None, n_draws: int = 10000,
                       seed: int | None = None) -> TreatmentPlan:
        """The plan for the remaining cycles of the protocol, under the organ-at-risk limits jointly.

        The plan gives the most cycles the protocol allows (each at least its minimum activity), then the
        largest activity per cycle up to its maximum, such that the probability that *every* organ at risk
        stays under its cumulative limit at the end of the plan is at least ``confidence`` — evaluated on the
        joint posterior-predictive draws (all organs and cycles of one draw together). With equal tumour dose
        per MBq in every future cycle this maximises the expected tumour dose. ``shape="adapted"`` front-loads
        the same cycles (each as high as keeps the later ones possible at the minimum).

        Parameters
        ----------
        next_cycle
            First cycle to plan (default: the last imaged or planned cycle + 1). Earlier cycles that were neither
            imaged nor planned count at the protocol's standard activity.
        limits
            Organ-at-risk limits merged over the twin's (see :func:`theratwin.twin.tissues.resolve_limits`).
        confidence
            Required joint probability (0.5-1).
        protocol
            The regimen (default: the twin's, i.e. the labelled one of its radiopharmaceutical); a dict updates
            the twin's protocol field by field.
        shape
            ``"equal"`` or ``"adapted"`` (default: the protocol's).

        Returns
        -------
        TreatmentPlan
            Activities, joint probability, binding constraint (an organ or ``"the protocol"``), cumulative doses
            at the end of the plan with 90 % intervals, tumour dose, sensitivity and alternatives.
        """
        if isinstance(protocol, dict):
            protocol = TreatmentProtocol.from_dict(protocol, self.protocol)
        return _planning.plan_treatment(self, next_cycle, protocol or self.protocol, limits, confidence, shape=shape,
                                        ligand_nmol=ligand_nmol, n_draws=n_draws, seed=seed)

    def recommend_activity(self, cycle: int, limits: dict[str, Any] | None = None, confidence: float = 0.9, *,
                           ligand_nmol: float | None = None, max_activity_MBq: float | None = None,
                           standard_activity_MBq: float | None = None, max_cycles: int | None = None,
                           n_draws: int = 10000, seed: int | None = None) -> Recommendation:
        """Largest activity for ``cycle`` alone keeping every organ at risk under its cumulative limit.

        The condition is joint: the probability that *all* limited quantities (cumulative BED, EQD2 or dose
        after ``cycle``) stay under their limits is at least ``confidence`` (for one organ this is its
        ``confidence`` quantile, not its mean). The search stops at ``max_activity_MBq`` (default: the
        protocol's maximum; status ``"upper_bound"``). Also returned: the largest equal activity per cycle for
        1..``max_cycles`` further cycles (default: the protocol's remaining cycles), the number of further
        cycles possible at ``standard_activity_MBq`` (default: the protocol's), the predicted lesion doses and
        the responder probability. Ligand amount per cycle: ``ligand_nmol`` or the twin's reference amount.
        For the protocol-aware plan of all remaining cycles use :meth:`plan_treatment`.
        """
        return _planning.recommend_activity(
            self, cycle, limits, confidence, ligand_nmol=ligand_nmol, max_activity_MBq=max_activity_MBq,
            standard_activity_MBq=standard_activity_MBq, max_cycles=max_cycles, n_draws=n_draws, seed=seed)

    def forecast(self, cycle: int, administered_MBq: float | None = None, *, n_draws: int = 10000,
                 response_model: str | None = None, toxicity_models: dict[str, str] | None = None) -> dict[str, Any]:
        """Responder probability (lesion dose) and toxicity probability per organ (cumulative), research use.

        Each probability is evaluated on every posterior draw: reported as mean and 90 % interval.
        """
        return _planning.forecast(self, cycle, administered_MBq, n_draws=n_draws, response_model=response_model,
                                  toxicity_models=toxicity_models)

    # ------------------------------------------------------------------ state
    def to_dict(self) -> dict[str, Any]:
        """The twin state as plain JSON data (schema :data:`SCHEMA`)."""
        return state_to_dict(self)

    def to_json(self, indent: int | None = 2) -> str:
        """Serialise the twin state (versioned JSON; restore with :meth:`from_json`)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PatientTwin:
        """Restore a twin from :meth:`to_dict` data (the posterior is recomputed from the observations)."""
        return state_from_dict(cls, d)

    @classmethod
    def from_json(cls, text: str) -> PatientTwin:
        """Restore a twin saved with :meth:`to_json` (the posterior is recomputed from the observations)."""
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"Twin state is not valid JSON ({exc}); pass the text written by to_json().") from exc
        if not isinstance(d, dict):
            raise InvalidInputError("Twin state must be a JSON object written by PatientTwin.to_json().")
        return cls.from_dict(d)

    def summary(self) -> dict[str, Any]:
        """Model, prior and measurement-model information for reports."""
        fit = self.fitted()
        structures: dict[str, Any] = {}
        for s, pr in zip(fit.structures, fit.priors, strict=True):
            meas = self.measurement_spec(s)
            structures[s] = {
                "prior_key": prior_key(s), "prior_source": pr.source or f"model {self.model_name}",
                "prior_mass_g": pr.mass_g,
                "prior_mean": [float(v) for v in pr.mean], "prior_iiv_sd": np.sqrt(np.diag(pr.iiv_cov)).tolist(),
                "prior_iov_sd": np.sqrt(np.diag(pr.iov_cov)).tolist(),
                "prior": pr.spec.to_dict() if pr.spec is not None else None,
                "measurement": meas.to_dict(),
                "dose_per_tia": dict(zip(("Gy_per_MBq_h", "method"), self._dose_per_tia(s), strict=False)),
            }
        return {
            "model": self.model_name, "radiopharmaceutical": self.radiopharmaceutical, "nuclide": self.nuclide,
            "inference": ("MAP + Laplace (batched Levenberg-Marquardt, Gauss-Newton Hessian); draws "
                          "importance-resampled (SIR) to the exact posterior"),
            "parameters": ["ln U (uptake fraction)", "ln(washout - physical decay) 1/h", "ln(uptake - washout) 1/h"],
            "priors": {"origin": self._population.origin, "schema": PRIORS_SCHEMA,
                       "description": self._population.description,
                       "references": dict(self._population.references)},
            "conflict_sd": self.conflict_sd, "conflict_handling": self.conflict_handling,
            "structures": structures,
            "observed_cycles": self.observed_cycles,
            "notice": RESEARCH_USE_NOTICE,
        }

