"""Time-activity curves of structures from registered quantitative images, with uncertainties and
partial-volume recovery.

Uncertainty model (after Gear et al. 2018, EANM guidelines on uncertainty analysis for MRT dosimetry,
EJNMMI 45:2456-74, sections "Activity" and "Time-integrated activity"):

- *counting statistics* (uncorrelated between time points): ``N = A * S * dt`` counts from the activity
  ``A`` (MBq), the system sensitivity ``S`` (counts/(MBq s)) and the acquisition duration ``dt`` (s) when
  both are known; relative SD ``1/sqrt(N)`` (Poisson; reconstruction noise amplification is not included);
- *random per-scan component* (uncorrelated; registration residual, reconstruction and patient set-up),
  relative SD ``random_rel_sd`` (default 3 %);
- *calibration* of the camera (fully correlated between the scans of one camera), relative SD
  ``calibration_rel_sd`` (default 5 %; Gear et al. 2018 quote a few per cent for a well-characterised
  calibration);
- *segmentation / volume* (correlated: the same VOI is propagated to every scan), relative SD
  ``segmentation_rel_sd`` (default 3 %);
- *recovery coefficient*: when a partial-volume correction is applied, its own uncertainty, taken as
  ``recovery_rel_sd_of_correction`` (default 25 %) of the size of the correction ``(1/RC - 1)``.

The uncorrelated components weight the curve fit; the correlated ones scale every sample together and so go
straight onto the TIA (``systematic_rel_sd``), as Gear et al. recommend.

Partial-volume recovery (optional, off unless a system FWHM is given): for a structure with uniform
activity imaged with an isotropic Gaussian point-spread function of ``system_fwhm_mm``, the fraction of its
activity that stays inside its own VOI (the self term of the geometric transfer matrix, Rousset et al. 1998
J Nucl Med 39:904-11) is

- ``method="mask"``: ``RC = sum(m * (G * m)) / sum(m)`` computed on the actual (fractional) mask ``m``;
- ``method="sphere"``: the same for a sphere of the structure's volume, ``RC = integral_0^{2R} g(r) p(r) dr``
  with the sphere's normalised set covariogram ``g(r) = 1 - 3r/(4R) + r^3/(16R^3)`` and the Maxwell density
  ``p(r)`` of the length of a 3-D Gaussian displacement (recovery of spheres: Hoffman et al. 1979 J Comput
  Assist Tomogr 3:299-308).

- ``method="gtm"``: the geometric transfer matrix itself (Rousset et al. 1998): the structures are made
  disjoint (smaller structures take precedence where masks overlap; the body, if given, becomes the
  "remainder of the body" region, and everything outside it one more region), the regional spread functions
  ``G * p_j`` give ``W_ij = sum(p_i (G * p_j)) / sum(p_i)``, and the true regional concentrations ``T`` solve
  ``W T = c`` for the measured regional means ``c`` at every time point. This removes spill-in between the
  segmented regions as well as spill-out, but assumes every region is uniform: where the unsegmented
  remainder is not (e.g. a bone lesion in cold bone next to a hot blood pool) it over-subtracts spill-in
  into small structures. On the demo patient it fixes the spleen and red marrow (spill-in from kidneys and
  liver) but underestimates small lesions by 15-35 %, where ``"mask"`` is within a few per cent; ``"mask"``
  is therefore the default.

With ``"mask"`` or ``"sphere"``, only structures up to ``max_volume_mL`` (default: all) are corrected, never by more than ``1/min_rc``. The
correction accounts for spill-out only: activity spilling *in* from hot neighbours (e.g. into the spleen or
red marrow next to the kidneys) is not removed, so such structures stay overestimated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigurationError, InvalidInputError
from ..study import ImageVolume

__all__ = [
    "ActivityUncertaintyModel",
    "RecoveryModel",
    "StructureTac",
    "structure_tacs",
    "sphere_recovery_coefficient",
    "mask_recovery_coefficient",
    "gtm_correction",
]

_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))  # Gaussian FWHM = 2 sqrt(2 ln 2) sigma


@dataclass
class ActivityUncertaintyModel:
    """Components of the activity uncertainty (relative SDs; see the module docstring)."""

    calibration_rel_sd: float = 0.05
    segmentation_rel_sd: float = 0.03
    random_rel_sd: float = 0.03
    counting: bool = True
    recovery_rel_sd_of_correction: float = 0.25

    def __post_init__(self) -> None:
        for k, v in asdict(self).items():
            if k != "counting" and (not isinstance(v, (int, float)) or not 0 <= v < 1):
                raise ConfigurationError(f"Uncertainty component {k} must be a relative SD in [0, 1); got {v!r}.")


@dataclass
class RecoveryModel:
    """Partial-volume recovery settings (see the module docstring).

    Attributes
    ----------
    method
        ``"none"``, ``"mask"``, ``"sphere"`` or ``"gtm"``.
    system_fwhm_mm
        FWHM of the reconstructed system resolution (mm); None disables the correction.
    max_volume_mL
        Only structures up to this volume are corrected (None: every structure; the mask method accounts
        for the shape, so large structures get RC close to 1 anyway).
    min_rc
        Corrections are never larger than ``1/min_rc``; smaller RCs are clipped and reported.
    """

    method: str = "mask"
    system_fwhm_mm: float | None = None
    max_volume_mL: float | None = None
    min_rc: float = 0.3

    def __post_init__(self) -> None:
        if self.method not in ("none", "mask", "sphere", "gtm"):
            raise ConfigurationError(
                f"Recovery method must be 'none', 'mask', 'sphere' or 'gtm'; got {self.method!r}.")
        if self.system_fwhm_mm is not None and not self.system_fwhm_mm > 0:
            raise ConfigurationError(f"system_fwhm_mm must be > 0 mm; got {self.system_fwhm_mm}.")

    @property
    def active(self) -> bool:
        return self.method != "none" and self.system_fwhm_mm is not None


@dataclass
class StructureTac:
    """Activity of one structure at each time point.

    Attributes
    ----------
    activity_MBq
        Activity (MBq), recovery-corrected when ``recovery_coefficient < 1``.
    activity_sd_MBq
        Total SD of each sample (all components).
    activity_sd_random_MBq
        Uncorrelated part of the SD (counting + random), used as fit weights.
    systematic_rel_sd
        Relative SD common to all samples (calibration, segmentation, recovery); applies to the TIA.
    components_rel_sd
        Each component's relative SD per sample.
    """

    structure: str
    time_h: np.ndarray
    activity_MBq: np.ndarray
    activity_sd_MBq: np.ndarray
    activity_sd_random_MBq: np.ndarray
    systematic_rel_sd: float
    volume_mL: float
    recovery_coefficient: float = 1.0
    components_rel_sd: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def sphere_recovery_coefficient(volume_mL: float, system_fwhm_mm: float) -> float:
    """Mean recovery in a sphere of ``volume_mL`` imaged with a Gaussian PSF of ``system_fwhm_mm``.

    ``RC = integral_0^{2R} g(r) p(r) dr`` (see the module docstring); dimensionless, in (0, 1].
    """
    if volume_mL <= 0 or system_fwhm_mm <= 0:
        raise InvalidInputError(f"Sphere RC needs volume > 0 mL and FWHM > 0 mm; got {volume_mL}, {system_fwhm_mm}.")
    radius_mm = (3.0 * volume_mL * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
    sigma = system_fwhm_mm * _FWHM_TO_SIGMA
    r = np.linspace(0.0, 2.0 * radius_mm, 4001)
    g = 1.0 - 0.75 * r / radius_mm + r**3 / (16.0 * radius_mm**3)  # sphere set covariogram / volume
    p = math.sqrt(2.0 / math.pi) * r**2 / sigma**3 * np.exp(-(r**2) / (2.0 * sigma**2))  # Maxwell density
    return float(np.trapezoid(g * p, r))


def mask_recovery_coefficient(mask: np.ndarray, spacing_mm: Sequence[float], system_fwhm_mm: float) -> float:
    """Recovery of uniform activity in a (fractional) mask: ``sum(m (G*m)) / sum(m)``.

    ``spacing_mm`` is (x, y, z) as in :class:`~theratwin.Geometry`; the mask is ``(z, y, x)``.
    """
    from scipy.ndimage import gaussian_filter

    m = np.asarray(mask, dtype=np.float32)
    total = float(m.sum())
    if total <= 0:
        return 1.0
    sig_vox = [system_fwhm_mm * _FWHM_TO_SIGMA / s for s in (spacing_mm[2], spacing_mm[1], spacing_mm[0])]
    nz = np.nonzero(m)
    pad = [int(math.ceil(4 * s)) + 1 for s in sig_vox]
    lo = [max(int(a.min()) - p, 0) for a, p in zip(nz, pad, strict=True)]
    hi = [min(int(a.max()) + p + 1, n) for a, p, n in zip(nz, pad, m.shape, strict=True)]
    sub = m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    # zero padding outside the box: activity blurred out of the image is lost, as in a real scan
    blurred = gaussian_filter(sub, sigma=sig_vox, mode="constant", cval=0.0)
    return float(np.sum(sub * blurred) / total)


def gtm_correction(images: Sequence[np.ndarray], masks: dict[str, np.ndarray], spacing_mm: Sequence[float],
                   system_fwhm_mm: float, *, body: str | None = None) -> tuple[dict[str, np.ndarray], float]:
    """Partial-volume-corrected activities by the geometric transfer matrix (Rousset et al. 1998).

    Parameters
    ----------
    images
        Activity concentration arrays (Bq/mL), ``(z, y, x)``, one per time point.
    masks
        ``{structure: fractional mask}`` on the same grid (may overlap).
    spacing_mm
        Voxel size (x, y, z) in mm.
    system_fwhm_mm
        FWHM of the isotropic Gaussian system resolution (mm).
    body
        Name of the body outline among ``masks`` (its remainder becomes a region), if any.

    Returns
    -------
    (activities, condition_number)
        ``{structure: activity per time point in units of Bq/mL x voxel}`` (multiply by the voxel volume)
        and the condition number of the transfer matrix.
    """
    from scipy.ndimage import gaussian_filter

    names = [n for n in masks if n != body]
    mk = {n: np.clip(np.asarray(masks[n], dtype=np.float32), 0.0, 1.0) for n in masks}
    # disjoint regions: smaller structures first (a lesion inside an organ keeps its own voxels)
    order = sorted(names, key=lambda n: float(mk[n].sum()))
    covered = np.zeros(next(iter(mk.values())).shape, np.float32)
    regions: list[np.ndarray] = []
    for n in order:
        p = mk[n] * (1.0 - covered)
        covered = np.minimum(covered + p, 1.0)
        regions.append(p)
    if body is not None:
        regions.append(np.clip(mk[body] - covered, 0.0, 1.0))  # remainder of the body
        regions.append(np.clip(1.0 - np.maximum(mk[body], covered), 0.0, 1.0))  # outside the body
    else:
        regions.append(1.0 - covered)  # everything not segmented
    keep = [i for i, r in enumerate(regions) if r.sum() > 0]
    regions = [regions[i] for i in keep]
    sig = [system_fwhm_mm * _FWHM_TO_SIGMA / sp for sp in (spacing_mm[2], spacing_mm[1], spacing_mm[0])]
    sizes = np.array([float(r.sum()) for r in regions])
    w = np.empty((len(regions), len(regions)))
    for j, r in enumerate(regions):  # one regional spread function per region (few regions)
        rsf = gaussian_filter(r, sigma=sig, mode="constant", cval=0.0)
        w[:, j] = [float(np.sum(ri * rsf)) for ri in regions]
    w /= sizes[:, None]
    cond = float(np.linalg.cond(w))
    out: dict[str, np.ndarray] = {n: np.zeros(len(images)) for n in masks}
    overlap = {n: np.array([float(np.sum(r * mk[n])) for r in regions]) for n in masks}
    for k, img in enumerate(images):
        img = np.asarray(img, dtype=np.float32)
        c = np.array([float(np.sum(r * img)) for r in regions]) / sizes
        true_conc = np.linalg.solve(w, c)
        for n in masks:
            out[n][k] = float(overlap[n] @ true_conc)
    return out, cond


def structure_tacs(
    images: Sequence[ImageVolume],
    masks: dict[str, np.ndarray],
    time_h: Sequence[float] | np.ndarray,
    *,
    acquisition_duration_s: Sequence[float] | None = None,
    counts_per_MBq_s: Sequence[float | None] | None = None,
    uncertainty: ActivityUncertaintyModel | None = None,
    recovery: RecoveryModel | None = None,
    body: str | None = None,
) -> dict[str, StructureTac]:
    """Activity (MBq) per structure and time point, with its uncertainty.

    Parameters
    ----------
    images
        Activity concentration images (Bq/mL), one per time point, all on the grid of the masks.
    masks
        ``{structure: fractional mask (z, y, x) in [0, 1]}`` on the same grid.
    time_h
        Time of each image (h since administration).
    acquisition_duration_s, counts_per_MBq_s
        Per image: acquisition duration (s) and system sensitivity (counts/(MBq s)); with both, counting
        statistics enter the uncertainty.
    uncertainty, recovery
        Uncertainty components and partial-volume recovery settings.
    body
        Name of the body-outline structure (used by ``recovery.method == "gtm"``).

    Returns
    -------
    dict
        ``{structure: StructureTac}``.
    """
    unc = uncertainty or ActivityUncertaintyModel()
    rec = recovery or RecoveryModel(method="none")
    t = np.asarray(time_h, float)
    if len(images) != t.size:
        raise InvalidInputError(f"{len(images)} images but {t.size} times; give one time per image.")
    if not images:
        raise InvalidInputError("No images given for the time-activity curves.")
    geom = images[0].geometry
    for im in images:
        if not im.geometry.same_grid(geom):
            raise InvalidInputError("All images must be on one grid (register and resample them first).")
        if im.unit not in ("Bq/mL", "BQML"):
            raise InvalidInputError(f"Images must be activity concentrations in Bq/mL; got unit {im.unit!r}.")
    vox_mL = geom.voxel_volume_mL
    durations = list(acquisition_duration_s) if acquisition_duration_s is not None else [None] * t.size
    sens = list(counts_per_MBq_s) if counts_per_MBq_s is not None else [None] * t.size
    out: dict[str, StructureTac] = {}
    arrays = [np.asarray(im.array, dtype=np.float32).ravel() for im in images]
    gtm: dict[str, np.ndarray] | None = None
    if rec.active and rec.method == "gtm":
        assert rec.system_fwhm_mm is not None
        gtm, cond = gtm_correction([im.array for im in images], masks, geom.spacing_mm, rec.system_fwhm_mm,
                                   body=body if body in masks else None)
    for name, m in masks.items():  # loop over structures (few), vectorised over voxels
        mm = np.asarray(m, dtype=np.float32)
        if mm.shape != geom.shape:
            raise InvalidInputError(f"Mask of '{name}' has shape {mm.shape}; the images are {geom.shape}.")
        mflat = mm.ravel()
        volume_mL = float(mflat.sum(dtype=np.float64)) * vox_mL
        # Bq/mL * mL -> Bq; / 1e6 -> MBq
        act = np.array([float(np.dot(mflat, a)) for a in arrays]) * vox_mL / 1e6
        notes: list[str] = []
        rc = 1.0
        if gtm is not None and volume_mL > 0:
            corrected = gtm[name] * vox_mL / 1e6
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(corrected > 0, act / corrected, np.nan)
            rc = float(np.nanmean(ratio)) if np.any(np.isfinite(ratio)) else 1.0
            if np.any(corrected < 0):
                notes.append("Geometric transfer matrix gave a negative activity (noise or misregistration); "
                             "the uncorrected activity is used.")
                rc = 1.0
            else:
                act = corrected
                notes.append(f"Partial-volume correction: geometric transfer matrix (FWHM {rec.system_fwhm_mm} mm, "
                             f"condition number {cond:.1f}); measured/corrected = {rc:.3f}.")
        elif rec.active and rec.method != "gtm" and volume_mL > 0 and (
                rec.max_volume_mL is None or volume_mL <= rec.max_volume_mL):
            assert rec.system_fwhm_mm is not None
            if rec.method == "mask":
                rc = mask_recovery_coefficient(mm, geom.spacing_mm, rec.system_fwhm_mm)
            else:
                rc = sphere_recovery_coefficient(volume_mL, rec.system_fwhm_mm)
            if rc < rec.min_rc:
                notes.append(f"Recovery coefficient {rc:.2f} below {rec.min_rc}: correction limited to "
                             f"1/{rec.min_rc:.2f}; the activity is still underestimated.")
                rc = rec.min_rc
            notes.append(f"Partial-volume correction: RC = {rc:.3f} ({rec.method}, FWHM {rec.system_fwhm_mm} mm, "
                         f"{volume_mL:.1f} mL).")
            act = act / rc
        comps: dict[str, list[float]] = {}
        count_rel = np.zeros(t.size)
        if unc.counting:
            for i in range(t.size):
                dur_s, sens_i = durations[i], sens[i]
                if dur_s and sens_i and act[i] > 0:
                    n_counts = act[i] * rc * float(sens_i) * float(dur_s)  # measured counts
                    count_rel[i] = 1.0 / math.sqrt(n_counts)
            comps["counting"] = count_rel.tolist()
        comps["random"] = [unc.random_rel_sd] * t.size
        rand_rel = np.sqrt(count_rel**2 + unc.random_rel_sd**2)
        rc_rel = unc.recovery_rel_sd_of_correction * abs(1.0 / rc - 1.0) if rc != 1.0 else 0.0
        sys_rel = math.sqrt(unc.calibration_rel_sd**2 + unc.segmentation_rel_sd**2 + rc_rel**2)
        comps["calibration"] = [unc.calibration_rel_sd] * t.size
        comps["segmentation"] = [unc.segmentation_rel_sd] * t.size
        if rc_rel:
            comps["recovery"] = [rc_rel] * t.size
        sd_rand = np.abs(act) * rand_rel
        sd_tot = np.abs(act) * np.sqrt(rand_rel**2 + sys_rel**2)
        out[name] = StructureTac(
            structure=name, time_h=t.copy(), activity_MBq=act, activity_sd_MBq=sd_tot,
            activity_sd_random_MBq=sd_rand, systematic_rel_sd=sys_rel, volume_mL=volume_mL,
            recovery_coefficient=rc, components_rel_sd=comps, notes=notes,
        )
    return out


def _as_dict(tac: StructureTac) -> dict[str, Any]:  # pragma: no cover - debugging helper
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in asdict(tac).items()}
