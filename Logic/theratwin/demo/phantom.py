"""Analytic anatomy of the demo patient (ellipsoids and elliptic cylinders in patient LPS mm).

The body is a compact adult male torso with head and neck, z from the pelvis (bladder, iliac wings) to the orbits
(lacrimal glands), cropped to a SPECT field of view of 614 x 614 x 538 mm. Every voxel of the fine (CT) grid
gets exactly one tissue label, painted in order (later shapes overwrite earlier ones), so kinetic compartments
never overlap and their volumes are exact voxel counts.

Coordinates: +x patient left, +y posterior, +z superior (DICOM LPS); the origin is near the umbilicus.

CT numbers are typical unenhanced values (soft tissue ~40 HU, fat ~-100 HU, inflated lung ~-800 HU,
trabecular bone ~250 HU, cortical bone ~700 HU). Mass densities (g/mL) follow ICRU Report 46 (1992) and
ICRP Publication 110 (2009) tissue compositions, rounded: adipose 0.95, soft tissue 1.03, lung (inflated)
0.26, liver 1.06, spleen 1.06, kidney 1.05, brain 1.04, urine 1.02, spongiosa 1.18, cortical bone 1.92;
sclerotic (osteoblastic) prostate-cancer bone lesions are given 1.60 (between spongiosa and cortical bone).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "Shape",
    "Ellipsoid",
    "EllipticCylinder",
    "Tissue",
    "TISSUES",
    "SEG_STRUCTURES",
    "paint_labels",
    "lookup_tables",
    "ANATOMY_SCALE_CENTER_MM",
]


@dataclass(frozen=True)
class Shape:
    """Base class: a solid in body coordinates (mm)."""

    def bounds_mm(self) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        """Axis-aligned bounding box of the solid: (lower corner, upper corner) as (x, y, z) in mm."""
        raise NotImplementedError

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """Boolean mask of the points ``(x, y, z)`` (mm, broadcastable arrays) that lie inside the solid."""
        raise NotImplementedError


@dataclass(frozen=True)
class Ellipsoid(Shape):
    """Ellipsoid with semi-axes ``radii`` (mm) along x, y and z around ``center`` (mm)."""
    center: tuple[float, float, float]
    radii: tuple[float, float, float]

    def bounds_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """``center ± radii`` (mm)."""
        c, r = np.asarray(self.center), np.asarray(self.radii)
        return c - r, c + r

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """``((x-cx)/a)² + ((y-cy)/b)² + ((z-cz)/c)² <= 1``."""
        cx, cy, cz = self.center
        a, b, c = self.radii
        return ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 + ((z - cz) / c) ** 2 <= 1.0


@dataclass(frozen=True)
class EllipticCylinder(Shape):
    """Cylinder along z with an elliptic cross-section."""

    center_xy: tuple[float, float]
    radii_xy: tuple[float, float]
    z_range: tuple[float, float]

    def bounds_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """``center_xy ± radii_xy`` in x and y, ``z_range`` in z (mm)."""
        cx, cy = self.center_xy
        a, b = self.radii_xy
        return np.array([cx - a, cy - b, self.z_range[0]]), np.array([cx + a, cy + b, self.z_range[1]])

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """``((x-cx)/a)² + ((y-cy)/b)² <= 1`` and ``z`` within ``z_range`` (ends included)."""
        cx, cy = self.center_xy
        a, b = self.radii_xy
        return (((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1.0) & (z >= self.z_range[0]) & (z <= self.z_range[1])


@dataclass(frozen=True)
class Tissue:
    """A labelled tissue region.

    ``compartment`` is the kinetic compartment its activity comes from (a key of ``CYCLE1_KINETICS``);
    ``weight`` the relative concentration within a shared compartment (only ``background`` is shared);
    ``structure`` the SEG structure it belongs to (None: not segmented).
    """

    label: int
    name: str
    hu: float
    density_g_per_mL: float
    compartment: str
    shapes: tuple[Shape, ...]
    structure: str | None = None
    weight: float = 1.0


# Lumbar vertebra k (k = 0 is L5) spans z in [-230 + 28 k, -208 + 28 k] mm: 22 mm bodies, 6 mm discs.
_VERTEBRA_PITCH_MM = 28.0
_VERTEBRA_HEIGHT_MM = 22.0
_SPINE_XY = (0.0, 65.0)


def _vertebrae(first: int, last: int, radius_mm: float) -> tuple[Shape, ...]:
    return tuple(
        EllipticCylinder(_SPINE_XY, (radius_mm, radius_mm),
                         (-230.0 + _VERTEBRA_PITCH_MM * k, -230.0 + _VERTEBRA_PITCH_MM * k + _VERTEBRA_HEIGHT_MM))
        for k in range(first, last + 1)
    )


def _pair(center: tuple[float, float, float], radii: tuple[float, float, float],
          right_z_shift_mm: float = 0.0) -> tuple[Shape, ...]:
    x, y, z = center
    return (Ellipsoid((x, y, z), radii), Ellipsoid((-x, y, z + right_z_shift_mm), radii))


_SOFT = 40.0
_BG = "background"
# Paint order matters: later tissues overwrite earlier ones.
TISSUES: tuple[Tissue, ...] = (
    Tissue(1, "subcutaneous_fat", -100.0, 0.95, _BG, (EllipticCylinder((0.0, 5.0), (170.0, 110.0), (-300.0, 62.0)),),
           weight=0.3),
    Tissue(2, "soft_tissue", _SOFT, 1.03, _BG, (
        EllipticCylinder((0.0, 5.0), (155.0, 97.0), (-300.0, 55.0)),   # trunk muscles and viscera
        EllipticCylinder((0.0, 10.0), (52.0, 55.0), (50.0, 140.0)),    # neck
        Ellipsoid((0.0, 0.0, 200.0), (72.0, 90.0, 100.0)),             # head (face, scalp)
    )),
    Tissue(3, "skull", 700.0, 1.92, _BG, (Ellipsoid((0.0, 0.0, 225.0), (68.0, 86.0, 78.0)),), weight=0.3),
    Tissue(4, "brain", 35.0, 1.04, _BG, (Ellipsoid((0.0, 0.0, 225.0), (62.0, 80.0, 72.0)),), weight=0.05),
    Tissue(5, "lungs", -800.0, 0.26, _BG, _pair((85.0, 5.0, -5.0), (60.0, 75.0, 62.0)), weight=0.3),
    Tissue(6, "heart", _SOFT, 1.05, _BG, (Ellipsoid((15.0, -25.0, -35.0), (50.0, 45.0, 45.0)),), weight=1.5),
    Tissue(7, "vertebral_cortex", 700.0, 1.92, _BG, _vertebrae(-1, 13, 17.0) + (
        EllipticCylinder(_SPINE_XY, (30.0, 20.0), (-300.0, -236.0)),   # sacrum
    ), weight=0.3),
    Tissue(8, "spongiosa", 250.0, 1.18, _BG, _vertebrae(5, 13, 14.0) + (
        EllipticCylinder(_SPINE_XY, (26.0, 16.0), (-300.0, -240.0)),
    ), weight=0.6),
    Tissue(9, "iliac_cortex", 700.0, 1.92, _BG, _pair((95.0, 40.0, -225.0), (40.0, 15.0, 40.0)), weight=0.3),
    Tissue(10, "iliac_spongiosa", 250.0, 1.18, _BG, _pair((95.0, 40.0, -225.0), (34.0, 10.0, 34.0)), weight=0.6),
    Tissue(11, "liver", 55.0, 1.06, "liver", (Ellipsoid((-70.0, 0.0, -95.0), (88.0, 78.0, 52.0)),), "liver"),
    Tissue(12, "spleen", 45.0, 1.06, "spleen", (Ellipsoid((95.0, 35.0, -95.0), (32.0, 42.0, 38.0)),), "spleen"),
    Tissue(13, "kidneys", 35.0, 1.05, "kidneys", _pair((75.0, 50.0, -150.0), (28.0, 24.0, 52.0), -15.0), "kidneys"),
    Tissue(14, "bladder", 5.0, 1.02, "bladder", (Ellipsoid((0.0, -45.0, -240.0), (40.0, 32.0, 25.0)),), "bladder"),
    Tissue(15, "eyes", 10.0, 1.01, _BG, _pair((32.0, -62.0, 205.0), (12.0, 12.0, 12.0)), weight=0.1),
    Tissue(16, "parotid_glands", 30.0, 1.03, "parotid_glands", _pair((55.0, 5.0, 160.0), (12.0, 20.0, 22.0)),
           "parotid_glands"),
    Tissue(17, "submandibular_glands", 40.0, 1.03, "submandibular_glands",
           _pair((32.0, -25.0, 122.0), (14.0, 11.0, 10.0)), "submandibular_glands"),
    Tissue(18, "lacrimal_glands", 40.0, 1.03, "lacrimal_glands", _pair((42.0, -58.0, 220.0), (9.0, 6.0, 4.0)),
           "lacrimal_glands"),
    # Red-marrow surrogate: the spongiosa of the lumbar vertebral bodies L1-L5.
    Tissue(19, "red_marrow", 250.0, 1.18, "red_marrow", _vertebrae(0, 4, 14.0), "red_marrow"),
    Tissue(20, "lesion_bone_1", 600.0, 1.60, "lesion_bone_1", (Ellipsoid((0.0, 65.0, 5.0), (12.0, 12.0, 12.0)),),
           "lesion_bone_1"),
    Tissue(21, "lesion_bone_2", 600.0, 1.60, "lesion_bone_2", (Ellipsoid((95.0, 40.0, -222.0), (9.0, 9.0, 9.0)),),
           "lesion_bone_2"),
    Tissue(22, "lesion_bone_3", 600.0, 1.60, "lesion_bone_3", (Ellipsoid((-95.0, 40.0, -232.0), (6.5, 6.5, 6.5)),),
           "lesion_bone_3"),
    Tissue(23, "lesion_node_1", 45.0, 1.03, "lesion_node_1", (Ellipsoid((30.0, 25.0, -175.0), (11.0, 11.0, 11.0)),),
           "lesion_node_1"),
    Tissue(24, "lesion_node_2", 45.0, 1.03, "lesion_node_2", (Ellipsoid((55.0, 5.0, 55.0), (7.0, 7.0, 7.0)),),
           "lesion_node_2"),
    Tissue(25, "lesion_node_3", 45.0, 1.03, "lesion_node_3", (Ellipsoid((-58.0, 5.0, -212.0), (13.0, 13.0, 13.0)),),
           "lesion_node_3"),
)

#: SEG structures in segment-number order; ``body`` is every non-air voxel.
SEG_STRUCTURES: tuple[str, ...] = (
    "body", "kidneys", "liver", "spleen", "parotid_glands", "submandibular_glands", "lacrimal_glands",
    "red_marrow", "bladder", "lesion_bone_1", "lesion_bone_2", "lesion_bone_3", "lesion_node_1",
    "lesion_node_2", "lesion_node_3",
)

#: Centre (LPS mm) about which ``paint_labels(scale=...)`` scales the anatomy: mid-way between the bladder floor and
#: the lacrimal glands, so a patient smaller in z keeps every segmented structure inside the SPECT field of view.
ANATOMY_SCALE_CENTER_MM = (0.0, 5.0, -20.0)

AIR_HU = -1000.0
AIR_DENSITY_G_PER_ML = 0.0012  # dry air at 20 C, ICRU 46


def lookup_tables() -> tuple[np.ndarray, np.ndarray]:
    """HU and density (g/mL) per label (index = label; label 0 is air)."""
    n = max(t.label for t in TISSUES) + 1
    hu = np.full(n, AIR_HU)
    rho = np.full(n, AIR_DENSITY_G_PER_ML)
    for t in TISSUES:
        hu[t.label] = t.hu
        rho[t.label] = t.density_g_per_mL
    return hu, rho


def scanner_hu_density_points() -> tuple[tuple[float, float], ...]:
    """The demo CT scanner's HU -> mass density calibration, as a site would measure it with a density phantom.

    The demo's tissues pair each CT number with a density (``TISSUES``); the calibration is the piecewise-linear
    curve through those pairs (air first, tissues sharing a CT number averaged), sorted by HU. The pipeline uses it
    for the demo patient (``theratwin.pipeline.run_demo``) exactly as a clinic configures its own scanner's curve
    (``stage_options["dosimetry"]["hu_density_points"]``).
    """
    hu, rho = lookup_tables()
    pairs: dict[float, list[float]] = {}
    for h, r in zip(hu[1:], rho[1:], strict=True):
        pairs.setdefault(float(h), []).append(float(r))
    points = [(float(AIR_HU), float(AIR_DENSITY_G_PER_ML))]
    points += [(h, float(np.mean(v))) for h, v in sorted(pairs.items()) if h > AIR_HU]
    return tuple(points)


def paint_labels(
    shape_zyx: tuple[int, int, int],
    origin_mm: tuple[float, float, float],
    spacing_mm: float,
    rotation: np.ndarray | None = None,
    translation_mm: np.ndarray | None = None,
    scale: tuple[float, float, float] | None = None,
) -> np.ndarray:
    """Tissue labels (uint8) on an axis-aligned LPS grid, with the body moved rigidly.

    Parameters
    ----------
    shape_zyx, origin_mm, spacing_mm
        The grid (isotropic spacing in mm; origin = LPS centre of voxel 0).
    rotation, translation_mm
        Rigid motion of the patient in the scanner: a body point ``p`` appears at ``R p + t``. Identity if None.
        Each scanner voxel is evaluated at the body point ``R^T (x - t)``, so shapes stay exact (no resampling).
    scale
        Body habitus: factors (x, y, z) applied to every shape about :data:`ANATOMY_SCALE_CENTER_MM` (the shapes
        stay exact: a body point ``b`` is tested at ``c + (b - c) / s``). None: the reference anatomy.
    """
    R = np.eye(3) if rotation is None else np.asarray(rotation, float)
    t = np.zeros(3) if translation_mm is None else np.asarray(translation_mm, float)
    s_xyz = np.ones(3) if scale is None else np.asarray(scale, float)
    c_xyz = np.asarray(ANATOMY_SCALE_CENTER_MM, float)
    labels = np.zeros(shape_zyx, dtype=np.uint8)
    o = np.asarray(origin_mm, float)
    nz, ny, nx = shape_zyx
    for tissue in TISSUES:
        for shape in tissue.shapes:
            lo, hi = shape.bounds_mm()
            lo, hi = c_xyz + (lo - c_xyz) * s_xyz, c_xyz + (hi - c_xyz) * s_xyz
            corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
            moved = corners @ R.T + t
            i0 = np.floor((moved.min(0) - o) / spacing_mm).astype(int) - 1
            i1 = np.ceil((moved.max(0) - o) / spacing_mm).astype(int) + 2
            i0 = np.maximum(i0, 0)
            i1 = np.minimum(i1, [nx, ny, nz])
            if np.any(i1 <= i0):
                continue
            xs = o[0] + spacing_mm * np.arange(i0[0], i1[0])
            ys = o[1] + spacing_mm * np.arange(i0[1], i1[1])
            zs = o[2] + spacing_mm * np.arange(i0[2], i1[2])
            X, Y, Z = xs[None, None, :] - t[0], ys[None, :, None] - t[1], zs[:, None, None] - t[2]
            # body coordinates = R^T (x - t), broadcast over the box
            bx = R[0, 0] * X + R[1, 0] * Y + R[2, 0] * Z
            by = R[0, 1] * X + R[1, 1] * Y + R[2, 1] * Z
            bz = R[0, 2] * X + R[1, 2] * Y + R[2, 2] * Z
            if scale is not None:
                bx, by, bz = (c_xyz[0] + (bx - c_xyz[0]) / s_xyz[0], c_xyz[1] + (by - c_xyz[1]) / s_xyz[1],
                              c_xyz[2] + (bz - c_xyz[2]) / s_xyz[2])
            inside = shape.inside(bx, by, bz)
            box = labels[i0[2]:i1[2], i0[1]:i1[1], i0[0]:i1[0]]
            box[inside] = tissue.label
    return labels
