"""Simulation and DICOM export of the built-in demo patient (see the package docstring)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from .. import nuclides
from .._files import sha256_file
from .._version import __version__
from ..errors import InvalidInputError
from ..progress import ProgressCallback, report, scaled
from ..study.image import Geometry
from . import _dicom
from .kinetics import CYCLE1_KINETICS, Kinetics, cycle2_kinetics
from .phantom import SEG_STRUCTURES, TISSUES, lookup_tables, paint_labels
from .spec import _NUCLIDE, DEMO_PATIENT_SPEC, PatientSpec
from .truth import TRUTH_METHOD

__all__ = [
    "DEMO_SCHEMA_VERSION",
    "DEFAULT_SEED",
    "DemoOptions",
    "DemoPatient",
    "DemoSimulation",
    "SimulatedTimePoint",
    "SimulatedCycle",
    "simulate",
    "build_demo",
    "write_demo_dicom",
    "generator_fingerprint",
    "SENSITIVITY_CPS_PER_MBQ",
    "RESOLUTION_FWHM_MM",
]

#: Bump when the generated data change, so old caches are not reused (3: independent fine-grid dose truth).
DEMO_SCHEMA_VERSION = 3
DEFAULT_SEED = 20250303

#: System sensitivity of a dual-head SPECT camera with medium-energy collimators in a 20 % window at the
#: 208 keV Lu-177 photopeak, cps/MBq. Assumed value of the order reported for clinical 177Lu SPECT calibrations
#: (about 10 cps/MBq per head; e.g. the calibrations summarised in MIRD Pamphlet 26, Ljungberg et al. 2016,
#: JNM 57:151-162, and EANM 177Lu dosimetry guidance, Sjogreen Gleisner et al. 2022, EJNMMI 49:1778).
SENSITIVITY_CPS_PER_MBQ = 18.0
#: Reconstructed spatial resolution of 177Lu SPECT with resolution recovery (FWHM, mm): about 10-12 mm for
#: medium-energy collimators (MIRD Pamphlet 26). Modelled as an isotropic Gaussian.
RESOLUTION_FWHM_MM = 11.0
#: CT image noise (SD in HU) of a low-dose attenuation-correction CT, and its blur (Gaussian SD in fine voxels).
CT_NOISE_HU = 12.0
CT_BLUR_SIGMA_VOXELS = 0.6

_SPECT_FOV_MM = (614.4, 614.4, 537.6)  # x, y, z: 128 x 128 x 112 voxels of 4.8 mm
_CT_FOV_FRACTION = 208.0 / 256.0  # in-plane CT field of view (499 mm) relative to the SPECT one

#: The demo patient's PatientID and IssuerOfPatientID (an output folder's owner is checked before a run).
DEMO_PATIENT_ID: str = str(DEMO_PATIENT_SPEC.patient["id"])
DEMO_PATIENT_ISSUER: str = str(DEMO_PATIENT_SPEC.patient["issuer"])


@dataclass(frozen=True)
class DemoOptions:
    """What to simulate. The defaults give the realistic demo; tests switch effects off or use ``fast``.

    Parameters
    ----------
    fast
        Half resolution (SPECT 9.6 mm, CT 4.8 mm, 64 x 64 x 56 SPECT voxels) for quick tests.
    noise
        Poisson counting noise on SPECT and Gaussian noise on CT.
    blur
        SPECT resolution blur (Gaussian, ``RESOLUTION_FWHM_MM``) and a slight CT blur.
    misalign
        Rigid patient motion between time points (a few mm, about 1 degree).
    """

    fast: bool = False
    noise: bool = True
    blur: bool = True
    misalign: bool = True

    @property
    def spect_voxel_mm(self) -> float:
        """SPECT voxel size of the demo in mm: 4.8, or 9.6 with ``fast``."""
        return 9.6 if self.fast else 4.8

    @property
    def tag(self) -> str:
        """Short text naming the non-default options (used in the cache directory name)."""
        parts = [name for name, on in (("fast", self.fast), ("nonoise", not self.noise), ("noblur", not self.blur),
                                       ("static", not self.misalign)) if on]
        return "-".join(parts)


@dataclass
class SimulatedTimePoint:
    """One simulated SPECT/CT acquisition."""

    acquisition_start: datetime
    acquisition_duration_s: float
    n_projections: int
    rotation: np.ndarray
    translation_mm: np.ndarray
    spect_noiseless_Bq_per_mL: np.ndarray  # (z, y, x) float32, blurred if options.blur, no noise
    spect_Bq_per_mL: np.ndarray  # what is written (noisy if options.noise)
    ct_hu: np.ndarray  # (z, y, x) int16


@dataclass
class SimulatedCycle:
    """One simulated cycle of the demo patient: its administration (start, MBq), the true kinetics per
    compartment and the imaged time points."""
    number: int
    administration_start: datetime
    administered_MBq: float
    kinetics: dict[str, Kinetics]
    time_points: list[SimulatedTimePoint] = field(default_factory=list)


@dataclass
class DemoSimulation:
    """Everything simulated in memory (arrays on the SPECT and CT grids) plus the truth dictionary."""

    seed: int
    options: DemoOptions
    spect_geometry: Geometry
    ct_geometry: Geometry
    cycles: list[SimulatedCycle]
    seg_masks: dict[str, np.ndarray]  # on the reference CT grid
    truth: dict[str, Any]
    spec: PatientSpec = DEMO_PATIENT_SPEC


@dataclass(frozen=True)
class DemoPatient:
    """The demo patient on disk.

    Attributes
    ----------
    dicom_dir
        Folder with the DICOM files (SPECT, CT per time point, SEG).
    truth
        The ground truth (also in ``truth_path``).
    truth_path
        ``demo-truth.json``.
    """

    dicom_dir: Path
    truth: dict[str, Any]
    truth_path: Path


def _rotation_matrix(angles_deg: np.ndarray) -> np.ndarray:
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _block_mean(a: np.ndarray) -> np.ndarray:
    """Mean over 2x2x2 blocks (fine grid -> SPECT grid); strided adds are much faster than a 6-D mean."""
    b = a[0::2] + a[1::2]
    b = b[:, 0::2] + b[:, 1::2]
    b = b[:, :, 0::2] + b[:, :, 1::2]
    return b / 8.0


@dataclass(frozen=True)
class _FineGrid:
    """The 2x-finer grid the anatomy is painted on (its centre block is the CT)."""

    shape: tuple[int, int, int]
    origin: tuple[float, float, float]
    spacing: float


def _grids(options: DemoOptions) -> tuple[Geometry, _FineGrid, Geometry, tuple[int, int]]:
    v = options.spect_voxel_mm
    nx, ny, nz = (int(round(fov / v)) for fov in _SPECT_FOV_MM)
    spect_origin = (-(nx - 1) * v / 2.0, -(ny - 1) * v / 2.0, -(nz - 1) * v / 2.0)
    spect = Geometry((nz, ny, nx), (v, v, v), spect_origin)
    fv = v / 2.0
    fine = _FineGrid((2 * nz, 2 * ny, 2 * nx), (spect_origin[0] - fv / 2.0, spect_origin[1] - fv / 2.0,
                                                 spect_origin[2] - fv / 2.0), fv)
    ct_n = int(round(2 * nx * _CT_FOV_FRACTION))
    off = (2 * nx - ct_n) // 2
    ct_origin = (fine.origin[0] + off * fv, fine.origin[1] + off * fv, fine.origin[2])
    ct = Geometry((2 * nz, ct_n, ct_n), (fv, fv, fv), ct_origin)
    return spect, fine, ct, (off, ct_n)


def _compartment_luts(labels_ref: np.ndarray, voxel_mL: float) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Per compartment: a per-label weight table (1/mL) so that conc = A(t) * weight[label], and volumes (mL)."""
    n_labels = max(t.label for t in TISSUES) + 1
    counts = np.bincount(labels_ref.ravel(), minlength=n_labels).astype(float)
    per_comp: dict[str, np.ndarray] = {}
    volumes: dict[str, float] = {}
    for t in TISSUES:
        per_comp.setdefault(t.compartment, np.zeros(n_labels))
    for comp, lut in per_comp.items():
        members = [t for t in TISSUES if t.compartment == comp]
        denom = sum(t.weight * counts[t.label] * voxel_mL for t in members)
        volumes[comp] = sum(counts[t.label] * voxel_mL for t in members)
        for t in members:
            lut[t.label] = t.weight / denom if denom > 0 else 0.0
    return per_comp, volumes


