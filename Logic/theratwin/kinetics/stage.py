"""Pipeline stage ``"kinetics"``: time-activity curves, TIA per structure and voxel, per cycle.

Needs the registration stage's ``state.aligned_spect``, ``state.masks`` and ``state.reference_grid``
(:class:`theratwin.pipeline.PipelineState`).
For every cycle and structure it fills the TAC and TIA fields of
:class:`~theratwin.results.StructureResult`; cycles imaged at a single time point get the prior-informed
single-time-point estimate from the same patient's earliest multi-time-point cycle (Hänscheid as the
fallback), and say so in ``tia_method`` and a warning. Voxel TIA maps go to
``results.maps["cycle{n}/tia"]`` (Bq.h/mL), ``"cycle{n}/tia_sd"`` and ``"cycle{n}/effective_half_life"``
(h, 0 where no exponential was fitted); the voxel fits to ``state.voxel_fits[n]``; the curve fits to
``state.tac_fits[n][structure]`` and the curves to ``state.tacs[n][structure]``.

Options (``PipelineConfig.stage_options["kinetics"]``) are the fields of :class:`KineticsConfig`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..errors import ConfigurationError, FitError, InvalidInputError
from ..options import parse_options
from ..pipeline.core import STAGES, PipelineContext
from ..results import map_name
from ..study import ImageVolume
from .fit import SELECTIONS, TacFit, describe_method, fit_tac
from .priors import KineticPriors
from .stp import StpEstimate, single_time_point_estimate
from .tac import (
    ActivityUncertaintyModel,
    GeometricTransferMatrix,
    RecoveryModel,
    StructureTac,
    rbv_correct,
    structure_tacs,
)
from .voxel import VoxelFit, fit_voxels

__all__ = ["KineticsConfig", "KineticsStage", "voxel_single_time_point"]

REFERENCES = [
    "Kletting P, et al. Molecular radiotherapy: the NUKFIT software for calculating the time-integrated "
    "activity coefficient. Med Phys 2013;40:102504.",
    "Burnham KP, Anderson DR. Model Selection and Multimodel Inference. 2nd ed. Springer; 2002.",
    "Gear JI, et al. EANM practical guidance on uncertainty analysis for molecular radiotherapy absorbed dose "
    "calculations. Eur J Nucl Med Mol Imaging 2018;45:2456-74.",
    "Hänscheid H, et al. Dose mapping after endoradiotherapy with 177Lu-DOTATATE/DOTATOC by a single "
    "measurement after 4 days. J Nucl Med 2018;59:75-81.",
    "Madsen MT, et al. Single time point dose estimate for exponential clearance. Med Phys 2018;45:2318-24.",
    "Siegel JA, et al. MIRD Pamphlet No. 16: techniques for quantitative radiopharmaceutical biodistribution "
    "data acquisition and analysis for use in human radiation dose estimates. J Nucl Med 1999;40:37S-61S.",
    "MacKay DJC. Information Theory, Inference, and Learning Algorithms. Cambridge University Press; 2003, "
    "ch. 27-28 (Laplace approximation of the evidence).",
    "Hoeting JA, Madigan D, Raftery AE, Volinsky CT. Bayesian model averaging: a tutorial. Stat Sci "
    "1999;14:382-417.",
]


@dataclass(frozen=True)
class KineticsConfig:
    """Options of the kinetics stage (``KineticsStage.Options``, parsed by :func:`~theratwin.options.parse_options`).

    Attributes
    ----------
    model
        Structure-level model (``"auto"`` = model selection with model averaging, see ``selection``, or a model
        name).
    candidates
        Models for ``"auto"`` (None: all selectable).
    selection
        ``"evidence"`` (prior-informed fits weighted by their Laplace evidence, default) or ``"aicc"``
        (least-squares fits, Akaike weights); see :func:`~theratwin.kinetics.fit_tac`.
    priors
        Overrides of the kinetic priors (fields of :class:`~theratwin.kinetics.priors.KineticPriors`, e.g.
        ``{"uptake_half_time_h": {"median": 0.5, "log_sd": 0.8}}``), used by the structure fits (``"evidence"``)
        and the voxel uptake phase. None: the built-in priors.
    voxel_fits, voxel_model, voxel_noise_model
        Whether to fit voxels, with which voxel model (``"hybrid"``, default: exponential tail through the last
        samples plus the early phase (uptake or fast component) from the first ones, see
        :func:`~theratwin.kinetics.fit_voxels`; ``"auto"`` (the same for >= 3 time points), ``"mono_exp"``,
        ``"trapezoid"``) and which noise model for the voxel SDs (``"poisson"``, ``"constant"``, ``"none"``).
    calibration_rel_sd, segmentation_rel_sd, random_rel_sd, counting
        Activity uncertainty components (:class:`~theratwin.kinetics.ActivityUncertaintyModel`).
    counts_per_MBq_s
        System sensitivity (counts/(MBq s)) for the counting-statistics component, used for time points that
        do not carry their own (``TimePoint.counts_per_MBq_s``); None: no counting component for them.
    pvc_method, system_fwhm_mm, pvc_max_volume_mL
        Partial-volume recovery of the structure TACs (``"gtm"``, default: geometric transfer matrix with local
        background shells; ``"mask"``, ``"sphere"``) (:class:`~theratwin.kinetics.RecoveryModel`; off while
        ``system_fwhm_mm`` is None, as DICOM does not carry the reconstructed resolution: set it from the camera's
        phantom measurements, e.g. ~11 mm for the demo patient).
    pvc_image
        Image-based partial-volume correction before the voxel fits: ``"none"`` (default; the dosimetry stage then
        corrects the structure doses for the resolution) or ``"rbv"`` (region-based voxel-wise correction,
        :func:`~theratwin.kinetics.tac.rbv_correct`). Needs ``system_fwhm_mm``.
    stp_method
        Single-time-point cycles: ``"prior"`` (earlier cycle of the same patient, Hänscheid when none) or
        ``"hanscheid"``.
    inter_cycle_variability
        Relative SD of the change of kinetics between cycles (``"prior"``).
    """

    model: str = "auto"
    candidates: list[str] | None = None
    selection: Literal["evidence", "aicc"] = "evidence"
    priors: dict[str, Any] | None = None
    voxel_fits: bool = True
    voxel_model: Literal["hybrid", "auto", "mono_exp", "trapezoid"] = "hybrid"
    voxel_noise_model: Literal["poisson", "constant", "none"] = "poisson"
    calibration_rel_sd: float = 0.05
    segmentation_rel_sd: float = 0.03
    random_rel_sd: float = 0.03
    counting: bool = True
    counts_per_MBq_s: float | None = None
    pvc_method: Literal["gtm", "mask", "sphere", "none"] = "gtm"
    system_fwhm_mm: float | None = None
    pvc_max_volume_mL: float | None = None
    pvc_image: Literal["none", "rbv"] = "none"
    stp_method: Literal["prior", "hanscheid"] = "prior"
    inter_cycle_variability: float = 0.10

    def __post_init__(self) -> None:
        if self.stp_method not in ("prior", "hanscheid"):
            raise ConfigurationError(f"stp_method must be 'prior' or 'hanscheid'; got {self.stp_method!r}.")
        if self.selection not in SELECTIONS:
            raise ConfigurationError(f"selection must be one of {SELECTIONS}; got {self.selection!r}.")
        KineticPriors.from_dict(self.priors)  # unknown or invalid priors fail here, not in the middle of a run
        if self.pvc_image not in ("none", "rbv"):
            raise ConfigurationError(f"pvc_image must be 'none' or 'rbv'; got {self.pvc_image!r}.")




_VOXEL_METHODS = {
    "hybrid": "exponential tail through the last three scans (the last two of three), analytic to infinity; before it the "
              "uptake-washout model through the early scans (MAP with the uptake half-time prior) weighted against "
              "uptake complete before the first scan by their evidence, or, for a fast early component, "
              "log-trapezoids (MIRD 16)",
    "mono_exp": "mono-exponential through all scans",
    "trapezoid": "trapezoid from A(0) = 0 with a physical-decay tail (fallback: never-decreasing or failed voxels)",
}


def _method_record(res: Any) -> tuple[str, dict[str, Any]]:
    """What the stage did, from the results themselves: a short text (structure TIA methods with counts as the
    first clause, which the SR repeats on every measurement; voxel methods per cycle with voxel counts; the RT Dose
    derivation repeats it within its 1024 characters) and, for the parameters, what each method means."""
    used: dict[str, int] = {}
    for c in res.cycles.values():
        for sr in c.structures.values():
            if sr.tia_method:
                used[sr.tia_method] = used.get(sr.tia_method, 0) + 1
    parts = ["Structure TIAs: " + (", ".join(f"{m} ({k})" for m, k in sorted(used.items())) or "none")]
    voxel_used: set[str] = set()
    for n, vs in sorted(res.extras.get("voxel_fits", {}).items()):
        if vs.get("method") == "single_time_point":
            parts.append(f"voxel TIAs cycle {n}: single time point, prior-cycle curve shape ({vs.get('voxels_prior', 0)}"
                         f" voxels), Hanscheid ({vs.get('voxels_hanscheid', 0)} voxels)")
            continue
        counts = {k: v for k, v in (vs.get("voxels_per_model") or {}).items() if k != "none" and v}
        voxel_used.update(counts)
        parts.append(f"voxel TIAs cycle {n}: " + ", ".join(f"{k} ({v} voxels)" for k, v in counts.items()))
    parts.append("TACs from registered quantitative SPECT and fractional masks; TIA 0-infinity analytic, "
                 "delta-method (Laplace) SD plus correlated calibration/segmentation components")
    descriptions = {m: describe_method(m) for m in sorted(used)}
    descriptions.update({f"voxel {k}": _VOXEL_METHODS.get(k, k) for k in sorted(voxel_used)})
    return "; ".join(parts), descriptions


#: Largest factor by which a voxel's activity scale (measured / prior curve at the scan time) may differ from the
#: patient's overall scale for the prior curve shape to be used there (else Hänscheid, see
#: :func:`voxel_single_time_point`).
MAX_SCALE_CHANGE = 5.0


def voxel_single_time_point(time_h: float, concentration_Bq_per_mL: np.ndarray, prior: VoxelFit | None, *,
                            inter_cycle_variability: float = 0.10, prior_time_h: Any = None,
                            prior_concentration_Bq_per_mL: Any = None,
                            pool_radius_voxels: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel TIA (Bq·h/mL) from one scan: per voxel, the prior cycle's curve shape, Hänscheid (``C 2t/ln2``)
    where the prior has no exponential fit.

    With the prior's voxel TIA ``TIA_1`` and its fitted (tail) curve ``C_1(t) = C0 exp(-lambda t)``, the estimate
    is ``TIA = C(t) TIA_1 / C_1(t)``: the curve keeps its shape between cycles and only its scale changes, the
    assumption of the prior-informed single-time-point methods. For a mono-exponential prior this is exactly
    ``C exp(lambda t) / lambda`` (Madsen et al. 2018 with the patient's own lambda); for the hybrid voxel model
    (:func:`~theratwin.kinetics.fit_voxels`, ``model="hybrid"``) it also carries the early phase of the prior
    curve (uptake, fast component) that ``exp(lambda t)/lambda`` of the tail alone would miss.

    With the prior's samples (``prior_time_h`` (T,), ``prior_concentration_Bq_per_mL`` (T, Z, Y, X), the series
    the prior was fitted to), ``C_1(t)`` is the fitted tail rescaled to the sample nearest in time to ``t``:
    factor = sum of that sample / sum of the tail fit at its time over the ``(2r+1)^3`` neighbourhood of fitted
    voxels (a ratio of sums, so voxel noise hardly biases it). A mono-exponential tail through three samples of
    a bi-exponential curve (blood, red marrow) misses the middle sample by 5-10 %; on the demo patient this
    moves the cycle-2 body and red-marrow TIAs from 0.92 / 0.90 to 0.97 / 1.01 of the truth.

    Voxels whose scale ``C(t) / C_1(t)`` differs from the patient's overall scale by more than
    :data:`MAX_SCALE_CHANGE` (a prior curve that has vanished by ``t``, so that ``C(t)`` is mostly noise, or a
    redistribution the prior cannot describe) get Hänscheid's estimate.

    Returns ``(tia, tia_sd, method_map)`` with method_map 1 = prior curve, 2 = Hänscheid, 0 = no activity.
    """
    c = np.asarray(concentration_Bq_per_mL, dtype=np.float64)
    t = float(time_h)
    tia = c * 2.0 * t / math.log(2.0)  # Hänscheid et al. 2018
    # Hänscheid without kinetic knowledge: ~10 % method uncertainty within its validity range
    rel = np.full(c.shape, math.hypot(0.10, inter_cycle_variability))
    method = np.where(c > 0, 2, 0).astype(np.uint8)
    if prior is not None:
        lam = prior.lambda_eff_per_h.astype(np.float64)
        lam_sd = prior.lambda_eff_sd_per_h.astype(np.float64)
        c0_prior = prior.c0_Bq_per_mL.astype(np.float64)
        tia_prior = prior.tia_Bq_h_per_mL.astype(np.float64)
        ok = np.isfinite(lam) & (lam > 0) & (c > 0) & np.isfinite(c0_prior) & (c0_prior > 0) & (tia_prior > 0)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            c1_t = c0_prior * np.exp(-lam * t)
            if prior_time_h is not None and prior_concentration_Bq_per_mL is not None:
                c1_t = c1_t * _nearest_sample_factor(t, prior, np.asarray(prior_time_h, dtype=np.float64),
                                                     np.asarray(prior_concentration_Bq_per_mL), pool_radius_voxels)
            # TIA_1 / C_1(t): integral of the prior curve per unit concentration at the scan time (h)
            tia_p = c * tia_prior / c1_t
            # dTIA/dlambda = TIA (t - 1/lambda)
            rel_p = np.sqrt(inter_cycle_variability**2 + ((t - 1.0 / lam) * np.nan_to_num(lam_sd)) ** 2)
        ok &= np.isfinite(tia_p) & np.isfinite(rel_p)
        # The curve-shape assumption only changes the scale between cycles. A voxel whose scale c / C_1(t) is far
        # from the patient's overall one holds a prior curve that has all but vanished by t (fast washout: its
        # C_1(t) is tiny and the measured c mostly noise, so c / C_1(t) explodes) or a redistribution the prior
        # cannot describe; Hänscheid is used there (a cohort patient scanned at 98 h after a 71 h cycle-1 sample
        # gave bladder and body voxel TIAs 10^3-10^5 times too high without this guard).
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = c / c1_t
        if ok.any():
            overall = float(np.sum(c[ok]) / np.sum(c1_t[ok]))
            ok &= (scale >= overall / MAX_SCALE_CHANGE) & (scale <= overall * MAX_SCALE_CHANGE)
        tia = np.where(ok, tia_p, tia)
        rel = np.where(ok, rel_p, rel)
        method = np.where(ok, 1, method).astype(np.uint8)
    tia = np.where(c > 0, tia, 0.0)
    return tia.astype(np.float32), (np.abs(tia) * rel).astype(np.float32), method


