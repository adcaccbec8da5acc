"""Image volumes with ITK/DICOM (LPS) geometry.

Arrays are numpy ``(z, y, x)`` (SimpleITK order). ``origin_mm`` is the LPS position of the centre of voxel
(0, 0, 0); ``spacing_mm`` is (x, y, z); ``direction`` is the 3x3 matrix whose columns are the LPS directions
of the x, y and z index axes (ITK convention). Conversion to Slicer's RAS happens only in ``TheraTwinLib``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidInputError

__all__ = ["Geometry", "ImageVolume"]


@dataclass(frozen=True)
class Geometry:
    """Voxel grid: shape ``(z, y, x)``, spacing (x, y, z) in mm, LPS origin in mm and direction cosines."""

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[tuple[float, float, float], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.shape)
        spacing = tuple(float(s) for s in self.spacing_mm)
        origin = tuple(float(o) for o in self.origin_mm)
        direction = np.asarray(self.direction, dtype=float)
        if len(shape) != 3 or min(shape) < 1:
            raise InvalidInputError(f"Geometry shape must be three positive sizes (z, y, x); got {self.shape}.")
        if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
            raise InvalidInputError(f"Voxel spacing must be three positive sizes in mm (x, y, z); got {self.spacing_mm}.")
        if len(origin) != 3 or not all(np.isfinite(origin)):
            raise InvalidInputError(f"Origin must be three finite LPS coordinates in mm; got {self.origin_mm}.")
        if direction.shape != (3, 3) or not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
            raise InvalidInputError(
                f"Direction must be a 3x3 orthonormal matrix (columns = index axes in LPS); got {self.direction}."
            )
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "spacing_mm", spacing)
        object.__setattr__(self, "origin_mm", origin)
        object.__setattr__(self, "direction", tuple(tuple(float(v) for v in row) for row in direction))

    @property
    def direction_matrix(self) -> np.ndarray:
        """Direction cosines as a 3x3 array (columns: x, y, z index axes in LPS)."""
        return np.asarray(self.direction, dtype=float)

    @property
    def voxel_volume_mL(self) -> float:
        """Volume of one voxel in mL (cm^3)."""
        return float(np.prod(self.spacing_mm)) / 1000.0

    def index_to_lps(self, ijk: np.ndarray) -> np.ndarray:
        """Map continuous indices ``(..., 3)`` in (x, y, z) index order to LPS mm."""
        ijk = np.asarray(ijk, dtype=float)
        return np.asarray(self.origin_mm) + (ijk * np.asarray(self.spacing_mm)) @ self.direction_matrix.T

    def lps_to_index(self, lps: np.ndarray) -> np.ndarray:
        """Map LPS mm points ``(..., 3)`` to continuous (x, y, z) indices."""
        lps = np.asarray(lps, dtype=float) - np.asarray(self.origin_mm)
        return (lps @ self.direction_matrix) / np.asarray(self.spacing_mm)

    def affine(self) -> np.ndarray:
        """4x4 matrix mapping homogeneous (x, y, z, 1) indices to LPS mm."""
        a = np.eye(4)
        a[:3, :3] = self.direction_matrix * np.asarray(self.spacing_mm)[None, :]
        a[:3, 3] = self.origin_mm
        return a

    def same_grid(self, other: Geometry, *, tolerance_mm: float = 1e-3) -> bool:
        """True when both grids have the same shape and coincide voxel for voxel."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing_mm, other.spacing_mm, atol=tolerance_mm)
            and np.allclose(self.origin_mm, other.origin_mm, atol=tolerance_mm)
            and np.allclose(self.direction_matrix, other.direction_matrix, atol=1e-5)
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: shape (z, y, x), spacing (mm), origin (mm) and direction cosines."""
        return {
            "shape_zyx": list(self.shape),
            "spacing_mm": list(self.spacing_mm),
            "origin_mm": list(self.origin_mm),
            "direction": [list(r) for r in self.direction],
        }


@dataclass
class ImageVolume:
    """A 3D image with LPS geometry and a physical unit.

    Parameters
    ----------
    array
        Voxel values, shape ``(z, y, x)``.
    spacing_mm
        Voxel size (x, y, z) in mm.
    origin_mm
        LPS position (mm) of the centre of voxel (0, 0, 0).
    direction
        3x3 direction cosines, columns = x, y, z index axes in LPS.
    unit
        Unit of the values as UCUM-like text, e.g. ``"Bq/mL"``, ``"HU"``, ``"Gy"``, ``"Bq.h/mL"``, ``"1"``.
    """

    array: np.ndarray
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: Any = field(default_factory=lambda: np.eye(3))
    unit: str = "1"
    geometry: Geometry = field(init=False, repr=False)

    def __post_init__(self) -> None:
        arr = np.asarray(self.array)
        if arr.ndim != 3:
            raise InvalidInputError(f"ImageVolume needs a 3D array (z, y, x); got shape {arr.shape}.")
        if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
            raise InvalidInputError(f"ImageVolume needs a numeric array; got dtype {arr.dtype}.")
        self.array = arr
        self.geometry = Geometry(
            shape=arr.shape,
            spacing_mm=tuple(self.spacing_mm),  # type: ignore[arg-type]
            origin_mm=tuple(self.origin_mm),  # type: ignore[arg-type]
            direction=tuple(map(tuple, np.asarray(self.direction, dtype=float))),
        )
        self.spacing_mm = self.geometry.spacing_mm
        self.origin_mm = self.geometry.origin_mm
        self.direction = self.geometry.direction_matrix
        if not isinstance(self.unit, str) or not self.unit:
            raise InvalidInputError(f"ImageVolume unit must be a non-empty string such as 'Bq/mL'; got {self.unit!r}.")

    @classmethod
    def from_geometry(cls, array: np.ndarray, geometry: Geometry, unit: str) -> ImageVolume:
        """Make a volume on an existing grid."""
        if tuple(np.shape(array)) != geometry.shape:
            raise InvalidInputError(f"Array shape {np.shape(array)} does not match the grid {geometry.shape}.")
        return cls(array, geometry.spacing_mm, geometry.origin_mm, geometry.direction_matrix, unit)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (z, y, x)."""
        return self.geometry.shape

    @property
    def voxel_volume_mL(self) -> float:
        """Volume of one voxel in mL."""
        return self.geometry.voxel_volume_mL

    def with_array(self, array: np.ndarray, unit: str | None = None) -> ImageVolume:
        """A new volume with the same geometry and another array (and optionally another unit)."""
        return ImageVolume.from_geometry(array, self.geometry, unit or self.unit)

    def to_sitk(self) -> Any:
        """Convert to a SimpleITK image (same LPS geometry)."""
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(self.array)
        img.SetSpacing(self.spacing_mm)
        img.SetOrigin(self.origin_mm)
        img.SetDirection(tuple(self.geometry.direction_matrix.ravel()))
        return img

    @classmethod
    def from_sitk(cls, image: Any, unit: str) -> ImageVolume:
        """Make a volume from a SimpleITK image."""
        import SimpleITK as sitk

        return cls(
            sitk.GetArrayFromImage(image),
            spacing_mm=image.GetSpacing(),
            origin_mm=image.GetOrigin(),
            direction=np.asarray(image.GetDirection()).reshape(3, 3),
            unit=unit,
        )

    def resample_to(self, geometry: Geometry, *, order: int = 1, fill: float = 0.0,
                    transform: Any = None) -> ImageVolume:
        """Resample onto another grid (SimpleITK; ``order`` 0 nearest, 1 linear, 3 B-spline).

        ``transform`` is an optional SimpleITK transform mapping points of ``geometry`` to this image.
        """
        import SimpleITK as sitk

        interp = {0: sitk.sitkNearestNeighbor, 1: sitk.sitkLinear, 3: sitk.sitkBSpline}[order]
        ref = sitk.Image(geometry.shape[2], geometry.shape[1], geometry.shape[0], sitk.sitkUInt8)
        ref.SetSpacing(geometry.spacing_mm)
        ref.SetOrigin(geometry.origin_mm)
        ref.SetDirection(tuple(geometry.direction_matrix.ravel()))
        src = self.to_sitk()
        if src.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
            src = sitk.Cast(src, sitk.sitkFloat64 if order else src.GetPixelID())
        out = sitk.Resample(src, ref, transform or sitk.Transform(), interp, fill)
        return ImageVolume.from_sitk(out, self.unit)
