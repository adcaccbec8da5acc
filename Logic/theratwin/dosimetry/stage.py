"""Pipeline stage "dosimetry": dose maps per cycle, per-structure mean dose, DVH and S-value comparison.

Reads ``results.maps["cycle{n}/tia"]`` (Bq·h/mL on the reference grid, from the kinetics stage), the
reference CT (density correction) and the structure masks; writes ``results.maps["cycle{n}/dose"]`` (Gy) and,
per cycle and structure, ``mean_dose_Gy``, ``mean_dose_sd_Gy``, ``dose_per_activity_Gy_per_GBq``,
``dose_method``, ``dvh``, ``dvh_metrics``, ``organ_s_value_dose_Gy``, ``volume_mL`` and ``mass_g``.

Options (``PipelineConfig.stage_options["dosimetry"]``, see :class:`DosimetryOptions`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from ..errors import ConfigurationError, InvalidInputError
from ..pipeline.core import STAGES, PipelineContext
from ..progress import scaled
from ..study import Geometry, ImageVolume
from ._physics import DEFAULT_HU_DENSITY_POINTS, hu_to_density
from .dose import DOSE_ENGINES, dose_map
from .dvh import DEFAULT_VX_GY, dvh
from .masks import area_average, covered_fractions, masked_area_average
from .svalues import organ_self_s_value, sphere_s_value

__all__ = ["DosimetryOptions", "DosimetryStage", "structure_masks", "density_on_grid", "structure_mass_weights"]


@dataclass
class DosimetryOptions:
    """Settings of the dosimetry stage.

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
    """

    method: str = "dvk"
    engine_options: dict[str, Any] = field(default_factory=dict)
    density_correction: bool = True
    hu_density_points: list[tuple[float, float]] | None = None
    dvh_bin_width_Gy: float | None = None
    dvh_max_bins: int = 2000
    vx_Gy: tuple[float, ...] = DEFAULT_VX_GY

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DosimetryOptions:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigurationError(f"Unknown dosimetry option(s) {sorted(unknown)}; known: {sorted(known)}.")
        opts = cls(**d)
        opts.vx_Gy = tuple(float(v) for v in opts.vx_Gy)
        if opts.method not in DOSE_ENGINES:
            raise ConfigurationError(
                f"Unknown dose engine '{opts.method}' (dosimetry option 'method'); available: {DOSE_ENGINES.names()}."
            )
        return opts


def _reference_grid(ctx: PipelineContext) -> Geometry | None:
    grid = ctx.state.get("reference_grid")
    if grid is not None:
        return grid
    for c in ctx.study.cycles:
        vol = ctx.results.maps.get(f"cycle{c.number}/tia")
        if vol is not None:
            return vol.geometry
    return None


def structure_masks(ctx: PipelineContext, grid: Geometry) -> dict[str, np.ndarray]:
    """Fractional (0..1, float32) masks of the study's structures on ``grid``.

    Uses ``ctx.state["masks"]`` (from registration) when present, else the covered fraction of each dose voxel
    computed from the segmentation (:func:`covered_fractions`).
    """
    masks = ctx.state.get("masks")
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


class DosimetryStage:
    """The "dosimetry" stage (see the module docstring)."""

    name = "dosimetry"
    requires: tuple[str, ...] = ("kinetics",)

    def run(self, ctx: PipelineContext) -> None:
        opts = DosimetryOptions.from_dict(ctx.config.options("dosimetry"))
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
        ctx.state["dose_masks"] = masks
        ctx.state["density_g_per_mL"] = density
        seg = ctx.study.segmentation
        entry = DOSE_ENGINES.get(opts.method)
        engine_desc = getattr(entry, "description", opts.method)
        voxel_mL = grid.voxel_volume_mL
        cycles = [c for c in ctx.study.cycles if f"cycle{c.number}/tia" in res.maps]
        for c in ctx.study.cycles:
            if f"cycle{c.number}/tia" not in res.maps:
                res.warn("dosimetry", f"No TIA map for cycle {c.number}; no dose computed.", cycle=c.number)
        for i, c in enumerate(cycles):
            n = c.number
            tia_vol = res.maps[f"cycle{n}/tia"]
            if not tia_vol.geometry.same_grid(grid):
                tia_vol = tia_vol.resample_to(grid, order=1)
            prog = scaled(ctx.stage_progress, i / len(cycles), (i + 1) / len(cycles))
            dose = dose_map(tia_vol.array, grid.spacing_mm, c.administration.nuclide, method=opts.method,
                            density_g_per_mL=density, progress=prog, **opts.engine_options)
            res.maps[f"cycle{n}/dose"] = ImageVolume.from_geometry(dose, grid, "Gy")
            cyc = res.cycles[n]
            for name, m in masks.items():
                if not np.any(m > 0):
                    res.warn("dosimetry", f"Structure '{name}' has no voxel on the dose grid.", structure=name, cycle=n)
                    continue
                sr = cyc.structure(name)
                mw = mass_weights[name]
                # density per covered volume, so that mask x density = the structure's mass in the voxel
                rho_s = np.where(m > 0, mw / np.maximum(m, 1e-6), 0.0) if density is not None else None
                h = dvh(dose, m, voxel_volume_mL=voxel_mL, bin_width_Gy=opts.dvh_bin_width_Gy,
                        max_bins=opts.dvh_max_bins, vx_Gy=opts.vx_Gy, density_g_per_mL=rho_s)
                mass_g = float(np.sum(mw, dtype=np.float64) * voxel_mL)
                if sr.volume_mL is None:
                    sr.volume_mL = h.volume_mL
                if sr.mass_g is None:
                    sr.mass_g = mass_g
                sr.mean_dose_Gy = h.metrics["Dmean_Gy"]
                if sr.tia_MBq_h and sr.tia_sd_MBq_h is not None and sr.tia_MBq_h > 0:
                    # the dose is linear in the TIA: its relative SD carries over (kernel uncertainty excluded)
                    sr.mean_dose_sd_Gy = sr.mean_dose_Gy * sr.tia_sd_MBq_h / sr.tia_MBq_h
                if c.administration.activity_MBq > 0:
                    sr.dose_per_activity_Gy_per_GBq = sr.mean_dose_Gy / (c.administration.activity_MBq / 1000.0)
                sr.dose_method = opts.method
                sr.dvh = h.to_dict()
                sr.dvh_metrics = h.metrics
                if sr.tia_MBq_h is not None and sr.tia_MBq_h > 0:
                    is_lesion = seg.structure(name).is_lesion if (seg is not None and name in seg.names) else False
                    fn = sphere_s_value if is_lesion else organ_self_s_value
                    try:
                        s_value = fn(c.administration.nuclide, sr.mass_g or mass_g)
                        # MBq h x 3600 s/h x mGy/(MBq s) / 1000 mGy/Gy
                        sr.organ_s_value_dose_Gy = sr.tia_MBq_h * 3600.0 * s_value / 1000.0
                    except InvalidInputError as exc:
                        res.warn("dosimetry", f"No S-value dose: {exc}", structure=name, cycle=n, severity="info")
        references = list(getattr(entry, "references", []))
        res.record_method(
            "dosimetry",
            f"{opts.method}: {engine_desc}",
            {
                **{k: v for k, v in asdict(opts).items() if k != "engine_options"},
                "engine_options": dict(opts.engine_options),
                "density": "CT, bilinear HU-density calibration" if density is not None else "water (1 g/mL)",
                "mean_dose": "weighted by the structure's mass in each voxel (mask x CT density on the CT grid, "
                             "averaged per dose voxel)" if density is not None else
                             "volume-weighted over the fractional mask",
                "organ_s_value_dose": "self-dose only: sphere_s_value for lesions, organ_self_s_value for organs",
            },
            references + [
                "Schneider W et al. Phys Med Biol 2000;45:459-478 (HU-density calibration)",
                "Berger MJ. MIRD Pamphlet No. 7. J Nucl Med 1971;12 Suppl 5 (sphere absorbed fractions)",
                "ICRU Report 83 (D2/D50/D98 definitions)",
            ],
        )


STAGES.register("dosimetry", DosimetryStage)
