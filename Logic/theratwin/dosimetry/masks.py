"""Structure masks on the dose grid as covered fractions (partial-volume weights).

``Segmentation.fractional_mask`` interpolates the binary mask at the dose-voxel centres, which is the covered
fraction only when both grids have similar spacing. When the segmentation (usually on the CT grid) is finer
than the dose grid, :func:`covered_fraction` integrates instead: each dose voxel is divided into
``k_x x k_y x k_z`` sub-voxels at least as fine as the segmentation, the binary mask is interpolated at their
centres and averaged, so a dose voxel half inside a structure gets 0.5 (to within the segmentation's own
resolution).
"""

from __future__ import annotations

import math

import numpy as np

from ..study import Geometry, ImageVolume, Segmentation

__all__ = ["area_average", "masked_area_average", "covered_fraction", "covered_fractions"]

_MAX_SUBDIVISION = 4


def area_average(values: np.ndarray, source: Geometry, grid: Geometry, *, fill: float = 0.0) -> np.ndarray:
    """Average of ``values`` (an array on ``source``) over each voxel of ``grid`` (float32).

    When ``source`` is finer than ``grid``, each voxel of ``grid`` is divided into up to 4 x 4 x 4 sub-voxels
    at least as fine as ``source``; ``values`` are interpolated (linearly) at their centres and averaged. When
    it is not, this is linear interpolation at the voxel centres. Outside ``source``: ``fill``.
    """
    if source.same_grid(grid):
        return np.asarray(values, dtype=np.float32)
    vol = ImageVolume.from_geometry(np.asarray(values, dtype=np.float32), source, "1")
    k = [min(_MAX_SUBDIVISION, max(1, math.ceil(g / s - 1e-6)))
         for g, s in zip(grid.spacing_mm, source.spacing_mm, strict=True)]
    if k == [1, 1, 1]:
        return vol.resample_to(grid, order=1, fill=fill).array.astype(np.float32)
    sub_spacing = tuple(g / ki for g, ki in zip(grid.spacing_mm, k, strict=True))
    # first sub-voxel centre of voxel 0: origin - h/2 + h/(2k) along each index axis
    shift_idx = np.array([(1.0 / ki - 1.0) / 2.0 for ki in k])  # in units of the coarse voxel
    origin = grid.index_to_lps(shift_idx)
    fine = Geometry(
        shape=(grid.shape[0] * k[2], grid.shape[1] * k[1], grid.shape[2] * k[0]),
        spacing_mm=sub_spacing,  # type: ignore[arg-type]
        origin_mm=tuple(float(o) for o in origin),  # type: ignore[arg-type]
        direction=grid.direction,
    )
    f = vol.resample_to(fine, order=1, fill=fill).array.astype(np.float32)
    nz, ny, nx = grid.shape
    return f.reshape(nz, k[2], ny, k[1], nx, k[0]).mean(axis=(1, 3, 5)).astype(np.float32)


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice] | None:
    """Index slices (z, y, x) of the smallest box holding the True voxels of ``mask``, or None if empty."""
    out = []
    for axis in range(3):
        any_ = np.any(mask, axis=tuple(a for a in range(3) if a != axis))
        nz = np.flatnonzero(any_)
        if nz.size == 0:
            return None
        out.append(slice(int(nz[0]), int(nz[-1]) + 1))
    return out[0], out[1], out[2]


def _sub_geometry(geom: Geometry, box: tuple[slice, slice, slice]) -> Geometry:
    start_xyz = np.array([box[2].start, box[1].start, box[0].start], dtype=float)
    shape = (box[0].stop - box[0].start, box[1].stop - box[1].start, box[2].stop - box[2].start)
    return Geometry(shape, geom.spacing_mm, tuple(float(v) for v in geom.index_to_lps(start_xyz)),  # type: ignore[arg-type]
                    geom.direction)


def _dose_box(seg_geom: Geometry, box: tuple[slice, slice, slice], grid: Geometry) -> tuple[slice, slice, slice]:
    """The box of ``grid`` voxels that overlap the ``box`` of segmentation voxels (one voxel of margin)."""
    corners = np.array([[x, y, z] for z in (box[0].start - 0.5, box[0].stop - 0.5)
                        for y in (box[1].start - 0.5, box[1].stop - 0.5)
                        for x in (box[2].start - 0.5, box[2].stop - 0.5)], dtype=float)
    idx = grid.lps_to_index(seg_geom.index_to_lps(corners))  # (8, 3) in (x, y, z)
    lo = np.floor(idx.min(axis=0)).astype(int) - 1
    hi = np.ceil(idx.max(axis=0)).astype(int) + 2
    nz, ny, nx = grid.shape
    return (slice(max(0, lo[2]), min(nz, hi[2])), slice(max(0, lo[1]), min(ny, hi[1])),
            slice(max(0, lo[0]), min(nx, hi[0])))


def masked_area_average(mask: np.ndarray, values: np.ndarray | None, source: Geometry, grid: Geometry) -> np.ndarray:
    """:func:`area_average` of ``mask x values`` (``values`` None: of the mask), computed only within the
    mask's bounding box (plus a margin) and zero elsewhere: the cost follows the structure's size."""
    out = np.zeros(grid.shape, np.float32)
    box = _bounding_box(np.asarray(mask, dtype=bool))
    if box is None:
        return out
    dbox = _dose_box(source, box, grid)
    # source box with a margin, so that interpolation at the border sees the zeros outside the structure
    sbox = _dose_box(grid, dbox, source)
    sub = np.asarray(mask[sbox], dtype=np.float32)
    if values is not None:
        sub = sub * values[sbox]
    out[dbox] = area_average(sub, _sub_geometry(source, sbox), _sub_geometry(grid, dbox))
    return out


def covered_fraction(segmentation: Segmentation, name: str, grid: Geometry) -> np.ndarray:
    """Fraction (0..1, float32) of each voxel of ``grid`` covered by structure ``name`` (:func:`area_average`
    of the binary mask within its bounding box; same frame of reference assumed)."""
    if segmentation.geometry.same_grid(grid):
        return segmentation.masks[name].astype(np.float32)
    return np.clip(masked_area_average(segmentation.masks[name], None, segmentation.geometry, grid), 0.0, 1.0)


def covered_fractions(segmentation: Segmentation, grid: Geometry) -> dict[str, np.ndarray]:
    """:func:`covered_fraction` for every structure of the segmentation."""
    return {n: covered_fraction(segmentation, n, grid) for n in segmentation.names}