def _conc_lut_Bq_per_mL(kinetics: dict[str, Kinetics], luts: dict[str, np.ndarray], time_h: float,
                        administered_MBq: float) -> np.ndarray:
    total = np.zeros(next(iter(luts.values())).shape)
    for comp, lut in luts.items():
        a_MBq = float(kinetics[comp].activity_MBq(time_h, administered_MBq))
        total += a_MBq * 1e6 * lut
    return total


def _tia_lut_Bq_h_per_mL(kinetics: dict[str, Kinetics], luts: dict[str, np.ndarray],
                         administered_MBq: float) -> np.ndarray:
    total = np.zeros(next(iter(luts.values())).shape)
    for comp, lut in luts.items():
        total += kinetics[comp].tia_MBq_h(administered_MBq) * 1e6 * lut
    return total


def _structure_labels() -> dict[str, list[int]]:
    out: dict[str, list[int]] = {"body": [t.label for t in TISSUES]}
    for name in SEG_STRUCTURES:
        if name != "body":
            out[name] = [t.label for t in TISSUES if t.structure == name]
    return out


def simulate(seed: int | None = None, options: DemoOptions | None = None,
             progress: ProgressCallback | None = None, *, spec: PatientSpec | None = None) -> DemoSimulation:
    """Simulate the demo patient (or another patient of the same phantom family) in memory (no files).

    Parameters
    ----------
    seed
        Random seed (default ``DEFAULT_SEED``); the result is deterministic for a seed, options and spec.
    options
        What to simulate (noise, blur, misalignment, fast grid).
    progress
        Optional callback ``(fraction, message)``.
    spec
        The patient (default :data:`DEMO_PATIENT_SPEC`, the built-in demo patient).

    Returns
    -------
    DemoSimulation
        Arrays, geometry, schedule and the ground-truth dictionary (without absorbed doses when
        ``theratwin.dosimetry`` is unavailable).
    """
    from scipy import ndimage

    seed = DEFAULT_SEED if seed is None else int(seed)
    options = options or DemoOptions()
    spec = spec or DEMO_PATIENT_SPEC
    scale = None if spec.anatomy_scale == (1.0, 1.0, 1.0) else spec.anatomy_scale
    rng = np.random.default_rng(seed)
    nuc = nuclides.get(_NUCLIDE)
    lam_phys_per_s = math.log(2.0) / (nuc.half_life_h * 3600.0)
    spect_geo, fine, ct_geo, (ct_off, ct_n) = _grids(options)
    fv = fine.spacing
    fine_voxel_mL = fv**3 / 1000.0
    hu_lut, rho_lut = lookup_tables()

    report(progress, 0.02, "painting reference anatomy")
    labels_ref = paint_labels(fine.shape, fine.origin, fv, scale=scale)
    luts, comp_volumes = _compartment_luts(labels_ref, fine_voxel_mL)

    # Schedule: administrations and imaging times (seeded jitter on realistic clock times).
    c1_start = datetime(2025, 3, 3, 9, 0, 0) + timedelta(seconds=int(rng.integers(600, 2400)))
    kin_c1 = dict(spec.cycles[0].kinetics or CYCLE1_KINETICS)
    kinetics = [kin_c1] + [dict(c.kinetics) if c.kinetics is not None else cycle2_kinetics(rng, kin_c1)
                           for c in spec.cycles[1:]]
    cycles: list[SimulatedCycle] = []
    start = c1_start
    for number, (cspec, kin) in enumerate(zip(spec.cycles, kinetics, strict=True), start=1):
        if number > 1:
            start = start + timedelta(days=cspec.days_after_previous, seconds=int(rng.integers(-3600, 5400)))
        cyc = SimulatedCycle(number, start, cspec.administered_MBq, kin)
        for nominal_h, jitter_h, n_proj, s_per_view in cspec.schedule:
            t_h = nominal_h + float(np.clip(rng.normal(0.0, jitter_h), -2 * jitter_h, 2 * jitter_h))
            acq = start + timedelta(seconds=int(round(t_h * 3600.0)))
            duration_s = n_proj / 2 * s_per_view + float(rng.integers(5, 40))  # two heads + gantry motion
            first = number == 1 and not cyc.time_points
            if options.misalign and not first:
                rot = _rotation_matrix(np.clip(rng.normal(0.0, 1.0, 3), -2.5, 2.5))
                trans = np.clip(rng.normal(0.0, 2.5, 3), -6.0, 6.0)
            else:
                rng.normal(0.0, 1.0, 6)  # keep the stream identical whatever the options
                rot, trans = np.eye(3), np.zeros(3)
            cyc.time_points.append(SimulatedTimePoint(acq, duration_s, n_proj, rot, trans,
                                                      np.zeros(0), np.zeros(0), np.zeros(0, np.int16)))
        cycles.append(cyc)

    n_tp = sum(len(c.time_points) for c in cycles)
    done = 0
    sigma_vox = RESOLUTION_FWHM_MM / (2.0 * math.sqrt(2.0 * math.log(2.0))) / options.spect_voxel_mm
    for cyc in cycles:
        for tp in cyc.time_points:
            report(progress, 0.05 + 0.5 * done / n_tp, f"simulating cycle {cyc.number} at "
                   f"{(tp.acquisition_start - cyc.administration_start).total_seconds() / 3600:.0f} h")
            static = np.allclose(tp.rotation, np.eye(3)) and not np.any(tp.translation_mm)
            labels = labels_ref if static else paint_labels(fine.shape, fine.origin, fv, tp.rotation,
                                                           tp.translation_mm, scale=scale)
            t_h = (tp.acquisition_start - cyc.administration_start).total_seconds() / 3600.0
            conc_lut = _conc_lut_Bq_per_mL(cyc.kinetics, luts, t_h, cyc.administered_MBq).astype(np.float32)
            spect = _block_mean(conc_lut[labels]).astype(np.float32)
            if options.blur:
                spect = ndimage.gaussian_filter(spect, sigma_vox, mode="constant", truncate=4.0)
            spect = np.clip(spect, 0.0, None).astype(np.float32)
            tp.spect_noiseless_Bq_per_mL = spect
            if options.noise:
                # expected counts per voxel over the acquisition (decay during acquisition included)
                dur = tp.acquisition_duration_s
                decay_integral_s = (1.0 - math.exp(-lam_phys_per_s * dur)) / lam_phys_per_s
                k = spect_geo.voxel_volume_mL * 1e-6 * SENSITIVITY_CPS_PER_MBQ * decay_integral_s
                counts = rng.poisson(spect.astype(np.float64) * k)
                tp.spect_Bq_per_mL = (counts / k).astype(np.float32)
            else:
                tp.spect_Bq_per_mL = spect
            ct = hu_lut[labels[:, ct_off:ct_off + ct_n, ct_off:ct_off + ct_n]].astype(np.float32)
            if options.blur:
                ct = ndimage.gaussian_filter(ct, CT_BLUR_SIGMA_VOXELS, mode="nearest")
            if options.noise:
                ct = ct + rng.normal(0.0, CT_NOISE_HU, ct.shape).astype(np.float32)
            tp.ct_hu = np.clip(np.rint(ct), -1024, 3071).astype(np.int16)
            done += 1

    report(progress, 0.56, "computing ground truth")
    struct_labels = _structure_labels()
    ref_ct_labels = labels_ref[:, ct_off:ct_off + ct_n, ct_off:ct_off + ct_n]
    seg_masks = {}
    for name in SEG_STRUCTURES:
        lut = np.zeros(256, bool)
        lut[struct_labels[name]] = True
        seg_masks[name] = lut[ref_ct_labels]
    truth = _truth(seed, options, cycles, labels_ref, luts, comp_volumes, rho_lut, spect_geo, ct_geo, fine_voxel_mL,
                   struct_labels, spec, scaled(progress, 0.6, 0.98))
    report(progress, 1.0, "simulation done")
    return DemoSimulation(seed, options, spect_geo, ct_geo, cycles, seg_masks, truth, spec)


