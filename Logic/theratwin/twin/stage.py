"""Pipeline stage ``twin``: builds the patient twin from the per-structure TACs and writes its outputs.

Reads ``results.cycles[n].structures[s]`` (``time_h``, ``activity_MBq``, ``activity_sd_MBq`` split into its
random part and the correlated ``fit_quality["systematic_rel_sd"]``, ``mass_g`` and, when dosimetry ran,
``mean_dose_Gy / tia_MBq_h`` as the patient's own dose per TIA). Writes:

* ``results.twin`` — a :class:`~theratwin.twin.output.TwinResults` (serialised only into ``results.json``): the
  twin's estimates for sparsely imaged cycles (with their distance to the kinetics stage's own estimate), the prediction for the next cycle with 90 % intervals, the plan for the
  remaining cycles of the protocol (``"plan"``), the largest activity for the next cycle alone
  (``"recommendation"``), prior–data conflicts (``"conflicts"``, also as warnings), forecasts, model/prior
  information, research notice;
* ``StructureResult.estimated_by_twin`` for structures of sparsely imaged cycles (≤ ``sparse_max_points``);
* ``twin-state.json`` in ``ctx.out_dir`` (``results.outputs["twin_state"]``);
* ``ctx.state.twin`` — the :class:`~theratwin.twin.PatientTwin`.

It needs the kinetics stage; without radiobiology it still runs (the twin computes BED itself with its
tissue table) and says so in a warning.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from .._files import atomic_write
from ..errors import ConfigurationError, FitError, InvalidInputError
from ..options import parse_options
from ..pipeline.core import STAGES, PipelineContext
from .output import TwinEstimate, TwinResults, TwinTrajectory
from .protocol import TreatmentProtocol, default_protocol
from .twin import PatientTwin

__all__ = ["TwinStageConfig", "TwinStage"]

_REFERENCES = [
    "Sheiner LB, Beal SL. J Pharm Sci 1982;71:1344 (Bayesian individualisation of pharmacokinetics)",
    "Karlsson MO, Sheiner LB. J Pharmacokinet Biopharm 1993;21:735 (inter-occasion variability)",
    "Dale RG. Br J Radiol 1985;58:515 (BED, Lea-Catcheside factor)",
    "Kletting P et al. PLoS One 2016;11:e0162303 (PSMA PBPK, ligand amount)",
    "Hanscheid H et al. J Nucl Med 2018;59:75; Madsen MT et al. Med Phys 2018;45:2318 (single-time-point)",
    "Devasia TP et al. J Nucl Med 2021;62:1118 (mixed models for reduced time points)",
]


@dataclass(frozen=True)
class TwinStageConfig:
    """Options of the ``twin`` stage (``PipelineConfig.stage_options["twin"]``, ``TwinStage.Options``).

    Attributes
    ----------
    model
        Twin model name (``"biexp"`` or ``"pbpk_psma"`` or a plug-in).
    predict_cycle
        Cycle to predict (default: the last imaged cycle + 1).
    administered_MBq
        Activity assumed for the predicted cycle (default: that of the last cycle).
    confidence
        Confidence of the activity recommendation (quantile of the predictive distribution).
    limits
        Organ-at-risk limits merged over the defaults (see :mod:`theratwin.twin.tissues`).
    n_draws
        Posterior draws for predictions.
    sparse_max_points
        A structure in a cycle with at most this many time points is "sparsely imaged" and gets
        ``estimated_by_twin``.
    pbpk_patient_fit
        With ``model="pbpk_psma"``: fit the patient's receptor amounts and release rates to the first fully
        imaged cycle (:class:`~theratwin.twin.pbpk.PBPKPatientFit`) and use the patient's saturation curve.
    max_activity_MBq
        Upper end of the single-cycle recommendation's activity search (default: the protocol's maximum;
        status ``"upper_bound"`` when no limit is reached below it).
    horizon_cycle
        Last cycle of the cumulative trajectory (``TwinResults.trajectory``: cumulative dose and BED per
        structure after each cycle, every future cycle at ``administered_MBq``; default: the protocol's last
        cycle, 6 for 177Lu-PSMA-617 as in VISION).
    priors
        Path of a site's population priors file (schema ``theratwin-priors/1``,
        :mod:`theratwin.twin.population`); default: the built-in priors.
    protocol
        Treatment protocol fields over the radiopharmaceutical's labelled regimen
        (:class:`~theratwin.twin.protocol.TreatmentProtocol`, e.g. ``{"min_activity_MBq": 5920,
        "max_activity_MBq": 9000}`` for a site's escalation bounds, or ``{"tolerance": 0.1}``).
    conflict_sd, conflict_handling
        Prior–data conflict threshold (SD) and handling (``"widen"`` or ``"none"``), see
        :attr:`PatientTwin.conflicts <theratwin.twin.twin.PatientTwin.conflicts>`.
    plan_shape
        ``"equal"`` or ``"adapted"`` activities in the plan (default: the protocol's, ``"equal"``).
    """

    model: str = "biexp"
    predict_cycle: int | None = None
    administered_MBq: float | None = None
    confidence: float = 0.9
    limits: dict[str, Any] | None = None
    n_draws: int = 10000
    sparse_max_points: int = 2
    horizon_cycle: int | None = None
    max_activity_MBq: float | None = None
    pbpk_patient_fit: bool = True
    priors: str | None = None
    protocol: dict[str, Any] | None = None
    conflict_sd: float = 3.0
    conflict_handling: Literal["widen", "none"] = "widen"
    plan_shape: str | None = None

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> TwinStageConfig:
        """The options from a plain mapping (:func:`~theratwin.options.parse_options` with ``stage="twin"``)."""
        return parse_options(cls, options, stage="twin")


#: Molar masses (g/mol) to convert DICOM/administration ligand amounts (µg) to nmol: PSMA-617
#: (vipivotide tetraxetan, C49H71N9O16) and DOTATATE (oxodotreotide, C65H90N14O19S2), from their sum formulas.
LIGAND_MOLAR_MASS_G_PER_MOL = {"psma-617": 1042.1, "dotatate": 1435.6}


def _ligand_nmol_by_cycle(ctx: PipelineContext) -> dict[int, float]:
    """Ligand amount per cycle (nmol) from ``Administration.ligand_amount_ug`` when known."""
    from .priors import radiopharmaceutical_key

    out: dict[int, float] = {}
    for c in getattr(ctx.study, "cycles", []):
        adm = c.administration
        if adm.ligand_amount_ug is None or not adm.ligand_amount_ug > 0:
            continue
        try:
            mm = LIGAND_MOLAR_MASS_G_PER_MOL.get(radiopharmaceutical_key(adm.radiopharmaceutical))
        except ConfigurationError:
            mm = None
        if mm is not None:
            out[c.number] = adm.ligand_amount_ug / mm * 1000.0  # µg / (g/mol) = µmol -> nmol
    return out


def _patient_pbpk_model(res: Any, ligand: dict[int, float]) -> tuple[Any, dict[str, Any]]:
    """The PBPK saturation model with the patient's own parameters, fitted to the first cycle with >= 3 points.

    Falls back to the population curve (and says why) when no cycle qualifies or the fit fails.
    """
    from .pbpk import PBPKPatientFit, PBPKSaturationModel, pbpk_tissue

    for n, cr in sorted(res.cycles.items()):
        obs = {s: (sr.time_h, sr.activity_MBq) for s, sr in cr.structures.items()
               if sr.time_h and sr.activity_MBq and len(sr.time_h) >= 3 and pbpk_tissue(s) is not None}
        if not obs:
            continue
        lig = ligand.get(n, 100.0)
        try:
            post = PBPKPatientFit().fit(obs, cr.administered_MBq, lig)
        except (InvalidInputError, FitError) as exc:
            return "pbpk_psma", {"patient_fit": None, "reason": str(exc)}
        return PBPKSaturationModel(post.parameters), {
            "patient_fit": {"cycle": n, "ligand_nmol": lig, "scales": post.scales(),
                            "sd_log": dict(zip([f"{t}:{q}" for t in post.tissues for q in ("receptor", "release")],
                                               np.sqrt(np.diag(post.cov)).tolist(), strict=True))}}
    return "pbpk_psma", {"patient_fit": None, "reason": "no cycle with >= 3 time points of a PBPK tissue"}


def _limits_of_the_results(res: Any, configured: dict[str, Any] | None) -> dict[str, Any]:
    """The limits the plan guards: those the dosimetry results carry (the radiobiology stage's, including its
    risk-factor choices) for every structure of the latest cycle, overridden by the twin's configured ones."""
    latest = res.cycles[max(res.cycles)]
    limits: dict[str, Any] = {}
    for s, sr in latest.structures.items():
        lim = sr.limit
        if isinstance(lim, dict) and lim.get("value_Gy") and str(lim.get("quantity", "")).lower() in ("bed", "eqd2", "dose"):
            limits[s] = {"quantity": str(lim["quantity"]).lower(), "value_Gy": float(lim["value_Gy"]),
                         "reference": str(lim.get("reference") or "radiobiology stage")}
    return {**limits, **(configured or {})}


def _error_components(sr: Any) -> tuple[list[float] | None, float | None]:
    """The random (per-scan) SD and the correlated relative SD of a structure's activities.

    The kinetics stage gives the total SD per scan and the correlated part as a relative SD
    (``fit_quality["systematic_rel_sd"]``: calibration, segmentation, recovery); the random part is what is
    left, ``√(total² − (rel·A)²)`` (Gear et al. 2018 add the two in quadrature).
    """
    total = sr.activity_sd_MBq
    rel = (sr.fit_quality or {}).get("systematic_rel_sd")
    if total is None or rel is None or not np.isfinite(rel):
        return total, None
    y = np.asarray(sr.activity_MBq, float)
    random_sd = np.sqrt(np.maximum(np.square(np.asarray(total, float)) - np.square(rel * y), 0.0))
    return [float(v) for v in random_sd], float(min(max(rel, 0.0), 0.99))


class TwinStage:
    """The ``twin`` pipeline stage (see the module docstring)."""

    name = "twin"
    requires: tuple[str, ...] = ("kinetics",)
    Options = TwinStageConfig

    def run(self, ctx: PipelineContext) -> None:
        """Build the patient twin from the kinetics (and dosimetry) results and store its estimates,
        prediction, plan, conflicts and forecasts in ``results.twin`` (see the module docstring)."""
        cfg = parse_options(self.Options, ctx.config.options(self.name), stage=self.name)
        res = ctx.results
        if not res.cycles:
            res.warn("twin", "No cycles in the results; the twin was not built.")
            return
        if "radiobiology" not in ctx.completed:
            res.warn("twin", "The radiobiology stage did not run; the twin's BED uses its own tissue table.",
                     severity="info")
        first = res.cycles[min(res.cycles)]
        ligand = _ligand_nmol_by_cycle(ctx)
        model: Any = cfg.model
        pbpk_info: dict[str, Any] | None = None
        if cfg.model == "pbpk_psma" and cfg.pbpk_patient_fit:
            model, pbpk_info = _patient_pbpk_model(res, ligand)
        try:
            protocol = TreatmentProtocol.from_dict(cfg.protocol or {}, default_protocol(first.radiopharmaceutical))
            twin = PatientTwin(first.nuclide, first.radiopharmaceutical, model=model,
                               limits=cfg.limits, patient_id=getattr(getattr(ctx.study, "patient", None), "patient_id", None),
                               priors=cfg.priors, conflict_sd=cfg.conflict_sd,
                               conflict_handling=cfg.conflict_handling, protocol=protocol)
        except (ConfigurationError, InvalidInputError) as exc:
            # a site's priors file or protocol that cannot be used is a setting to fix, not a reason to go on
            if cfg.priors is not None or cfg.protocol is not None:
                raise
            res.warn("twin", f"Twin not built: {exc}")
            return
        n_obs = 0
        for n, cr in sorted(res.cycles.items()):
            for s, sr in cr.structures.items():
                if not sr.time_h or not sr.activity_MBq:
                    continue
                dpt = None
                if sr.mean_dose_Gy is not None and sr.tia_MBq_h and sr.tia_MBq_h > 0 and sr.mean_dose_Gy > 0:
                    dpt = sr.mean_dose_Gy / sr.tia_MBq_h
                random_sd, correlated = _error_components(sr)
                try:
                    twin.observe(n, s, sr.time_h, sr.activity_MBq, cr.administered_MBq,
                                 activity_sd_MBq=random_sd, mass_g=sr.mass_g or None,
                                 dose_per_tia_Gy_per_MBq_h=dpt, ligand_nmol=ligand.get(n),
                                 correlated_rel_sd=correlated)
                    n_obs += 1
                except InvalidInputError as exc:
                    res.warn("twin", f"Data not used by the twin: {exc}", structure=s, cycle=n)
        if n_obs == 0:
            res.warn("twin", "No structure time-activity curves from the kinetics stage; the twin was not built.")
            return
        ctx.stage_progress(0.1, "twin: fitting")
        try:
            twin.posterior()
        except FitError as exc:
            res.warn("twin", f"Twin fit failed: {exc}", severity="error")
            return

        for c in twin.conflicts:
            res.warn("twin", c.message, structure=c.structure, cycle=c.cycle)
        estimates: dict[int, dict[str, TwinEstimate]] = {}
        for (n, s), ob in sorted(twin.observations.items()):
            if len(ob.time_h) > cfg.sparse_max_points:
                continue
            est = twin.tia(n, s)
            sr = res.cycles[n].structure(s)
            sr.estimated_by_twin = {"tia_MBq_h": est.mean_MBq_h, "sd": est.sd_MBq_h, "low": est.low_MBq_h,
                                    "high": est.high_MBq_h, "median": est.median_MBq_h, "level": est.level}
            e = TwinEstimate(est)
            # the kinetics stage's own estimate of the same TIA: how far apart the two are, in their joint SD
            if sr.tia_MBq_h and sr.tia_sd_MBq_h:
                joint_sd = float(np.hypot(sr.tia_sd_MBq_h, est.sd_MBq_h))
                e = TwinEstimate(est, sr.tia_MBq_h, sr.tia_sd_MBq_h, (est.mean_MBq_h - sr.tia_MBq_h) / joint_sd)
                if abs(e.difference_z or 0.0) > 2.0:
                    res.warn("twin", f"Cycle {n}: the twin's TIA {est.mean_MBq_h:.4g} MBq·h differs from the "
                             f"single-time-point estimate {sr.tia_MBq_h:.4g} MBq·h by {e.difference_z:+.1f} SD; "
                             "check the scan and the segmentation.", structure=s, cycle=n)
            estimates.setdefault(n, {})[s] = e
        ctx.stage_progress(0.4, "twin: predicting")
        last = max(twin.observed_cycles)
        cycle = cfg.predict_cycle or last + 1
        activity = cfg.administered_MBq or res.cycles[last].administered_MBq
        pred = twin.predict(cycle, activity, n_draws=cfg.n_draws)
        out = TwinResults(prediction=pred, model=twin.summary(), config=asdict(cfg), conflicts=list(twin.conflicts),
                          estimates=estimates, pbpk=pbpk_info)
        horizon = cfg.horizon_cycle or twin.protocol.max_cycles
        if horizon > cycle:
            traj = twin.predict(horizon, activity, n_draws=min(cfg.n_draws, 4000))
            out.trajectory = TwinTrajectory(activity, dict(traj.cumulative_by_cycle or {}))
        ctx.stage_progress(0.6, "twin: planning")
        limits = _limits_of_the_results(res, cfg.limits)
        out.plan = plan = twin.plan_treatment(cycle, limits, cfg.confidence, shape=cfg.plan_shape, n_draws=cfg.n_draws)
        for note in plan.notes:
            res.warn("twin", note, severity="info")
        ctx.stage_progress(0.75, "twin: recommending")
        try:
            out.recommendation = twin.recommend_activity(
                cycle, limits, cfg.confidence, n_draws=cfg.n_draws, max_activity_MBq=cfg.max_activity_MBq,
                standard_activity_MBq=twin.protocol.activity_MBq)
        except ConfigurationError as exc:
            res.warn("twin", f"No activity recommendation: {exc}", severity="info")
        out.forecast = twin.forecast(cycle, activity, n_draws=cfg.n_draws)
        res.twin = out
        ctx.state.twin = twin
        if ctx.out_dir is not None and ctx.config.write_outputs:
            atomic_write(ctx.out_dir / "twin-state.json", twin.to_json())
            res.outputs["twin_state"] = "twin-state.json"
            out.state_file = "twin-state.json"
        res.record_method("twin", f"Bayesian mixed-effects patient twin ({twin.model_name}; MAP + Laplace, "
                          "draws importance-resampled to the exact posterior); "
                          f"priors: {twin._population.origin}; protocol-aware plan with the joint probability of "
                          "all organ limits",
                          {"predict_cycle": cycle, "administered_MBq": activity, "confidence": cfg.confidence,
                           "n_draws": cfg.n_draws, "observed_cycles": twin.observed_cycles,
                           "priors": twin._population.origin, "protocol": twin.protocol.name,
                           "conflict_sd": cfg.conflict_sd, "conflict_handling": cfg.conflict_handling},
                          _REFERENCES)
        ctx.stage_progress(1.0, "twin: done")


STAGES.register("twin", TwinStage)
