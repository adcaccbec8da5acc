"""Pipeline stage "dosimetry": dose maps per cycle, per-structure mean dose, DVH and S-value comparison.

Reads ``results.maps["cycle{n}/tia"]`` (Bq·h/mL on the reference grid, from the kinetics stage), the
reference CT (density correction) and the structure masks; writes ``results.maps["cycle{n}/dose"]`` (Gy) and,
per cycle and structure, ``mean_dose_Gy``, ``mean_dose_sd_Gy``, ``dose_per_activity_Gy_per_GBq``,
``dose_method``, ``dvh``, ``dvh_metrics``, ``organ_s_value_dose_Gy``, ``volume_mL`` and ``mass_g``. With the CT
density correction, ``mass_g`` is the segmentation x the calibrated density (``hu_density_points``), replacing the
kinetics stage's ``1 + HU/1000`` estimate (6 % high for spongiosa); the organ S-value dose and the twin use it.

Partial-volume correction (option ``partial_volume="local_model"``, on whenever the kinetics stage knows the
system resolution, see :mod:`~theratwin.dosimetry.partial_volume`): each structure's mean dose becomes the dose of
its recovery-corrected TIA (``mean_dose_as_imaged_Gy`` keeps the map's own value, ``cycle{n}/dose_as_imaged`` the
uncorrected map) and ``partial_volume`` records the correction, the recovery coefficient and whether the
structure is below ``(2 x FWHM)^3``, too small to be trusted (flagged in the SR, FHIR and the report). The dose
SD is the TIA's relative SD without the activity's recovery component (which the dose map never had) plus 25 %
of the dose correction actually applied.

Options (``PipelineConfig.stage_options["dosimetry"]``, see :class:`DosimetryOptions`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from ..errors import ConfigurationError, InvalidInputError
from ..options import parse_options, suggest
from ..pipeline.core import STAGES, PipelineContext
from ..progress import scaled
from ..results import map_name
from ..study import Geometry, ImageVolume
from ._physics import DEFAULT_HU_DENSITY_POINTS, hu_to_density
from .dose import DOSE_ENGINES, dose_map
from .dvh import DEFAULT_VX_GY, dvh
from .masks import area_average, covered_fractions, masked_area_average
from .partial_volume import LocalModel, box_around, core_scaling, local_model_energies
from .svalues import organ_self_s_value, sphere_s_value

__all__ = ["DosimetryOptions", "DosimetryStage", "structure_masks", "density_on_grid", "structure_mass_weights"]


@dataclass(frozen=True)
class DosimetryOptions:
    """Settings of the dosimetry stage (``DosimetryStage.Options``, parsed by :func:`~theratwin.options.parse_options`).

    Attributes
    ----------
    method
        Dose engine name in ``DOSE_ENGINES`` (``"dvk"``, ``"led"`` or a plug-in).
    engine_options
        Keyword arguments for the engine's constructor (e.g. ``{"radius_voxels": 12}``).
    density_correction
        Use the reference CT (HU -> density) for the dose; False: water everywhere.
    hu_density_points
        ``[(HU, g/mL), ...]`` CT calibration (default: :data:`DEFAULT_HU_DENSITY_POINTS`).
    dvh_bin_width_Gy, dvh_max_bins
        DVH binning (default 0.01 Gy, coarser only when that would need more than ``dvh_max_bins`` bins).
    vx_Gy
        Dose levels of the V_x metrics.
    partial_volume
        ``"local_model"`` (default; used when the system resolution is known, see the module docstring) or
        ``"none"`` (the map's mean doses as they are).
    too_small_factor
        Structures whose largest part is below ``(too_small_factor x FWHM)^3`` are flagged (default 2).
    """

    method: str = "dvk"
    engine_options: dict[str, Any] = field(default_factory=dict)
    density_correction: bool = True
    hu_density_points: list[tuple[float, float]] | None = None
    dvh_bin_width_Gy: float | None = None
    dvh_max_bins: int = 2000
    vx_Gy: tuple[float, ...] = DEFAULT_VX_GY
    partial_volume: Literal["local_model", "none"] = "local_model"
    too_small_factor: float = 2.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "vx_Gy", tuple(float(v) for v in self.vx_Gy))
        if self.partial_volume not in ("local_model", "none"):
            raise ConfigurationError(
                f"dosimetry option 'partial_volume' must be 'local_model' or 'none'; got {self.partial_volume!r}.")
        if not self.too_small_factor > 0:
            raise ConfigurationError(f"dosimetry option 'too_small_factor' must be > 0; got {self.too_small_factor!r}.")
        if self.method not in DOSE_ENGINES:
            hint = suggest(self.method, DOSE_ENGINES.names()) if isinstance(self.method, str) else None
            raise ConfigurationError(
                f"Unknown dose engine '{self.method}' (dosimetry option 'method')"
                + (f" (did you mean '{hint}'?)" if hint else "") + f"; available: {DOSE_ENGINES.names()}."
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DosimetryOptions:
        """The options from a plain mapping (:func:`~theratwin.options.parse_options` with ``stage="dosimetry"``)."""
        return parse_options(cls, d, stage="dosimetry")


def _reference_grid(ctx: PipelineContext) -> Geometry | None:
    grid = ctx.state.reference_grid
    if grid is not None:
        return grid
    for c in ctx.study.cycles:
        vol = ctx.results.maps.get(map_name(c.number, "tia"))
        if vol is not None:
            return vol.geometry
    return None


def structure_masks(ctx: PipelineContext, grid: Geometry) -> dict[str, np.ndarray]:
    """Fractional (0..1, float32) masks of the study's structures on ``grid``.

    Uses ``ctx.state.masks`` (from registration) when present, else the covered fraction of each dose voxel
    computed from the segmentation (:func:`covered_fractions`).
    """
    masks = ctx.state.masks
    if masks:
        return {k: np.asarray(v, dtype=np.float32) for k, v in masks.items()}
    seg = ctx.study.segmentation
    if seg is None:
        return {}
    return covered_fractions(seg, grid)


def density_on_grid(ct: ImageVolume | None, grid: Geometry,
                    points: list[tuple[float, float]] | tuple[tuple[float, float], ...] | None = None) -> np.ndarray | None:
    """Mass density (g/mL) on ``grid`` from a CT in HU, or None without CT.

    HU are converted to density on the CT's own grid and the density is then averaged over each voxel of
    ``grid`` (:func:`area_average`): mass is additive, HU through a bilinear calibration are not. Air
    (0.0012 g/mL) outside the CT.
    """
    if ct is None:
        return None
    pts = tuple(tuple(p) for p in points) if points else DEFAULT_HU_DENSITY_POINTS
    rho_ct = hu_to_density(ct.array, pts)  # type: ignore[arg-type]
    return np.clip(area_average(rho_ct, ct.geometry, grid, fill=0.0012), 0.0012, None).astype(np.float32)


def structure_mass_weights(ctx: PipelineContext, grid: Geometry, masks: dict[str, np.ndarray],
                           density: np.ndarray | None,
                           points: list[tuple[float, float]] | None) -> dict[str, np.ndarray]:
    """Mass (g/mL of dose voxel) of each structure in each dose voxel: the average of mask x density over the
    voxel, from the segmentation and the CT on their own fine grid when both exist (so a lesion voxel shared
    with cortical bone counts the lesion's density, not the voxel's mean density), else mask x voxel density.
    Each structure is averaged within its bounding box only."""
    seg = ctx.study.segmentation
    ct = ctx.study.reference_ct
    out: dict[str, np.ndarray] = {}
    rho_seg = None
    if seg is not None and ct is not None and density is not None:
        pts = tuple(tuple(p) for p in points) if points else DEFAULT_HU_DENSITY_POINTS
        hu = ct.array if ct.geometry.same_grid(seg.geometry) else \
            ct.resample_to(seg.geometry, order=1, fill=-1000.0).array
        rho_seg = hu_to_density(hu, pts)  # type: ignore[arg-type]
    for name, m in masks.items():
        if rho_seg is not None and seg is not None and name in seg.names:
            out[name] = masked_area_average(seg.masks[name], rho_seg, seg.geometry, grid)
        else:
            out[name] = m * (density if density is not None else np.float32(1.0))
    return out


@dataclass
class _PartialVolumeSetup:
    """What the partial-volume correction of a run needs (see :meth:`DosimetryStage._pv_setup`)."""

    system_fwhm_mm: float
    map_fwhm_mm: float
    sigma_voxels: list[float]
    body: str | None
    gtm: Any
    engine_options: dict[str, Any]


class DosimetryStage:
    """The "dosimetry" stage (see the module docstring)."""

    name = "dosimetry"
    requires: tuple[str, ...] = ("kinetics",)
    Options = DosimetryOptions

    def run(self, ctx: PipelineContext) -> None:
        """Compute each cycle's dose map (Gy) with the chosen engine and the per-structure mean dose, DVH
        and S-value comparison (see the module docstring)."""
        opts = parse_options(self.Options, ctx.config.options(self.name), stage=self.name)
        res = ctx.results
        grid = _reference_grid(ctx)
        if grid is None:
            res.warn("dosimetry", "No TIA map and no reference grid: nothing to compute (did kinetics run?).")
            return
        density = None
        if opts.density_correction:
            density = density_on_grid(ctx.study.reference_ct, grid, opts.hu_density_points)
            if density is None:
                res.warn("dosimetry", "No reference CT: doses computed for water (1 g/mL) everywhere.",
                         severity="info")
        masks = structure_masks(ctx, grid)
        mass_weights = structure_mass_weights(ctx, grid, masks, density, opts.hu_density_points)
        ctx.state.dose_masks = masks
        ctx.state.density_g_per_mL = density
        seg = ctx.study.segmentation
        entry = DOSE_ENGINES.get(opts.method)
        engine_desc = getattr(entry, "description", opts.method)
        voxel_mL = grid.voxel_volume_mL
        pv = self._pv_setup(ctx, opts, grid, masks)
        flags: dict[str, dict[str, Any]] = {}
        cycles = [c for c in ctx.study.cycles if map_name(c.number, "tia") in res.maps]
        for c in ctx.study.cycles:
            if map_name(c.number, "tia") not in res.maps:
                res.warn("dosimetry", f"No TIA map for cycle {c.number}; no dose computed.", cycle=c.number)
        for i, c in enumerate(cycles):
            n = c.number
            nuclide = c.administration.nuclide
            tia_vol = res.maps[map_name(n, "tia")]
            if not tia_vol.geometry.same_grid(grid):
                tia_vol = tia_vol.resample_to(grid, order=1)
            prog = scaled(ctx.stage_progress, i / len(cycles), (i + 1) / len(cycles))
            dose = dose_map(tia_vol.array, grid.spacing_mm, nuclide, method=opts.method,
                            density_g_per_mL=density, progress=prog, **opts.engine_options)
            cyc = res.cycles[n]
            present = {name: m for name, m in masks.items() if np.any(m > 0)}
            for name in masks:
                if name not in present:
                    res.warn("dosimetry", f"Structure '{name}' has no voxel on the dose grid.", structure=name, cycle=n)
            # the map's own (as imaged) mass-weighted mean per structure
            as_imaged = {name: self._mean(dose, m, mass_weights[name]) for name, m in present.items()}
            corrected: dict[str, float] = dict(as_imaged)
            records: dict[str, dict[str, float]] = {}
            if pv is not None:
                corrected, records = self._correct(ctx, opts, pv, grid, tia_vol.array, dose, present, mass_weights,
                                                   density, nuclide, n, as_imaged)
            if records:
                factor = np.ones(dose.shape, np.float32)
                best = np.zeros(dose.shape, np.float32)
                # smaller structures first: where two share a voxel, the one covering more of it sets the factor
                for name in sorted(records, key=lambda k: float(present[k].sum())):
                    f = core_scaling(dose, present[name], mass_weights[name], corrected[name])
                    if f is None:
                        res.warn("dosimetry", f"Partial-volume correction of '{name}' cannot be mapped onto its "
                                 "voxels; its voxel doses are as imaged.", structure=name, cycle=n)
                        continue
                    sel = (f != 1.0) & (present[name] > best)
                    factor[sel] = f[sel]
                    best[sel] = present[name][sel]
                res.maps[map_name(n, "dose_as_imaged")] = ImageVolume.from_geometry(dose, grid, "Gy")
                dose = (dose * factor).astype(np.float32)
            res.maps[map_name(n, "dose")] = ImageVolume.from_geometry(dose, grid, "Gy")
            as_imaged_map = res.maps.get(map_name(n, "dose_as_imaged")) if records else None
            for name, m in present.items():
                sr = cyc.structure(name)
                mw = mass_weights[name]
                # density per covered volume, so that mask x density = the structure's mass in the voxel
                rho_s = np.where(m > 0, mw / np.maximum(m, 1e-6), 0.0) if density is not None else None
                # uncorrected structures (the body) keep the map's own doses: the corrected map adds the structures'
                # restored self-dose but still holds what the blur spread around them
                src = dose if (name in records or as_imaged_map is None) else as_imaged_map.array
                h = dvh(src, m, voxel_volume_mL=voxel_mL, bin_width_Gy=opts.dvh_bin_width_Gy,
                        max_bins=opts.dvh_max_bins, vx_Gy=opts.vx_Gy, density_g_per_mL=rho_s)
                mass_g = float(np.sum(mw, dtype=np.float64) * voxel_mL)
                if sr.volume_mL is None:
                    sr.volume_mL = h.volume_mL
                if sr.mass_g is None or density is not None:
                    # the CT's calibrated density (mask x density on the segmentation's grid) replaces the kinetics
                    # stage's estimate (its linear 1 + HU/1000 line: +6 % for spongiosa at 250 HU)
                    sr.mass_g = mass_g
                sr.mean_dose_Gy = float(corrected[name]) if name in records else h.metrics["Dmean_Gy"]
                sr.mean_dose_as_imaged_Gy = float(as_imaged[name])
                sr.mean_dose_sd_Gy = self._dose_sd(sr, sr.mean_dose_Gy, sr.mean_dose_as_imaged_Gy)
                if pv is not None:
                    if name not in flags:
                        flags[name] = self._flag(ctx, opts, pv, name, m, grid)
                    sr.partial_volume = self._pv_record(pv, flags[name], sr, records.get(name))
                    if sr.partial_volume.get("too_small"):
                        pvr = sr.partial_volume
                        res.warn("dosimetry", f"'{name}' (largest part {pvr['largest_part_mL']:.1f} mL) is smaller "
                                 f"than (2 x FWHM)^3 = {pvr['threshold_mL']:.1f} mL: its activity and dose rest on a "
                                 "partial-volume correction; treat them with caution.", structure=name, cycle=n)
                if c.administration.activity_MBq > 0:
                    sr.dose_per_activity_Gy_per_GBq = sr.mean_dose_Gy / (c.administration.activity_MBq / 1000.0)
                sr.dose_method = opts.method + ("+pvc" if name in records else "")
                sr.dvh = h.to_dict()
                sr.dvh_metrics = h.metrics
                if sr.tia_MBq_h is not None and sr.tia_MBq_h > 0:
                    is_lesion = seg.structure(name).is_lesion if (seg is not None and name in seg.names) else False
                    fn = sphere_s_value if is_lesion else organ_self_s_value
                    try:
                        s_value = fn(nuclide, sr.mass_g or mass_g)
                        # MBq h x 3600 s/h x mGy/(MBq s) / 1000 mGy/Gy
                        sr.organ_s_value_dose_Gy = sr.tia_MBq_h * 3600.0 * s_value / 1000.0
                    except InvalidInputError as exc:
                        res.warn("dosimetry", f"No S-value dose: {exc}", structure=name, cycle=n, severity="info")
        references = list(getattr(entry, "references", []))
        res.record_method(
            "dosimetry",
            f"{opts.method}: {engine_desc}" + ("; partial-volume correction: local model (self-dose on the "
                                               "segmentation grid, spill-in removed)" if pv is not None else ""),
            {
                **{k: v for k, v in asdict(opts).items() if k != "engine_options"},
                "engine_options": dict(opts.engine_options),
                "density": "CT, bilinear HU-density calibration" if density is not None else "water (1 g/mL)",
                "mean_dose": "weighted by the structure's mass in each voxel (mask x CT density on the CT grid, "
                             "averaged per dose voxel)" if density is not None else
                             "volume-weighted over the fractional mask",
                "organ_s_value_dose": "self-dose only: sphere_s_value for lesions, organ_self_s_value for organs",
                "partial_volume_correction": (
                    {"method": "local model: D = D_map + (TIA (S_true - S_seen) + E(x) - E(G*x)) / m",
                     "system_fwhm_mm": pv.system_fwhm_mm, "fwhm_left_in_dose_map_mm": pv.map_fwhm_mm,
                     "too_small_below": f"({opts.too_small_factor:g} x FWHM)^3",
                     "dose_sd": "TIA relative SD without its recovery component, plus 25 % of the dose correction"}
                    if pv is not None else "none (system resolution unknown or switched off)"),
            },
            references + [
                "Schneider W et al. Phys Med Biol 2000;45:459-478 (HU-density calibration)",
                "Berger MJ. MIRD Pamphlet No. 7. J Nucl Med 1971;12 Suppl 5 (sphere absorbed fractions)",
                "ICRU Report 83 (D2/D50/D98 definitions)",
            ] + ([
                "Rousset OG et al. J Nucl Med 1998;39:904-911 (geometric transfer matrix)",
                "Gear JI et al. Eur J Nucl Med Mol Imaging 2018;45:2456-2474 (uncertainty of recovery corrections)",
            ] if pv is not None else []),
        )

    # ------------------------------------------------------------------------------------------------------------
    @staticmethod
    def _mean(dose: np.ndarray, mask: np.ndarray, weights: np.ndarray) -> float:
        """Mass-weighted mean dose over a fractional mask (the DVH's Dmean)."""
        w = float(weights.sum(dtype=np.float64))
        if w <= 0:
            w = float(mask.sum(dtype=np.float64))
            weights = mask
        return float(np.sum(dose.astype(np.float64) * weights, dtype=np.float64)) / w if w > 0 else 0.0

    @staticmethod
    def _pv_setup(ctx: PipelineContext, opts: DosimetryOptions, grid: Geometry,
                  masks: dict[str, np.ndarray]) -> _PartialVolumeSetup | None:
        """The correction's inputs: the resolution (from the kinetics stage's record or options), the GTM of the
        masks (the kinetics stage's, reused), the engine options of the box computations; None when off."""
        if opts.partial_volume == "none":
            return None
        from ..kinetics.tac import GeometricTransferMatrix, fwhm_to_sigma_voxels

        record = ctx.state.partial_volume or {}
        fwhm = record.get("system_fwhm_mm", ctx.config.options("kinetics").get("system_fwhm_mm"))
        # 0 is a known resolution (an ideal camera): only the voxel averaging is then corrected
        if fwhm is None:
            ctx.results.warn("dosimetry", "System resolution unknown (kinetics option system_fwhm_mm): structure "
                             "doses are not corrected for partial volume.", severity="info")
            return None
        fwhm = float(fwhm)
        map_fwhm = float(record.get("voxel_map_fwhm_mm", fwhm) or 0.0)
        seg = ctx.study.segmentation
        body = next((s.name for s in seg.structures if s.role.value == "body"), None) if seg else None
        # the GTM of the map's own resolution (the kinetics stage's for the same masks and FWHM: cached)
        gtm = GeometricTransferMatrix.cached(masks, grid.spacing_mm, max(map_fwhm, 1e-3 * min(grid.spacing_mm)),
                                             body=body if body in masks else None)
        # the same engine as the map's, with its long-range photon term: the fine and the coarse box computations
        # must deposit the same photon energy from the box's sources (a kernel's reach in voxels is not the same
        # distance on the two grids)
        engine_options = dict(opts.engine_options)
        return _PartialVolumeSetup(fwhm, map_fwhm, fwhm_to_sigma_voxels(map_fwhm, grid.spacing_mm) if map_fwhm
                                   else [0.0, 0.0, 0.0], body, gtm, engine_options)

    def _correct(self, ctx: PipelineContext, opts: DosimetryOptions, pv: _PartialVolumeSetup, grid: Geometry,
                 tia: np.ndarray, dose: np.ndarray, masks: dict[str, np.ndarray], mass_weights: dict[str, np.ndarray],
                 density: np.ndarray | None, nuclide: str, cycle: int,
                 as_imaged: dict[str, float]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
        """Corrected mean doses (see :mod:`~theratwin.dosimetry.partial_volume`) of the structures that have a TIA."""
        res = ctx.results
        cyc = res.cycles[cycle]
        seg = ctx.study.segmentation
        corrected = dict(as_imaged)
        records: dict[str, dict[str, float]] = {}
        if seg is None:
            return corrected, records
        model = self._local_model(pv, grid, tia, cyc)
        margin = [int(math.ceil(3.0 * s)) + 2 for s in pv.sigma_voxels]
        for name, m in masks.items():
            if name == pv.body or name not in model.structures_Bq_h_per_mL or name not in seg.names:
                continue
            mass_g = float(np.sum(mass_weights[name], dtype=np.float64)) * grid.voxel_volume_mL
            box = box_around(m, margin)
            if box is None or mass_g <= 0:
                continue
            e_fine, e_seen = local_model_energies(name, model, mass_weights[name], grid, box, density, seg, pv.body,
                                                  pv.sigma_voxels, nuclide, opts.method, pv.engine_options)
            value = as_imaged[name] + (e_fine - e_seen) / mass_g
            if not (math.isfinite(value) and value > 0):
                res.warn("dosimetry", f"Partial-volume correction of '{name}' gave {value:.3g} Gy; the dose as imaged "
                         "is kept.", structure=name, cycle=cycle)
                continue
            corrected[name] = value
            records[name] = {"model_dose_Gy": e_fine / mass_g, "model_dose_as_imaged_Gy": e_seen / mass_g}
            # the reported TIA against what the voxel TIA map holds (the GTM on the map): a single-time-point
            # structure estimate and its voxels' estimate can disagree; the dose follows the reported TIA
            reported = cyc.structures[name].tia_MBq_h
            map_tia = model.map_tia_MBq_h.get(name)
            if map_tia is not None and map_tia > 0 and reported:
                records[name]["tia_from_voxel_map_MBq_h"] = map_tia
                if abs(reported / map_tia - 1.0) > 0.10:
                    method = cyc.structures[name].tia_method
                    res.warn("dosimetry", f"The TIA of '{name}' ({reported:.4g} MBq h, {method}) differs "
                             f"by {100 * (reported / map_tia - 1):+.0f} % from what its voxels' TIA map holds "
                             f"({map_tia:.4g} MBq h, geometric transfer matrix); its dose follows the reported TIA.",
                             structure=name, cycle=cycle)
        return corrected, records

    @staticmethod
    def _local_model(pv: _PartialVolumeSetup, grid: Geometry, tia: np.ndarray, cyc: Any) -> LocalModel:
        """The cycle's piecewise-uniform TIA models: as the map holds it (the GTM's regional values solved on the TIA
        map) and as the results report it (each structure at its reported TIA over its region's volume, the
        background regions re-fitted to the map with the structures fixed)."""
        gtm = pv.gtm
        means = gtm.region_means(tia)
        t_map = np.linalg.solve(gtm.w, means)
        t = t_map.copy()
        fixed = np.zeros(t.size, bool)
        for i, key in enumerate(gtm.region_keys):
            sr = cyc.structures.get(key) if key in gtm.names else None
            if sr is not None and sr.tia_MBq_h and sr.tia_MBq_h > 0 and gtm.sizes[i] > 0:
                # MBq h x 1e6 Bq/MBq over mL
                t[i] = sr.tia_MBq_h * 1e6 / (gtm.sizes[i] * grid.voxel_volume_mL)
                fixed[i] = True
        if fixed.any() and not fixed.all():
            # where the GTM alone cannot tell a structure from its shell (a 1 mL gland in 9.6 mm voxels), the shell
            # must not keep what the structure's own reported value now accounts for
            rhs = means - gtm.w[:, fixed] @ t[fixed]
            t[~fixed] = np.linalg.lstsq(gtm.w[:, ~fixed], rhs, rcond=None)[0]
        t = np.clip(t, 0.0, None)
        structures = {key: float(t[i]) for i, key in enumerate(gtm.region_keys) if key in gtm.names}
        volumes = {key: float(gtm.sizes[i]) * grid.voxel_volume_mL for i, key in enumerate(gtm.region_keys)
                   if key in gtm.names}
        num = np.zeros(grid.shape, np.float32)
        den = np.zeros(grid.shape, np.float32)
        for i, key in enumerate(gtm.region_keys):
            if key.startswith("shell") or key.startswith("rest"):
                region = gtm.region_of(key)
                assert region is not None
                box, frac = region
                num[box] += np.float32(t[i]) * frac
                den[box] += frac
        background = np.where(den > 0, num / np.maximum(den, 1e-12), 0.0).astype(np.float32)
        map_tia = {k: v * grid.voxel_volume_mL / 1e6 for k, v in gtm.structure_values(t_map).items()}
        return LocalModel(structures, gtm.synthetic_image(np.clip(t_map, 0.0, None)), background, volumes, map_tia)

    @staticmethod
    def _dose_sd(sr: Any, dose_Gy: float, as_imaged_Gy: float) -> float | None:
        """SD of the mean dose: the TIA's relative SD without its recovery component (the dose map never had that
        correction) on the whole dose, plus 25 % of the partial-volume correction the dose did get."""
        from ..kinetics.tac import ActivityUncertaintyModel

        if not sr.tia_MBq_h or sr.tia_sd_MBq_h is None or sr.tia_MBq_h <= 0:
            return None
        rel2 = (sr.tia_sd_MBq_h / sr.tia_MBq_h) ** 2
        rc = (sr.fit_quality or {}).get("recovery_coefficient", 1.0)
        share = ActivityUncertaintyModel().recovery_rel_sd_of_correction
        if rc and rc != 1.0:
            rel2 = max(rel2 - (share * abs(1.0 / rc - 1.0)) ** 2, 0.0)
        return math.sqrt(rel2 * dose_Gy**2 + (share * (dose_Gy - as_imaged_Gy)) ** 2)

    @staticmethod
    def _flag(ctx: PipelineContext, opts: DosimetryOptions, pv: _PartialVolumeSetup, name: str, mask: np.ndarray,
              grid: Geometry) -> dict[str, Any]:
        """Whether the structure is below ``(too_small_factor x FWHM)^3`` (on the segmentation's own grid)."""
        from ..kinetics.tac import partial_volume_flag

        seg = ctx.study.segmentation
        if seg is not None and name in seg.names:
            flag = partial_volume_flag(seg.masks[name], seg.geometry.spacing_mm, pv.system_fwhm_mm,
                                       factor=opts.too_small_factor)
        else:
            flag = partial_volume_flag(mask, grid.spacing_mm, pv.system_fwhm_mm, factor=opts.too_small_factor)
        if name == pv.body:
            flag["too_small"] = False
        return flag

    @staticmethod
    def _pv_record(pv: _PartialVolumeSetup, flag: dict[str, Any], sr: Any,
                   record: dict[str, float] | None) -> dict[str, Any]:
        out: dict[str, Any] = {**flag, "correction": "local_model" if record is not None else "none",
                               "fwhm_left_in_dose_map_mm": pv.map_fwhm_mm,
                               "mean_dose_as_imaged_Gy": sr.mean_dose_as_imaged_Gy}
        rc = (sr.fit_quality or {}).get("recovery_coefficient")
        if rc is not None:
            out["recovery_coefficient"] = float(rc)
        if record is not None:
            out.update(record)
        return out

STAGES.register("dosimetry", DosimetryStage)