def _truth(seed: int, options: DemoOptions, cycles: list[SimulatedCycle], labels_ref: np.ndarray,
           luts: dict[str, np.ndarray], comp_volumes: dict[str, float], rho_lut: np.ndarray, spect_geo: Geometry,
           ct_geo: Geometry, fine_voxel_mL: float, struct_labels: dict[str, list[int]],
           spec: PatientSpec, progress: ProgressCallback | None = None) -> dict[str, Any]:
    n_labels = len(rho_lut)
    counts = np.bincount(labels_ref.ravel(), minlength=n_labels).astype(float)
    sigma_vox = RESOLUTION_FWHM_MM / (2.0 * math.sqrt(2.0 * math.log(2.0))) / options.spect_voxel_mm
    density_spect = _block_mean(rho_lut.astype(np.float32)[labels_ref])
    dose_available = True
    try:
        from .. import dosimetry  # noqa: F401
        dose_map_fn = dosimetry.dose_map
    except (ImportError, AttributeError):
        dose_available = False

    out_cycles = []
    truth_meta: dict[str, Any] = {}
    tia_luts = [_tia_lut_Bq_h_per_mL(cyc.kinetics, luts, cyc.administered_MBq) for cyc in cycles]
    true_doses_per_cycle: list[dict[str, Any]] = [{} for _ in cycles]
    if dose_available:
        from .truth import structure_doses

        # the true doses: the phantom's own geometry, 1.2 mm electrons, full-range photons (see demo.truth)
        fine_truth = structure_doses(labels_ref, float(np.cbrt(fine_voxel_mL * 1000.0)), tia_luts, rho_lut,
                                     struct_labels, _NUCLIDE, subdivide=1 if options.fast else 2,
                                     self_doses=not options.fast,
                                     progress=scaled(progress, 0.0, 0.8))
        true_doses_per_cycle = fine_truth["structures"]
        truth_meta = {k: v for k, v in fine_truth.items() if k != "structures"}
    for ci, cyc in enumerate(cycles):
        tia_lut = tia_luts[ci]
        true_doses = true_doses_per_cycle[ci]
        voxelised_sum_per_label = None
        imaged_sum_per_label = None
        if dose_available:
            report(progress, 0.8 + 0.2 * ci / len(cycles), f"dose diagnostics of cycle {cyc.number}")
            # Diagnostics, not truths: the pipeline's own dose engine on 4.8 mm SPECT voxels, (a) on the exact TIA
            # averaged over each voxel ("voxelised": a perfect camera), (b) on that map blurred by the system
            # resolution ("as imaged": what a voxel method sees without partial-volume correction). Mass-weighted
            # mean over a structure = sum over its fine voxels of density x dose of the SPECT voxel holding them.
            from scipy import ndimage

            tia_map = _block_mean(tia_lut.astype(np.float32)[labels_ref])

            def per_label(dose_spect: np.ndarray) -> np.ndarray:
                d = np.repeat(np.repeat(np.repeat(np.asarray(dose_spect, np.float64), 2, axis=0), 2, axis=1), 2, axis=2)
                return np.bincount(labels_ref.ravel(), weights=d.ravel(), minlength=n_labels)

            voxelised_sum_per_label = per_label(dose_map_fn(tia_map, spect_geo.spacing_mm, _NUCLIDE, method="dvk",
                                                            density_g_per_mL=density_spect))
            if options.blur:
                tia_imaged = ndimage.gaussian_filter(tia_map, sigma_vox, mode="constant", truncate=4.0)
                imaged_sum_per_label = per_label(dose_map_fn(tia_imaged, spect_geo.spacing_mm, _NUCLIDE, method="dvk",
                                                             density_g_per_mL=density_spect))
        structures: dict[str, Any] = {}
        for name, labs in struct_labels.items():
            volume_mL = float(counts[labs].sum() * fine_voxel_mL)
            mass_g = float((counts[labs] * rho_lut[labs]).sum() * fine_voxel_mL)
            # TIA of the structure = sum over its labels of (label TIA concentration x label volume)
            tia_MBq_h = float((tia_lut[labs] * counts[labs]).sum() * fine_voxel_mL / 1e6)
            entry: dict[str, Any] = {"volume_mL": volume_mL, "mass_g": mass_g, "tia_MBq_h": tia_MBq_h}
            own = [t for t in TISSUES if t.structure == name]
            if own and own[0].compartment == name:
                kin = cyc.kinetics[name]
                entry["kinetics"] = kin.to_dict()
                entry["effective_half_life_h"] = kin.terminal_half_life_h
                entry["tia_check_MBq_h"] = kin.tia_MBq_h(cyc.administered_MBq)
            times_h = [(tp.acquisition_start - cyc.administration_start).total_seconds() / 3600 for tp in cyc.time_points]
            entry["activity_MBq_at_time_points"] = [
                float((_conc_lut_Bq_per_mL(cyc.kinetics, luts, t, cyc.administered_MBq)[labs] * counts[labs]).sum()
                      * fine_voxel_mL / 1e6)
                for t in times_h
            ]
            # separate parts (paired glands, vertebrae): the sphere model applies per part
            shapes = [len(t.shapes) for t in TISSUES if t.structure == name]
            if shapes:
                entry["parts"] = int(sum(shapes))
            if name in true_doses:
                td = true_doses[name]
                entry["mean_dose_Gy"] = td["mean_dose_Gy"]
                entry["mean_dose_Gy_per_GBq"] = td["mean_dose_Gy"] / (cyc.administered_MBq / 1000.0)
                if "self_dose_Gy" in td:
                    entry["self_dose_Gy"] = td["self_dose_Gy"]
                    entry["cross_dose_Gy"] = td["mean_dose_Gy"] - td["self_dose_Gy"]
            mass_sum = float((rho_lut[labs] * counts[labs]).sum())
            if voxelised_sum_per_label is not None and mass_sum > 0:
                entry["mean_dose_voxelised_Gy"] = float((rho_lut[labs] * voxelised_sum_per_label[labs]).sum()
                                                        / mass_sum)
            if imaged_sum_per_label is not None and mass_sum > 0:
                entry["mean_dose_as_imaged_Gy"] = float((rho_lut[labs] * imaged_sum_per_label[labs]).sum() / mass_sum)
            structures[name] = entry
        out_cycles.append({
            "cycle": cyc.number,
            "radiopharmaceutical": spec.radiopharmaceutical,
            "nuclide": _NUCLIDE,
            "administered_MBq": cyc.administered_MBq,
            "administration_start": cyc.administration_start.isoformat(),
            "time_points": [
                {
                    "acquisition_start": tp.acquisition_start.isoformat(),
                    "time_h": (tp.acquisition_start - cyc.administration_start).total_seconds() / 3600.0,
                    "acquisition_duration_s": tp.acquisition_duration_s,
                    "n_projections": tp.n_projections,
                    "misalignment": {
                        "convention": "a body point p of the reference (cycle 1, first) time point appears at "
                                      "R p + t (LPS mm) in this time point's scanner frame",
                        "rotation_matrix": tp.rotation.tolist(),
                        "translation_mm": tp.translation_mm.tolist(),
                        "rotation_deg": float(np.degrees(np.arccos(np.clip((np.trace(tp.rotation) - 1) / 2, -1, 1)))),
                    },
                }
                for tp in cyc.time_points
            ],
            "structures": structures,
            "compartment_kinetics": {k: v.to_dict() for k, v in cyc.kinetics.items()},
        })
    return {
        "schema": DEMO_SCHEMA_VERSION,
        "generator": f"theratwin.demo {__version__}",
        "seed": seed,
        "options": asdict(options),
        "patient_id": spec.patient["id"],
        "nuclide": _NUCLIDE,
        "radiopharmaceutical": spec.radiopharmaceutical,
        "imaging": {
            "spect_geometry": spect_geo.to_dict(),
            "ct_geometry": ct_geo.to_dict(),
            "spect_unit": "Bq/mL, decay-corrected to acquisition start",
            "resolution_fwhm_mm": RESOLUTION_FWHM_MM if options.blur else 0.0,
            "sensitivity_cps_per_MBq": SENSITIVITY_CPS_PER_MBQ,
            "noise": "Poisson on expected voxel counts" if options.noise else "none",
        },
        "dose": {
            "available": dose_available,
            "method": TRUTH_METHOD if not options.fast else TRUTH_METHOD.replace(
                "1.2 mm subdivision of the 2.4 mm label grid", "4.8 mm label grid (fast demo)").replace(
                "4.8 mm grid;", "9.6 mm grid;"),
            **truth_meta,
            "self_and_cross": "self_dose_Gy: from the structure's own activity; cross_dose_Gy = mean_dose_Gy - "
                              "self_dose_Gy (from all other activity)" if not options.fast else
                              "not computed for the fast demo",
            "voxelised": "mean_dose_voxelised_Gy (diagnostic): the pipeline's DVK engine on the exact TIA averaged "
                         f"over {options.spect_voxel_mm} mm SPECT voxels, mean over the structure's fractional mask: "
                         "a perfect camera seen by a voxel method",
            "as_imaged": "mean_dose_as_imaged_Gy (diagnostic): the same on the TIA map blurred by the SPECT resolution "
                         f"({RESOLUTION_FWHM_MM} mm FWHM), i.e. what a voxel-based method sees without "
                         "partial-volume correction" if options.blur else "not applicable (no blur)",
        },
        "cycles": out_cycles,
        # only for patients other than the demo's reference man, so the demo's truth file stays as it was
        **({"anatomy_scale": list(spec.anatomy_scale)} if spec.anatomy_scale != (1.0, 1.0, 1.0) else {}),
        "references": [
            "Kratochwil C et al. J Nucl Med 2016;57:1170-1176",
            "Delker A et al. Eur J Nucl Med Mol Imaging 2016;43:42-51",
            "Violet J et al. J Nucl Med 2019;60:517-523",
            "Hohberg M et al. Mol Imaging Biol 2016;18:437-445",
            "Kabasakal L et al. Mol Imaging Radionucl Ther 2017;26:62-68",
            "Ljungberg M et al. MIRD Pamphlet No. 26, J Nucl Med 2016;57:151-162",
            "ICRU Report 46 (1992); ICRP Publication 110 (2009)",
        ],
    }


