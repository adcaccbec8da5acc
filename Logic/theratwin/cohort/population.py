"""A known population in the twin's parametrisation, and patients drawn from it.

The twin (:mod:`theratwin.twin.model`, ``"biexp"``) describes each structure by η = (ln U, φ, ψ) with
``A(t) = A_adm · U · (e^{−λw t} − e^{−λu t})``, ``λw = λ_phys + e^φ``, ``λu = λw + e^ψ``; its population priors
(file schema ``theratwin-priors/1``) are per gram: θ = (ln U − β ln m, φ, ψ) with the structure's mass m (g) and
β = 1. A population is, per structure, the mean μ of θ, the between-patient SD (IIV, diagonal Ω) and the
between-cycle SD (IOV, diagonal Γ): patient ``i`` has θ_i ~ N(μ, Ω), its cycle ``k`` η_ik = θ_i + (β ln m_i, 0, 0)
+ κ_ik with κ_ik ~ N(0, Γ). This is what ``theratwin fit-priors`` estimates, so a cohort drawn from a
:class:`Population` is the reference its estimates are checked against.

:data:`DEMO_COHORT_POPULATION` is the population of ``theratwin demo-cohort``: its means are the demo
patient's literature-based kinetics (:mod:`theratwin.demo.kinetics`; structures with two washout phases there are
represented by one phase with the same order of time-integrated activity) at the demo phantom's masses, its
spreads are assumptions of this module (between-patient SD 0.25 of ln U and of φ, 0.30 of ψ; between-cycle SD
0.10, 0.10, 0.15; lesions 0.45 of ln U) of the order of the coefficients of variation quoted in
:mod:`theratwin.twin.priors`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..nuclides import get as get_nuclide

__all__ = ["StructurePopulation", "Population", "DEMO_COHORT_POPULATION", "theta_from_kinetics",
           "kinetics_from_theta", "phantom_masses_g", "write_tac_cohort"]

LN2 = math.log(2.0)


@dataclass(frozen=True)
class StructurePopulation:
    """Population of θ = (ln U − β ln m, φ, ψ) for one structure: mean, IIV SD and IOV SD (independent
    components), with the reference mass (g) the demo phantom gives the structure and the mass exponent β."""

    mean: tuple[float, float, float]
    iiv_sd: tuple[float, float, float]
    iov_sd: tuple[float, float, float]
    reference_mass_g: float = 1.0
    mass_exponent: float = 1.0

    def __post_init__(self) -> None:
        for name in ("mean", "iiv_sd", "iov_sd"):
            v = np.asarray(getattr(self, name), float)
            if v.shape != (3,) or not np.all(np.isfinite(v)):
                raise InvalidInputError(f"Population {name} must be 3 finite numbers (ln U, phi, psi); got {v}.")
        if min(self.iiv_sd) < 0 or min(self.iov_sd) < 0:
            raise InvalidInputError("Population SDs must be >= 0.")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: mean, IIV SD and IOV SD of θ = (ln U − β ln m, φ, ψ), reference mass (g) and mass
        exponent β."""
        return {"mean": list(self.mean), "iiv_sd": list(self.iiv_sd), "iov_sd": list(self.iov_sd),
                "reference_mass_g": self.reference_mass_g, "mass_exponent": self.mass_exponent}