def _nearest_sample_factor(t: float, prior: VoxelFit, time_h: np.ndarray, series: np.ndarray,
                           radius: int) -> np.ndarray:
    """Neighbourhood ratio (sum of the measured sample nearest to ``t``) / (sum of the fitted tail at its time)."""
    from scipy.ndimage import uniform_filter

    if series.ndim != 4 or series.shape[0] != time_h.size or series.shape[1:] != prior.c0_Bq_per_mL.shape:
        raise InvalidInputError(f"prior_concentration_Bq_per_mL must be (T, Z, Y, X) = ({time_h.size}, "
                                f"{prior.c0_Bq_per_mL.shape}); got {series.shape}.")
    k = int(np.argmin(np.abs(time_h - t)))
    with np.errstate(over="ignore", invalid="ignore"):
        fitted = prior.c0_Bq_per_mL.astype(np.float64) * np.exp(-prior.lambda_eff_per_h.astype(np.float64)
                                                                  * time_h[k])
    sample = np.asarray(series[k], dtype=np.float64)
    valid = np.isfinite(fitted) & (fitted > 0) & np.isfinite(sample)
    size = 2 * int(radius) + 1
    num = uniform_filter(np.where(valid, sample, 0.0).astype(np.float32), size=size, mode="constant")
    den = uniform_filter(np.where(valid, fitted, 0.0).astype(np.float32), size=size, mode="constant")
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(den > 0, num / den, 1.0)
    return np.where(np.isfinite(factor) & (factor > 0), factor, 1.0)