def write_demo_dicom(sim: DemoSimulation, directory: Path, progress: ProgressCallback | None = None) -> list[Path]:
    """Write a simulation as DICOM into ``directory`` (one folder per time point + the SEG); returns the files."""
    uid = _dicom.UidFactory(f"theratwin-demo-v{DEMO_SCHEMA_VERSION}-seed{sim.seed}-{sim.options.tag}")
    files: list[Path] = []
    ref_ct: list[Any] = []
    ref_study: dict[str, Any] = {}
    ref_for = ""
    n_tp = sum(len(c.time_points) for c in sim.cycles)
    done = 0
    for cyc in sim.cycles:
        adm = {"radiopharmaceutical": sim.spec.radiopharmaceutical, "start": cyc.administration_start,
               "activity_MBq": cyc.administered_MBq}
        for i, tp in enumerate(cyc.time_points, start=1):
            report(progress, done / n_tp, f"writing DICOM cycle {cyc.number} time point {i}")
            t_h = (tp.acquisition_start - cyc.administration_start).total_seconds() / 3600.0
            key = f"c{cyc.number}tp{i}"
            folder = directory / f"cycle{cyc.number}_tp{i}_{round(t_h):d}h"
            study_dt = tp.acquisition_start - timedelta(minutes=7)
            study = {"uid": uid("study", key), "datetime": study_dt, "id": f"C{cyc.number}T{i}",
                     "accession": f"TTD{cyc.number}{i:02d}{sim.seed % 10000:04d}",
                     "description": f"Lu-177 {sim.spec.radiopharmaceutical} cycle {cyc.number} SPECT/CT {round(t_h):d} h p.i."}
            frame_uid = uid("frame-of-reference", key)
            ct_start = tp.acquisition_start + timedelta(seconds=tp.acquisition_duration_s + 95)
            ct_series = {"uid": uid("series-ct", key), "number": 2, "datetime": ct_start, "modality": "CT",
                         "description": "CT low dose for AC and localisation", "frame_of_reference_uid": frame_uid}
            cts = _dicom.write_ct_series(folder / "CT", tp.ct_hu.astype(np.float32), origin_mm=sim.ct_geometry.origin_mm,
                                         voxel_mm=sim.ct_geometry.spacing_mm[0], patient=sim.spec.patient, study=study,
                                         series=ct_series, acquisition_start=ct_start, uid=uid)
            files += sorted((folder / "CT").glob("*.dcm"))
            recon_dt = ct_start + timedelta(minutes=6, seconds=12)
            nm_series = {"uid": uid("series-nm", key), "number": 3, "datetime": recon_dt, "modality": "NM",
                         "description": "Lu177 SPECT Quant Bq/mL OSEM AC SC RR",
                         "frame_of_reference_uid": frame_uid}
            nm_path = folder / "NM_SPECT.dcm"
            _dicom.write_nm_spect(nm_path, tp.spect_Bq_per_mL, origin_mm=sim.spect_geometry.origin_mm,
                                  voxel_mm=sim.spect_geometry.spacing_mm[0], patient=sim.spec.patient, study=study,
                                  series=nm_series, acquisition_start=tp.acquisition_start,
                                  acquisition_duration_s=tp.acquisition_duration_s, administration=adm,
                                  n_projections=tp.n_projections,
                                  sop_uid=uid("nm-instance", key))
            files.append(nm_path)
            if cyc.number == 1 and i == 1:
                ref_ct, ref_study, ref_for = cts, study, frame_uid
                ref_folder = folder
            done += 1
    report(progress, 0.95, "writing SEG")
    seg_dt = sim.cycles[0].time_points[0].acquisition_start + timedelta(hours=1, minutes=3)
    seg_series = {"uid": uid("series-seg"), "number": 100, "datetime": seg_dt, "modality": "SEG",
                  "description": "TheraTwin demo structures", "frame_of_reference_uid": ref_for}
    seg_path = ref_folder / "SEG_structures.dcm"
    _dicom.write_seg(seg_path, ref_ct, sim.seg_masks, series=seg_series, sop_uid=uid("seg-instance"), uid=uid)
    files.append(seg_path)
    del ref_study
    return files


