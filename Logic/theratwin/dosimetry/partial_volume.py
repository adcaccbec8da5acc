"""Partial-volume correction of structure doses that agrees with the recovery-corrected TIA ("local model").

A voxel dose map computed from SPECT (or PET) misplaces activity twice: the system resolution spreads each
structure's activity over its surroundings (spill-out) and brings the neighbours' activity in (spill-in), and
the dose grid averages activity and dose over voxels that a structure's border only partly covers. For a 1-10 mL
lesion at 11 mm FWHM and 4.8 mm voxels the mean dose of the map is 30-70 % below the true one, while the
structure's TIA, recovery-corrected by the kinetics stage, is right: dose and TIA disagree.

For each structure ``T`` (not the body) the mean dose of the map, ``D_map``, is corrected with a *local model*
of the activity around it: the piecewise-uniform image ``x`` of the structures (each at its reported,
recovery-corrected TIA over its volume) and of the background shells around them (the regional values of the
geometric transfer matrix, :class:`~theratwin.kinetics.GeometricTransferMatrix`, solved on the TIA map), in a
box around ``T`` wide enough for the blur. With the map's own dose engine,

* ``E_fine``: the energy that ``x`` deposits in ``T``, both on the segmentation's own grid (at most 4 times finer
  than the dose grid per axis): every structure and ``T`` itself exactly where the segmentation puts them, each at
  its reported TIA;
* ``E_seen``: the energy that the map's own model deposits in ``T`` as the dose map sees it: the GTM's regional
  values solved on the TIA map itself, on the dose grid's fractional masks, blurred by the resolution still in
  the map, energy counted over ``T``'s fractional mask with the map's mass weights;

``D = D_map + (E_fine - E_seen) / m_T``. ``E_seen`` takes out what the map holds from the activity around ``T``
(its own, blurred and voxel-averaged, and what the blur moved in from its neighbours: a vertebra's marrow in
warmer soft tissue, the spleen next to a kidney); ``E_fine`` puts in the dose of the reported activities where
the segmentation puts them, so the cross-fire of the neighbours stays and the self-dose is that of the TIA the
results report (also when the map's own voxel TIA differs, as single-time-point estimates of a structure and of
its voxels may); what the model does not describe (noise, non-uniform uptake, activity outside the box) stays as
the map has it.

The voxel dose map is scaled inside ``T``'s core (voxels at least half in ``T``) so that its mean over ``T`` is
``D``; the uncorrected value is kept as ``mean_dose_as_imaged_Gy`` and the uncorrected map as
``cycle<n>/dose_as_imaged``. (The dose that the blur spread around a hot structure stays in the corrected map's
surroundings: the map is a structure-consistent, not an energy-conserving, correction; the body's mean dose is
therefore taken from the uncorrected map.) When the kinetics stage corrected the images themselves
(region-based voxel-wise correction before the voxel fits), the map holds no blur and only the voxel averaging is
corrected.

The correction assumes uniform activity within each region (structure, background shell), the assumption of
every recovery-coefficient or GTM method; its uncertainty is taken as 25 % of its size (as for the activity's
recovery correction, Gear JI et al. EJNMMI 2018;45:2456-74).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..kinetics.tac import bounding_box
from ..study import Geometry, ImageVolume, Segmentation
from .dose import dose_map
from .masks import _dose_box, _sub_geometry

__all__ = ["LocalModel", "local_model_energies", "box_around", "core_scaling"]

#: The fine ("true") grid is at most this many times finer than the dose grid per axis.
_MAX_REFINE = 4


@dataclass
class LocalModel:
    """The piecewise-uniform TIA models of one cycle (Bq h/mL).

    Attributes
    ----------
    structures_Bq_h_per_mL
        ``{structure: TIA concentration}``: the reported TIA over the structure's volume (the fine model).
    image
        The map's own model, ``sum_j t_j r_j`` with the GTM's regional values solved on the TIA map (dose grid):
        what ``E_seen`` subtracts.
    background
        Concentration of the unsegmented tissue (shells, rest of the body) of the fine model at each dose voxel, 0
        outside the body.
    volumes_mL
        The structures' volumes (their order of precedence: smaller first).
    map_tia_MBq_h
        Each structure's TIA as the voxel TIA map holds it (the GTM on the map), for comparison with the reported one.
    """

    structures_Bq_h_per_mL: dict[str, float]
    image: np.ndarray
    background: np.ndarray
    volumes_mL: dict[str, float] = field(default_factory=dict)
    map_tia_MBq_h: dict[str, float] = field(default_factory=dict)


def box_around(mask: np.ndarray, margin: list[int]) -> tuple[slice, slice, slice] | None:
    """Index box (z, y, x) of ``mask > 0`` grown by ``margin`` voxels per axis, or None if empty."""
    return bounding_box(np.asarray(mask) > 0, margin)


def _blur(a: np.ndarray, sigma_voxels: list[float]) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    if max(sigma_voxels) <= 0:
        return a
    return gaussian_filter(a, sigma=sigma_voxels, mode="constant", cval=0.0)


def _fine_model(name: str, model: LocalModel, grid: Geometry, box: tuple[slice, slice, slice],
                segmentation: Segmentation, body: str | None) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """The local model and ``T``'s mask on the segmentation's grid over the dose box (coarsened to at most
    ``_MAX_REFINE`` times the dose grid): (TIA concentration, mask, spacing (x, y, z))."""
    seg_geo = segmentation.geometry
    sbox = _dose_box(grid, box, seg_geo)
    fine_geo = _sub_geometry(seg_geo, sbox)
    conc = np.zeros(fine_geo.shape, np.float32)
    taken = np.zeros(fine_geo.shape, bool)
    # structures where the segmentation draws them, smaller first (a lesion inside an organ keeps its voxels)
    names = sorted((n for n in model.structures_Bq_h_per_mL if n in segmentation.names and n != body),
                   key=lambda n: model.volumes_mL.get(n, 0.0))
    for n in names:
        m = segmentation.masks[n][sbox] & ~taken
        if m.any():
            conc[m] = np.float32(model.structures_Bq_h_per_mL[n])
            taken |= m
    inside = segmentation.masks[body][sbox] if (body is not None and body in segmentation.names) else \
        np.ones(fine_geo.shape, bool)
    rest = inside & ~taken
    if rest.any():
        bg = ImageVolume.from_geometry(model.background[box], _sub_geometry(grid, box), "Bq.h/mL")
        conc[rest] = bg.resample_to(fine_geo, order=1, fill=0.0).array[rest]
    mask = segmentation.masks[name][sbox].astype(np.float32)
    spacing = fine_geo.spacing_mm
    factor = [max(1, int(math.floor(g / _MAX_REFINE / sp + 1e-9)))
              for g, sp in zip((grid.spacing_mm[2], grid.spacing_mm[1], grid.spacing_mm[0]),
                               (spacing[2], spacing[1], spacing[0]), strict=True)]
    if any(f > 1 for f in factor):
        def coarsen(a: np.ndarray) -> np.ndarray:
            a = np.pad(a, [(0, (-n) % f) for n, f in zip(a.shape, factor, strict=True)])
            z, y, x = (n // f for n, f in zip(a.shape, factor, strict=True))
            return a.reshape(z, factor[0], y, factor[1], x, factor[2]).mean(axis=(1, 3, 5))

        conc, mask = coarsen(conc), coarsen(mask)
        spacing = (spacing[0] * factor[2], spacing[1] * factor[1], spacing[2] * factor[0])
    return conc.astype(np.float32), mask.astype(np.float32), spacing


def local_model_energies(name: str, model: LocalModel, mass_weights: np.ndarray, grid: Geometry,
                         box: tuple[slice, slice, slice], density: np.ndarray | None, segmentation: Segmentation,
                         body: str | None, sigma_voxels: list[float], nuclide: str, method: str,
                         engine_options: dict[str, Any]) -> tuple[float, float]:
    """``(E_fine, E_seen)`` in Gy g: the energy the local model deposits in structure ``name``, on the
    segmentation's grid and as the dose map sees it (see the module docstring)."""
    conc, mask, spacing = _fine_model(name, model, grid, box, segmentation, body)
    fine_mL = float(np.prod(spacing)) / 1000.0
    # energy as in water: the engine's density scaling divides by the density that the mass would multiply back
    d_fine = dose_map(conc, spacing, nuclide, method=method, **engine_options)
    e_fine = float(np.sum(d_fine.astype(np.float64) * mask, dtype=np.float64)) * fine_mL
    seen = _blur(model.image[box].astype(np.float32), sigma_voxels)
    d_seen = dose_map(seen, grid.spacing_mm, nuclide, method=method,
                      density_g_per_mL=None if density is None else density[box], **engine_options)
    e_seen = float(np.sum(d_seen.astype(np.float64) * mass_weights[box], dtype=np.float64)) * grid.voxel_volume_mL
    return e_fine, e_seen


def core_scaling(dose: np.ndarray, mask: np.ndarray, mass_weights: np.ndarray, target_mean_Gy: float) -> np.ndarray | None:
    """Boolean core of a structure (voxels at least half in it; all its voxels when it has none) and the factor
    that brings its mass-weighted mean dose to ``target_mean_Gy`` when only the core is scaled: returns a float32
    factor map that is 1 outside the core, or None when no positive factor does it."""
    core = mask >= 0.5
    if not core.any():
        core = mask > 0
    total_w = float(mass_weights.sum(dtype=np.float64))
    e_all = float(np.sum(dose.astype(np.float64) * mass_weights, dtype=np.float64))
    e_core = float(np.sum(dose[core].astype(np.float64) * mass_weights[core], dtype=np.float64))
    if total_w <= 0 or e_core <= 0:
        return None
    k = 1.0 + (target_mean_Gy * total_w - e_all) / e_core
    if not math.isfinite(k) or k <= 0:
        return None
    out = np.ones(mask.shape, np.float32)
    out[core] = np.float32(k)
    return out
