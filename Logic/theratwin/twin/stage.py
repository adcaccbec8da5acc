"""Pipeline stage ``twin``: builds the patient twin from the per-structure TACs and writes its outputs.

Reads ``results.cycles[n].structures[s]`` (``time_h``, ``activity_MBq``, ``activity_sd_MBq``, ``mass_g`` and,
when dosimetry ran, ``mean_dose_Gy / tia_MBq_h`` as the patient's own dose per TIA). Writes:

* ``results.twin`` — JSON-ready: the twin's estimates for sparsely imaged cycles, the prediction for the next
  cycle with 90 % intervals, the recommended activity, forecasts, model/prior information, research notice;
* ``StructureResult.estimated_by_twin`` for structures of sparsely imaged cycles (≤ ``sparse_max_points``);
* ``twin-state.json`` in ``ctx.out_dir`` (``results.outputs["twin_state"]``);
* ``ctx.state["twin"]`` — the :class:`~theratwin.twin.PatientTwin`.

It needs the kinetics stage; without radiobiology it still runs (the twin computes BED itself with its
tissue table) and says so in a warning.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .._files import atomic_write
from ..errors import ConfigurationError, FitError, InvalidInputError
from ..pipeline.core import STAGES, PipelineContext
from ..results import RESEARCH_USE_NOTICE
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


@dataclass
class TwinStageConfig:
    """Options of the ``twin`` stage (``PipelineConfig.stage_options["twin"]``).

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
        Upper end of the activity search of the recommendation (status ``"upper_bound"`` when no limit is
        reached below it).
    horizon_cycle
        Last cycle of the cumulative trajectory (``results.twin["trajectory"]``: cumulative dose and BED per
        structure after each cycle, every future cycle at ``administered_MBq``; 6 cycles as in VISION).
    """

    model: str = "biexp"
    predict_cycle: int | None = None
    administered_MBq: float | None = None
    confidence: float = 0.9
    limits: dict[str, Any] | None = None
    n_draws: int = 10000
    sparse_max_points: int = 2
    horizon_cycle: int = 6
    max_activity_MBq: float = 15000.0
    pbpk_patient_fit: bool = True

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> TwinStageConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(options) - known
        if unknown:
            raise ConfigurationError(f"Unknown twin stage options {sorted(unknown)}; known: {sorted(known)}.")
        return cls(**options)


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


class TwinStage:
    """The ``twin`` pipeline stage (see the module docstring)."""

    name = "twin"
    requires: tuple[str, ...] = ("kinetics",)

    def run(self, ctx: PipelineContext) -> None:
        cfg = TwinStageConfig.from_options(ctx.config.options("twin"))
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
            twin = PatientTwin(first.nuclide, first.radiopharmaceutical, model=model,
                               limits=cfg.limits, patient_id=getattr(getattr(ctx.study, "patient", None), "patient_id", None))
        except ConfigurationError as exc:
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
                try:
                    twin.observe(n, s, sr.time_h, sr.activity_MBq, cr.administered_MBq,
                                 activity_sd_MBq=sr.activity_sd_MBq, mass_g=sr.mass_g or None,
                                 dose_per_tia_Gy_per_MBq_h=dpt, ligand_nmol=ligand.get(n))
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

        estimates: dict[str, dict[str, Any]] = {}
        for (n, s), ob in sorted(twin.observations.items()):
            if len(ob.time_h) > cfg.sparse_max_points:
                continue
            est = twin.tia(n, s)
            d = {"tia_MBq_h": est.mean_MBq_h, "sd": est.sd_MBq_h, "low": est.low_MBq_h, "high": est.high_MBq_h,
                 "median": est.median_MBq_h, "level": est.level}
            res.cycles[n].structure(s).estimated_by_twin = d
            estimates.setdefault(str(n), {})[s] = est.to_dict()
        ctx.stage_progress(0.4, "twin: predicting")
        last = max(twin.observed_cycles)
        cycle = cfg.predict_cycle or last + 1
        activity = cfg.administered_MBq or res.cycles[last].administered_MBq
        pred = twin.predict(cycle, activity, n_draws=cfg.n_draws)
        out: dict[str, Any] = {
            "notice": RESEARCH_USE_NOTICE,
            "model": twin.summary(),
            "config": asdict(cfg),
            "estimates": estimates,
            "prediction": pred.to_dict(),
        }
        if pbpk_info is not None:
            out["pbpk"] = pbpk_info
        if cfg.horizon_cycle > cycle:
            traj = twin.predict(cfg.horizon_cycle, activity, n_draws=min(cfg.n_draws, 4000))
            out["trajectory"] = {"administered_MBq_per_future_cycle": activity,
                                 "cumulative_by_cycle": traj.to_dict()["cumulative_by_cycle"]}
        ctx.stage_progress(0.7, "twin: recommending")
        try:
            out["recommendation"] = twin.recommend_activity(
                cycle, cfg.limits, cfg.confidence, n_draws=cfg.n_draws, max_activity_MBq=cfg.max_activity_MBq,
                standard_activity_MBq=activity).to_dict()
        except ConfigurationError as exc:
            out["recommendation"] = None
            res.warn("twin", f"No activity recommendation: {exc}", severity="info")
        out["forecast"] = twin.forecast(cycle, activity, n_draws=cfg.n_draws)
        res.twin = out
        ctx.state["twin"] = twin
        if ctx.out_dir is not None:
            atomic_write(ctx.out_dir / "twin-state.json", twin.to_json())
            res.outputs["twin_state"] = "twin-state.json"
            out["state_file"] = "twin-state.json"
        res.record_method("twin", f"Bayesian mixed-effects patient twin ({twin.model_name}; MAP + Laplace)",
                          {"predict_cycle": cycle, "administered_MBq": activity, "confidence": cfg.confidence,
                           "n_draws": cfg.n_draws, "observed_cycles": twin.observed_cycles},
                          _REFERENCES)
        ctx.stage_progress(1.0, "twin: done")


STAGES.register("twin", TwinStage)