_MANIFEST = "demo-manifest.json"
_TRUTH = "demo-truth.json"


def _cache_root(cache_dir: str | os.PathLike[str] | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("THERATWIN_CACHE")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "theratwin"


def generator_fingerprint() -> str:
    """SHA256 over the source of the code the demo data and its truth depend on (demo, dosimetry, nuclides).

    Stored in the cache manifest: when that code changes (say, a new dose kernel), the cached patient and its
    truth are rebuilt rather than silently reused.
    """
    pkg = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for sub_pkg in ("demo", "dosimetry", "nuclides"):
        for p in sorted((pkg / sub_pkg).rglob("*.py")):
            h.update(p.relative_to(pkg).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _load_if_complete(folder: Path) -> DemoPatient | None:
    """Return the cached patient when its manifest matches every file (SHA256), else None."""
    manifest_path = folder / _MANIFEST
    if not manifest_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("schema") != DEMO_SCHEMA_VERSION or manifest.get("generator") != generator_fingerprint():
            return None
        for rel, digest in manifest["files"].items():
            p = folder / rel
            if not p.is_file() or sha256_file(p) != digest:
                return None
        truth = json.loads((folder / _TRUTH).read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if manifest.get("dose_available") is False:
        try:
            from .. import dosimetry  # noqa: F401

            if hasattr(dosimetry, "dose_map"):
                return None  # dose fields can be filled in now: rebuild
        except ImportError:
            pass
    return DemoPatient(folder / "dicom", truth, folder / _TRUTH)


def build_demo(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    seed: int | None = None,
    progress: ProgressCallback | None = None,
    fast: bool = False,
    noise: bool = True,
    blur: bool = True,
    misalign: bool = True,
    rebuild: bool = False,
) -> DemoPatient:
    """Build (or reuse from the cache) the synthetic 177Lu-PSMA-617 demo patient.

    Parameters
    ----------
    cache_dir
        Root of the cache; default ``$THERATWIN_CACHE`` or ``~/.cache/theratwin``. The patient goes to
        ``<root>/demo-v<schema>-seed<seed>[-options]``.
    seed
        Random seed (default ``DEFAULT_SEED``). The same seed and options give byte-identical files.
    progress
        Optional callback ``(fraction, message)``.
    fast, noise, blur, misalign
        See :class:`DemoOptions` (defaults: the realistic full-size patient).
    rebuild
        Ignore an existing cache entry.

    Returns
    -------
    DemoPatient
        ``dicom_dir``, ``truth`` and ``truth_path``.
    """
    seed = DEFAULT_SEED if seed is None else int(seed)
    if seed < 0:
        raise InvalidInputError(f"Demo seed must be a non-negative integer; got {seed}.")
    options = DemoOptions(fast=fast, noise=noise, blur=blur, misalign=misalign)
    root = _cache_root(cache_dir)
    name = f"demo-v{DEMO_SCHEMA_VERSION}-seed{seed}" + (f"-{options.tag}" if options.tag else "")
    folder = root / name
    if not rebuild:
        cached = _load_if_complete(folder)
        if cached is not None:
            report(progress, 1.0, "demo patient found in cache")
            return cached
    root.mkdir(parents=True, exist_ok=True)
    sim = simulate(seed, options, progress=None if progress is None else (lambda f, m: report(progress, 0.7 * f, m)))
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        files = write_demo_dicom(sim, tmp / "dicom",
                                 progress=None if progress is None else (lambda f, m: report(progress, 0.7 + 0.28 * f, m)))
        (tmp / _TRUTH).write_text(json.dumps(sim.truth, indent=2), encoding="utf-8")
        files.append(tmp / _TRUTH)
        manifest = {
            "schema": DEMO_SCHEMA_VERSION,
            "generator": generator_fingerprint(),
            "seed": seed,
            "options": asdict(options),
            "dose_available": bool(sim.truth["dose"]["available"]),
            "files": {p.relative_to(tmp).as_posix(): sha256_file(p) for p in files},
        }
        (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        # Publish atomically. If another process published a complete copy meanwhile, keep theirs (it may be in
        # use); an incomplete or outdated folder is moved aside first, then removed.
        if not rebuild:
            other = _load_if_complete(folder)
            if other is not None:
                shutil.rmtree(tmp, ignore_errors=True)
                return other
        if folder.exists():
            trash = root / f".trash-{name}-{os.getpid()}"
            os.replace(folder, trash)
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.replace(tmp, folder)
        except OSError:
            other = _load_if_complete(folder)
            if other is None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            return other
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report(progress, 1.0, "demo patient written")
    return DemoPatient(folder / "dicom", sim.truth, folder / _TRUTH)
