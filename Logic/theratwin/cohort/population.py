"""A known population in the twin's parametrisation, and patients drawn from it.

The twin (:mod:`theratwin.twin.model`, ``"biexp"``) describes each structure by
θ = (ln U, φ, ψ) with ``A(t) = A_adm · U · (e^{−λw t} − e^{−λu t})``, ``λw = λ_phys + e^φ``,
``λu = λw + e^ψ``. A population is, per structure, the mean μ of θ, the between-patient SD (IIV, diagonal Ω)
and the between-cycle SD (IOV, diagonal Γ): patient ``i`` has θ_i ~ N(μ, Ω), its cycle ``k`` η_ik = θ_i + κ_ik
with κ_ik ~ N(0, Γ). This is what ``theratwin fit-priors`` estimates, so a cohort drawn from a
:class:`Population` is the reference its estimates are checked against.

:data:`DEMO_COHORT_POPULATION` is the population of ``theratwin demo-cohort``: its means are the demo
patient's literature-based kinetics (:mod:`theratwin.demo.kinetics`; structures with two washout phases there are
represented by one phase with the same time-integrated activity), its spreads are assumptions of this module
(between-patient SD 0.25 of ln U and of φ, 0.30 of ψ; between-cycle SD 0.10, 0.10, 0.15; lesions 0.45 of ln U
between lesions) of the order of the coefficients of variation quoted in :mod:`theratwin.twin.priors`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..nuclides import get as get_nuclide

__all__ = ["StructurePopulation", "Population", "DEMO_COHORT_POPULATION", "theta_from_kinetics",
           "kinetics_from_theta"]

LN2 = math.log(2.0)


@dataclass(frozen=True)
class StructurePopulation:
    """Population of θ = (ln U, φ, ψ) for one structure: mean, IIV SD and IOV SD (independent components)."""

    mean: tuple[float, float, float]
    iiv_sd: tuple[float, float, float]
    iov_sd: tuple[float, float, float]

    def __post_init__(self) -> None:
        for name in ("mean", "iiv_sd", "iov_sd"):
            v = np.asarray(getattr(self, name), float)
            if v.shape != (3,) or not np.all(np.isfinite(v)):
                raise InvalidInputError(f"Population {name} must be 3 finite numbers (ln U, phi, psi); got {v}.")
        if min(self.iiv_sd) < 0 or min(self.iov_sd) < 0:
            raise InvalidInputError("Population SDs must be >= 0.")

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "iiv_sd": list(self.iiv_sd), "iov_sd": list(self.iov_sd)}


@dataclass(frozen=True)
class Population:
    """A population per structure (keys are structure names as segmented) for one radiopharmaceutical."""

    radiopharmaceutical: str
    nuclide: str
    structures: Mapping[str, StructurePopulation]

    def draw(self, rng: np.random.Generator, n_cycles: int) -> dict[str, dict[str, Any]]:
        """One patient: ``{structure: {"theta": θ_i, "eta": [η_i1, ..., η_iK]}}`` (arrays of 3).

        Draws are taken structure by structure in the mapping's order, θ first then each cycle's κ, so a
        seeded ``rng`` gives the same patient whatever else is simulated.
        """
        out: dict[str, dict[str, Any]] = {}
        for name, pop in self.structures.items():
            theta = np.asarray(pop.mean) + np.asarray(pop.iiv_sd) * rng.standard_normal(3)
            etas = [theta + np.asarray(pop.iov_sd) * rng.standard_normal(3) for _ in range(n_cycles)]
            out[name] = {"theta": theta, "eta": etas}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "radiopharmaceutical": self.radiopharmaceutical,
            "nuclide": self.nuclide,
            "model": "biexp",
            "parametrisation": "theta = (ln U, phi, psi); A(t) = A_adm U (exp(-lw t) - exp(-lu t)), "
                               "lw = l_phys + exp(phi), lu = lw + exp(psi); U = fraction of the administered "
                               "activity; theta_i ~ N(mean, diag(iiv_sd^2)), eta_ik = theta_i + N(0, diag(iov_sd^2))",
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


def _demo_population() -> Population:
    organ = ((0.25, 0.25, 0.30), (0.10, 0.10, 0.15))
    lesion = ((0.45, 0.25, 0.30), (0.15, 0.10, 0.15))
    # (U, T_eff h, T_up h) from theratwin.demo.kinetics.CYCLE1_KINETICS; kidneys and red marrow have two washout
    # phases there: one phase with the same TIA and the slow phase's order of half-life is used instead.
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
    return Population("PSMA-617", "Lu-177", {
        name: StructurePopulation(theta_from_kinetics(*kin), sd[0], sd[1]) for name, (kin, sd) in table.items()})


#: The population of ``theratwin demo-cohort`` (177Lu-PSMA-617; see the module docstring).
DEMO_COHORT_POPULATION: Population = _demo_population()