@dataclass(frozen=True)
class Population:
    """A population per structure (keys are structure names as segmented) for one radiopharmaceutical."""

    radiopharmaceutical: str
    nuclide: str
    structures: Mapping[str, StructurePopulation]

    def draw(self, rng: np.random.Generator, n_cycles: int, mass_scale: float = 1.0) -> dict[str, dict[str, Any]]:
        """One patient: ``{structure: {"theta": θ_i, "mass_g": m_i, "eta": [η_i1, ..., η_iK]}}``.

        ``mass_scale`` multiplies every reference mass (body habitus). Draws are taken structure by structure in
        the mapping's order, θ first then each cycle's κ, so a seeded ``rng`` gives the same patient whatever
        else is simulated.
        """
        out: dict[str, dict[str, Any]] = {}
        for name, pop in self.structures.items():
            theta = np.asarray(pop.mean) + np.asarray(pop.iiv_sd) * rng.standard_normal(3)
            mass = pop.reference_mass_g * mass_scale
            shift = np.array([pop.mass_exponent * math.log(mass), 0.0, 0.0])
            etas = [theta + shift + np.asarray(pop.iov_sd) * rng.standard_normal(3) for _ in range(n_cycles)]
            out[name] = {"theta": theta, "mass_g": mass, "eta": etas}
        return out

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (recorded with a synthetic cohort), with the parametrisation spelled out
        so that the file explains itself."""
        return {
            "radiopharmaceutical": self.radiopharmaceutical,
            "nuclide": self.nuclide,
            "model": "biexp",
            "parametrisation": "theta = (ln U - beta ln m, phi, psi) as the priors file (theratwin-priors/1): "
                               "A(t) = A_adm U (exp(-lw t) - exp(-lu t)), lw = l_phys + exp(phi), lu = lw + exp(psi), "
                               "U = fraction of the administered activity, m = structure mass (g); theta_i ~ "
                               "N(mean, diag(iiv_sd^2)), eta_ik = theta_i + (beta ln m_i, 0, 0) + N(0, diag(iov_sd^2))",
            "structures": {k: v.to_dict() for k, v in self.structures.items()},
        }


def theta_from_kinetics(amplitude_fraction: float, effective_half_life_h: float, uptake_half_life_h: float,
                        nuclide: str = "Lu-177") -> tuple[float, float, float]:
    """θ = (ln U, φ, ψ) of one uptake-washout term (amplitude, effective washout and uptake half-lives, h)."""
    lam_phys = get_nuclide(nuclide).decay_constant_per_h
    lam_w = LN2 / effective_half_life_h
    if lam_w <= lam_phys:
        raise InvalidInputError(f"Effective half-life {effective_half_life_h} h is not shorter than the physical one.")
    return (math.log(amplitude_fraction), math.log(lam_w - lam_phys), math.log(LN2 / uptake_half_life_h))


def kinetics_from_theta(eta: np.ndarray, nuclide: str = "Lu-177", source: str = "") -> Any:
    """The demo generator's :class:`~theratwin.demo.kinetics.Kinetics` of one η (one uptake-washout term).

    The demo's model ``f (e^{−λ t} − e^{−(λ + k_u) t})`` equals the twin's with ``f = U``, ``λ = λw``,
    ``k_u = e^ψ``.
    """
    from ..demo.kinetics import Component, Kinetics

    lam_phys = get_nuclide(nuclide).decay_constant_per_h
    u, phi, psi = (float(x) for x in eta)
    lam_w = lam_phys + math.exp(phi)
    return Kinetics((Component(math.exp(u), LN2 / lam_w),), LN2 / math.exp(psi), source)


def phantom_masses_g() -> dict[str, float]:
    """Masses (g) of the demo phantom's segmented structures at scale 1, from its analytic shapes (ellipsoids and
    elliptic cylinders; overlaps between shapes of one structure ignored) and ICRU 46 densities."""
    from ..demo.phantom import TISSUES, Ellipsoid, EllipticCylinder

    out: dict[str, float] = {}
    for t in TISSUES:
        if t.structure is None:
            continue
        vol_mm3 = 0.0
        for sh in t.shapes:
            if isinstance(sh, Ellipsoid):
                vol_mm3 += 4.0 / 3.0 * math.pi * sh.radii[0] * sh.radii[1] * sh.radii[2]
            elif isinstance(sh, EllipticCylinder):
                vol_mm3 += math.pi * sh.radii_xy[0] * sh.radii_xy[1] * (sh.z_range[1] - sh.z_range[0])
        out[t.structure] = out.get(t.structure, 0.0) + vol_mm3 / 1000.0 * t.density_g_per_mL
    return out


def _demo_population() -> Population:
    organ = ((0.25, 0.25, 0.30), (0.10, 0.10, 0.15))
    lesion = ((0.45, 0.25, 0.30), (0.15, 0.10, 0.15))
    # (U, T_eff h, T_up h) from theratwin.demo.kinetics.CYCLE1_KINETICS; kidneys and red marrow have two washout
    # phases there: one phase of the same order of TIA is used instead.
    table = {
        "kidneys": ((0.040, 40.0, 1.0), organ),
        "liver": ((0.030, 40.0, 2.0), organ),
        "spleen": ((0.0036, 40.0, 2.0), organ),
        "parotid_glands": ((0.0058, 40.0, 1.5), organ),
        "submandibular_glands": ((0.0012, 40.0, 1.5), organ),
        "lacrimal_glands": ((0.00024, 38.0, 1.5), organ),
        "red_marrow": ((0.00073, 30.0, 0.2), organ),
        "bladder": ((0.08, 6.0, 1.0), organ),
        "lesion_bone_1": ((0.0052, 68.0, 2.5), lesion),
        "lesion_bone_2": ((0.0022, 62.0, 2.5), lesion),
        "lesion_bone_3": ((0.0010, 60.0, 2.5), lesion),
        "lesion_node_1": ((0.0043, 70.0, 2.0), lesion),
        "lesion_node_2": ((0.0009, 64.0, 2.0), lesion),
        "lesion_node_3": ((0.0052, 66.0, 2.0), lesion),
    }
    masses = phantom_masses_g()
    out = {}
    for name, (kin, sd) in table.items():
        mean = theta_from_kinetics(*kin)
        per_gram = (mean[0] - math.log(masses[name]), mean[1], mean[2])  # beta = 1: per gram
        out[name] = StructurePopulation(per_gram, sd[0], sd[1], masses[name], 1.0)
    return Population("PSMA-617", "Lu-177", out)


#: The population of ``theratwin demo-cohort`` (177Lu-PSMA-617; see the module docstring).
DEMO_COHORT_POPULATION: Population = _demo_population()


def write_tac_cohort(out_dir: str | os.PathLike[str], n: int, *, population: Population | None = None,
                     structures: tuple[str, ...] = ("kidneys", "liver", "parotid_glands"), seed: int = 1,
                     random_sd: float = 0.05, correlated_sd: float = 0.05,
                     schedule_h: tuple[float, ...] | None = None) -> dict[str, Any]:
    """A cohort at the level of time-activity curves, laid out as ``theratwin cohort`` output (no images).

    Patient ``i`` gets a body-size factor in 0.7-1.4 (masses), 1-3 cycles of 7.4 GBq and the imaging schedules of
    ``theratwin demo-cohort`` (cycle 1 at 4, 24, 48, 168 h; later cycles once at 24, 48 or 96 h, or one in four
    at 24, 48, 168 h; or every cycle at ``schedule_h``), each with ±5 % timing jitter. Activities are
    exact model values with log-normal error: one factor per structure and cycle (``correlated_sd``) and one per
    scan (``random_sd``). For checking ``fit-priors`` against the known population (returned, with every drawn θ).
    """
    pop = population or DEMO_COHORT_POPULATION
    lam = get_nuclide(pop.nuclide).decay_constant_per_h
    sub = Population(pop.radiopharmaceutical, pop.nuclide, {s: pop.structures[s] for s in structures})
    rng = np.random.default_rng(seed)
    root = Path(out_dir) / "patients"
    root.mkdir(parents=True, exist_ok=True)
    drawn_all = {}
    for i in range(n):
        n_cycles = int(rng.choice([1, 2, 3], p=[0.2, 0.4, 0.4]))
        drawn = sub.draw(rng, n_cycles, mass_scale=float(rng.uniform(0.7, 1.4)))
        schedules = [np.array([4.0, 24.0, 48.0, 168.0] if schedule_h is None else schedule_h, float)]
        for _ in range(n_cycles - 1):
            if schedule_h is not None:
                schedules.append(np.array(schedule_h, float))
                continue
            schedules.append(np.array([24.0, 48.0, 168.0]) if rng.uniform() < 0.25
                             else np.array([float(rng.choice([24.0, 48.0, 96.0]))]))
        cycles = {}
        for k, times in enumerate(schedules):
            t = times * rng.uniform(0.95, 1.05, times.size)
            structs = {}
            for name, d in drawn.items():
                u, phi, psi = d["eta"][k]
                lw = lam + math.exp(phi)
                a = 7400.0 * math.exp(u) * (np.exp(-lw * t) - np.exp(-(lw + math.exp(psi)) * t))
                y = a * math.exp(correlated_sd * rng.standard_normal()) * np.exp(random_sd * rng.standard_normal(t.size))
                structs[name] = {"time_h": t.tolist(), "activity_MBq": y.tolist(), "mass_g": d["mass_g"]}
            cycles[str(k + 1)] = {"cycle": k + 1, "administered_MBq": 7400.0, "radiopharmaceutical": pop.radiopharmaceutical,
                                  "nuclide": pop.nuclide, "structures": structs}
        key = f"SYN{i + 1:05d}"
        (root / key).mkdir(exist_ok=True)
        (root / key / "results.json").write_text(json.dumps({"schema": "theratwin-results/1", "cycles": cycles}), encoding="utf-8")
        (root / key / "cohort-task.json").write_text(json.dumps({"patient": key, "status": "done"}), encoding="utf-8")
        drawn_all[key] = {s: {"theta": d["theta"].tolist(), "mass_g": d["mass_g"]} for s, d in drawn.items()}
    return {"population": sub.to_dict(), "random_sd": random_sd, "correlated_sd": correlated_sd, "seed": seed,
            "patients": drawn_all}
