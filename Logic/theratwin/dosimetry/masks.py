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

__all__ = ["area_average", "covered_fraction", "covered_fractions"]

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


def covered_fraction(segmentation: Segmentation, name: str, grid: Geometry) -> np.ndarray:
    """Fraction (0..1, float32) of each voxel of ``grid`` covered by structure ``name`` (:func:`area_average`
    of the binary mask; same frame of reference assumed)."""
    return np.clip(area_average(segmentation.masks[name], segmentation.geometry, grid), 0.0, 1.0)


def covered_fractions(segmentation: Segmentation, grid: Geometry) -> dict[str, np.ndarray]:
    """:func:`covered_fraction` for every structure of the segmentation."""
    return {n: covered_fraction(segmentation, n, grid) for n in segmentation.names}