class KineticsStage:
    """Fits the kinetics of every structure and voxel (see the module docstring)."""

    name = "kinetics"
    requires: tuple[str, ...] = ("registration",)
    Options = KineticsConfig

    def run(self, ctx: PipelineContext) -> None:
        """Fit each structure's TAC and each voxel's kinetics per cycle (see the module docstring).

        Raises
        ------
        InvalidInputError
            The registration stage's aligned SPECT, masks or reference grid are missing.
        """
        cfg = parse_options(self.Options, ctx.config.options(self.name), stage=self.name)
        study, res, state = ctx.study, ctx.results, ctx.state
        grid, masks, aligned = state.reference_grid, state.masks, state.aligned_spect
        if grid is None or masks is None or aligned is None:
            missing = [k for k, v in (("aligned_spect", aligned), ("masks", masks), ("reference_grid", grid))
                       if v is None]
            raise InvalidInputError(f"The kinetics stage needs the registration stage's {', '.join(missing)} "
                                    "(PipelineState); run the registration stage before it.")
        unc = ActivityUncertaintyModel(cfg.calibration_rel_sd, cfg.segmentation_rel_sd, cfg.random_rel_sd,
                                       cfg.counting)
        rec = RecoveryModel(cfg.pvc_method if cfg.system_fwhm_mm else "none", cfg.system_fwhm_mm,
                            cfg.pvc_max_volume_mL)
        volumes, masses = self._volumes_and_masses(ctx)
        seg = study.segmentation
        body_name = next((s.name for s in seg.structures if s.role.value == "body"), None) if seg else None
        image_pvc = cfg.pvc_image != "none" and cfg.system_fwhm_mm is not None
        if cfg.pvc_image != "none" and not image_pvc:
            res.warn("kinetics", f"pvc_image='{cfg.pvc_image}' needs system_fwhm_mm; no image correction applied.")
        # what the dosimetry stage must know: the resolution still in the voxel TIA maps, and how TACs were recovered
        state.partial_volume = {"system_fwhm_mm": cfg.system_fwhm_mm, "structure_method": rec.method,
                                "image_method": cfg.pvc_image if image_pvc else "none",
                                "voxel_map_fwhm_mm": 0.0 if image_pvc else cfg.system_fwhm_mm}
        tacs_all: dict[int, dict[str, StructureTac]] = {}
        fits_all: dict[int, dict[str, TacFit | StpEstimate]] = {}
        voxel_all: dict[int, VoxelFit] = {}
        pvc_all: dict[int, list[ImageVolume]] = {}
        state.voxel_fits, state.aligned_spect_pvc = voxel_all, pvc_all
        prior_cycle: int | None = None
        n_cyc = len(study.cycles)
        for ci, cycle in enumerate(study.cycles):
            n = cycle.number
            ctx.stage_progress(ci / n_cyc, f"kinetics of cycle {n}")
            images = aligned[n]
            if not images:
                res.warn("kinetics", f"Cycle {n} has no imaging; no TIA computed.", cycle=n)
                continue
            times = np.asarray(cycle.times_h, float)
            adm = cycle.administration
            tacs = structure_tacs(
                images, masks, times,
                acquisition_duration_s=[tp.acquisition_duration_s for tp in cycle.time_points],
                counts_per_MBq_s=[tp.counts_per_MBq_s or cfg.counts_per_MBq_s for tp in cycle.time_points],
                uncertainty=unc, recovery=rec, body=body_name,
            )
            tacs_all[n] = tacs
            fits_all[n] = {}
            cres = res.cycles[n]
            multi = times.size >= 2
            for name, tac in tacs.items():
                sr = cres.structure(name)
                sr.time_h = [float(v) for v in tac.time_h]
                sr.activity_MBq = [float(v) for v in tac.activity_MBq]
                sr.activity_sd_MBq = [float(v) for v in tac.activity_sd_MBq]
                sr.volume_mL = volumes.get(name, tac.volume_mL)
                sr.mass_g = masses.get(name)
                for note in tac.notes:
                    res.warn("kinetics", note, structure=name, cycle=n, severity="info")
                if multi:
                    self._fit_structure(res, cfg, tac, sr, n, adm.nuclide, fits_all)
                else:
                    prior = None
                    if cfg.stp_method == "prior" and prior_cycle is not None:
                        prior = fits_all.get(prior_cycle, {}).get(name)
                    self._stp_structure(res, cfg, tac, sr, n, adm.nuclide, prior, prior_cycle, fits_all)
                if sr.tia_MBq_h is not None:
                    sr.residence_time_h = sr.tia_MBq_h / adm.activity_MBq  # MBq.h / MBq = h
            if multi and prior_cycle is None:
                prior_cycle = n
            if cfg.voxel_fits:
                if image_pvc:
                    assert cfg.system_fwhm_mm is not None
                    gtm = GeometricTransferMatrix.cached(masks, grid.spacing_mm, cfg.system_fwhm_mm,
                                                         body=body_name if body_name in masks else None)
                    images = [ImageVolume.from_geometry(rbv_correct(im.array, gtm), im.geometry, im.unit)
                              for im in images]
                    pvc_all[n] = images
                self._voxels(ctx, cfg, n, times, images, grid, adm.nuclide, voxel_all, prior_cycle)
        state.tacs = tacs_all
        state.tac_fits = fits_all
        text, descriptions = _method_record(res)
        res.record_method("kinetics", text, {**dataclasses.asdict(cfg), "method_descriptions": descriptions},
                          REFERENCES)
        ctx.stage_progress(1.0, "kinetics done")

    # ------------------------------------------------------------------------------------------------
    def _volumes_and_masses(self, ctx: PipelineContext) -> tuple[dict[str, float], dict[str, float]]:
        """Structure volumes (mL) from the segmentation and masses (g) from the reference CT density."""
        seg = ctx.study.segmentation
        vols: dict[str, float] = {}
        masses: dict[str, float] = {}
        if seg is None:
            return vols, masses
        ct = ctx.study.reference_ct
        for s in seg.structures:
            v = seg.volume_mL(s.name)
            vols[s.name] = v
            rho = 1.0
            if ct is not None and seg.masks[s.name].any():
                fm = seg.fractional_mask(s.name, ct.geometry)
                if fm.sum() > 0:
                    hu = float(np.sum(fm * ct.array) / np.sum(fm))
                    # linear air-water density line rho = 1 + HU/1000 g/mL, adequate for soft tissue
                    # (a full HU-density calibration: Schneider et al. 2000 Phys Med Biol 45:459)
                    rho = min(max(1.0 + hu / 1000.0, 0.0), 3.0)
            masses[s.name] = v * rho
        return vols, masses

    def _fit_structure(self, res: Any, cfg: KineticsConfig, tac: StructureTac, sr: Any, n: int, nuclide: str,
                       fits_all: dict[int, dict[str, Any]]) -> None:
        name = tac.structure
        try:
            fit = fit_tac(tac.time_h, tac.activity_MBq, nuclide=nuclide, model=cfg.model,
                          activity_sd_MBq=np.maximum(tac.activity_sd_random_MBq,
                                                     1e-9 * max(float(np.max(tac.activity_MBq)), 1e-12)),
                          candidates=cfg.candidates, selection=cfg.selection,
                          priors=KineticPriors.from_dict(cfg.priors))
        except (FitError, InvalidInputError) as exc:
            res.warn("kinetics", f"No TIA: {exc}", structure=name, cycle=n, severity="error")
            return
        fits_all[n][name] = fit
        # correlated components scale all samples together: they go straight onto the TIA (Gear et al. 2018)
        sd = math.hypot(fit.tia_sd_MBq_h, tac.systematic_rel_sd * fit.tia_MBq_h) \
            if math.isfinite(fit.tia_sd_MBq_h) else float("nan")
        sr.tia_MBq_h = float(fit.tia_MBq_h)
        sr.tia_sd_MBq_h = float(sd) if math.isfinite(sd) else None
        sr.tia_method = fit.method
        sr.kinetic_model = fit.model
        sr.kinetic_params = {k: float(v) for k, v in fit.params.items()}
        sr.model_weights = {k: float(v) for k, v in fit.model_weights.items()}
        sr.effective_half_life_h = float(fit.effective_half_life_h)
        q = {k: float(v) for k, v in fit.fit_quality.items() if v is not None and math.isfinite(v)}
        q["tia_fit_sd_MBq_h"] = float(fit.tia_sd_MBq_h)
        q["systematic_rel_sd"] = tac.systematic_rel_sd
        q["recovery_coefficient"] = tac.recovery_coefficient
        sr.fit_quality = q
        for note in fit.notes:
            if note.startswith("Models not considered"):
                continue  # the same for every structure of the cycle: reported once per cycle (run)
            res.warn("kinetics", note, structure=name, cycle=n,
                     severity="warning" if fit.fallback else "info")
        skipped = [nt for nt in fit.notes if nt.startswith("Models not considered")]
        if skipped and not any(w.stage == "kinetics" and w.cycle == n and w.structure is None
                               and w.message == skipped[0] for w in res.warnings):
            res.warn("kinetics", skipped[0], cycle=n, severity="info")

    def _stp_structure(self, res: Any, cfg: KineticsConfig, tac: StructureTac, sr: Any, n: int, nuclide: str,
                       prior: Any, prior_cycle: int | None, fits_all: dict[int, dict[str, Any]]) -> None:
        name = tac.structure
        t, a = float(tac.time_h[0]), float(tac.activity_MBq[0])
        sd_a = float(tac.activity_sd_random_MBq[0])
        est = None
        if prior is not None and hasattr(prior, "predict"):
            try:
                est = single_time_point_estimate(t, a, nuclide, "prior", prior=prior, activity_sd_MBq=sd_a,
                                                 inter_cycle_variability=cfg.inter_cycle_variability)
                rescaled = "" if est.rescale_time_h is None else (
                    f", rescaled to its sample at {est.rescale_time_h:.1f} h (measured/fitted "
                    f"{est.rescale_factor:.3f})")
                res.warn("kinetics", f"Single time point (t = {t:.1f} h): TIA from the measurement and the "
                         f"curve shape of cycle {prior_cycle}{rescaled} (prior-informed).", structure=name, cycle=n,
                         severity="info")
            except InvalidInputError as exc:
                res.warn("kinetics", f"Prior-informed single-time-point estimate impossible ({exc}).",
                         structure=name, cycle=n)
        if est is None:
            est = single_time_point_estimate(t, a, nuclide, "hanscheid", activity_sd_MBq=sd_a)
            why = "no earlier multi-time-point cycle" if cfg.stp_method == "prior" else "configured"
            res.warn("kinetics", f"Single time point (t = {t:.1f} h): Hänscheid approximation used ({why}); "
                     "valid for scans near 0.76-2.44 effective half-lives.", structure=name, cycle=n)
        fits_all[n][name] = est
        sd = math.hypot(est.tia_sd_MBq_h, tac.systematic_rel_sd * est.tia_MBq_h)
        sr.tia_MBq_h = float(est.tia_MBq_h)
        sr.tia_sd_MBq_h = float(sd)
        sr.tia_method = est.method if est.method == "hanscheid" else f"stp:{est.method}"
        if est.method == "prior" and prior is not None:
            sr.kinetic_model = getattr(prior, "model", None)
            sr.effective_half_life_h = float(prior.effective_half_life_h)
        sr.fit_quality = {"n_points": 1.0, "systematic_rel_sd": tac.systematic_rel_sd,
                          "recovery_coefficient": tac.recovery_coefficient}
        if est.rescale_time_h is not None:
            sr.fit_quality["prior_rescale_factor"] = float(est.rescale_factor)
            sr.fit_quality["prior_rescale_time_h"] = float(est.rescale_time_h)

    def _voxels(self, ctx: PipelineContext, cfg: KineticsConfig, n: int, times: np.ndarray,
                images: list[ImageVolume], grid: Any, nuclide: str, voxel_all: dict[int, VoxelFit],
                prior_cycle: int | None) -> None:
        res = ctx.results
        body = ctx.state.body_mask
        if times.size >= 2:
            series = np.stack([np.asarray(im.array, dtype=np.float32) for im in images])
            vf = fit_voxels(times, series, nuclide=nuclide, model=cfg.voxel_model, mask=body,
                            noise_model=cfg.voxel_noise_model, priors=KineticPriors.from_dict(cfg.priors))
            voxel_all[n] = vf
            tia, tia_sd = vf.tia_Bq_h_per_mL, vf.tia_sd_Bq_h_per_mL
            unknown = ~np.isfinite(tia_sd)
            if unknown.any():
                tia_sd = np.where(unknown, 0.0, tia_sd).astype(np.float32)
                res.warn("kinetics", f"Cycle {n}: the TIA SD of {int(unknown.sum())} voxels cannot be estimated "
                         f"from {times.size} time points; set to 0 in the map '{map_name(n, 'tia_sd')}' "
                         "(unknown, not zero).", cycle=n)
            thalf = np.nan_to_num(vf.effective_half_life_h, nan=0.0).astype(np.float32)
            res.maps[map_name(n, "effective_half_life")] = ImageVolume.from_geometry(thalf, grid, "h")
            summary = vf.summary()
            res.extras.setdefault("voxel_fits", {})[str(n)] = summary
        else:
            prior = voxel_all.get(prior_cycle) if (prior_cycle is not None and cfg.stp_method == "prior") else None
            c = np.asarray(images[0].array, dtype=np.float32)
            if body is not None:
                c = np.where(body, c, 0.0)
            prior_series = prior_times = None
            if prior is not None and prior_cycle is not None:
                prior_times = prior.time_h
                aligned = ctx.state.aligned_spect or {}
                pvc = ctx.state.aligned_spect_pvc or {}
                prior_series = np.stack([np.asarray(im.array, dtype=np.float32)
                                         for im in pvc.get(prior_cycle, aligned[prior_cycle])])
            tia, tia_sd, method = voxel_single_time_point(float(times[0]), c, prior,
                                                          inter_cycle_variability=cfg.inter_cycle_variability,
                                                          prior_time_h=prior_times,
                                                          prior_concentration_Bq_per_mL=prior_series)
            res.extras.setdefault("voxel_fits", {})[str(n)] = {
                "method": "single_time_point", "prior_cycle": prior_cycle,
                "voxels_prior": int((method == 1).sum()), "voxels_hanscheid": int((method == 2).sum())}
        res.maps[map_name(n, "tia")] = ImageVolume.from_geometry(np.asarray(tia, np.float32), grid, "Bq.h/mL")
        res.maps[map_name(n, "tia_sd")] = ImageVolume.from_geometry(np.asarray(tia_sd, np.float32), grid, "Bq.h/mL")


STAGES.register("kinetics", KineticsStage, replace=True)
