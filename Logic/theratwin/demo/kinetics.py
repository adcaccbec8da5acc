"""Time-activity kinetics of the demo patient (177Lu-PSMA-617).

Every structure follows a sum of uptake-washout terms (MIRD Pamphlet 21 style compartment solution):

.. math::

    A(t) = A_0 \\sum_i f_i \\left(e^{-\\lambda_i t} - e^{-(\\lambda_i + k_u) t}\\right),
    \\qquad \\lambda_i = \\ln 2 / T_{\\mathrm{eff},i}, \\quad k_u = \\ln 2 / T_{\\mathrm{up}}

with effective (physical + biological) washout half-lives :math:`T_{\\mathrm{eff},i}` and one biological uptake
half-time :math:`T_{\\mathrm{up}}`. The time-integrated activity is analytic:
:math:`\\tilde A = A_0 \\sum_i f_i (1/\\lambda_i - 1/(\\lambda_i + k_u))`.

The amplitudes were chosen so that a simple self-dose estimate (TIA x ICRP-107 mean electron energy / mass)
lands inside the published per-GBq ranges; the effective half-lives are of the order reported by the same
studies. The numbers are design targets for a *plausible* synthetic patient, not a population model. The last
column is the ground truth the generator computes with ``theratwin.dosimetry.dose_map`` (DVK, 4.8 mm grid,
cycle 1, seed 20250303): small structures lose dose to cross-fire at that voxel size.

=====================  ==============  =======  ===========================================================  ======
Structure              Self-dose       T_eff    Source of the range used                                     DVK
                       (Gy/GBq)        (h)                                                                   truth
=====================  ==============  =======  ===========================================================  ======
kidneys                0.60            4 / 42   Delker 2016 (EJNMMI 43:42, ~0.6 Gy/GBq); Kratochwil 2016     0.58
                                                (JNM 57:1170, ~0.75 Gy/GBq); Violet 2019 (JNM 60:517, ~0.4)
parotid glands         0.60            40       Violet 2019 (~0.6 Gy/GBq); Delker 2016 / Kratochwil 2016     0.55
                                                report higher salivary values (~1.4 Gy/GBq)
submandibular glands   0.42            40       Violet 2019 (~0.4-0.5 Gy/GBq)                                0.37
lacrimal glands        0.57            38       between Violet 2019 (~0.4 Gy/GBq) and Hohberg 2016 (Mol      0.33
                                                Imaging Biol 18:437, ~2.8 Gy/GBq)
liver, spleen          0.09, 0.08      40       Delker 2016 (~0.1 Gy/GBq each)                               0.09
red marrow             0.03            8 / 45   Kratochwil 2016 (~0.03 Gy/GBq); Kabasakal 2017 (Mol          0.03
                                                Imaging Radionucl Ther 26:62, 0.030 Gy/GBq)
blood / remainder      -               0.16 up  Kabasakal 2017: distribution 0.16 h, elimination 10.8 h,     0.07
                                       10.8/40  ~57 % excreted in urine by 24 h
bladder content        0.37            6        urinary excretion (Kabasakal 2017), voiding as washout       0.36
tumour lesions         3.2-6.3         60-70    Violet 2019 / Kratochwil 2016 (lesion doses of several       2.6-5
                                                Gy/GBq, longer retention than normal organs)
=====================  ==============  =======  ===========================================================  ======

Inter-occasion variability (cycle 2): log-normal factors with 5 % SD on amplitudes and 4 % on half-lives (of
the order of the intra-patient cycle-to-cycle changes of normal-organ doses reported for 177Lu-PSMA-617, e.g.
Violet 2019), and a 15 % lower lesion uptake (partial response, as commonly seen after the first cycle).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

__all__ = ["Component", "Kinetics", "CYCLE1_KINETICS", "cycle2_kinetics", "INTER_OCCASION_SD"]


@dataclass(frozen=True)
class Component:
    """One uptake-washout term: amplitude as a fraction of the administered activity, effective half-life."""

    fraction: float
    effective_half_life_h: float

    @property
    def decay_constant_per_h(self) -> float:
        """``ln 2 / effective_half_life_h`` (1/h)."""
        return math.log(2.0) / self.effective_half_life_h


@dataclass(frozen=True)
class Kinetics:
    """Kinetics of one compartment (see the module docstring for the model)."""

    components: tuple[Component, ...]
    uptake_half_life_h: float
    source: str = ""

    @property
    def uptake_rate_per_h(self) -> float:
        """``ln 2 / uptake_half_life_h`` (1/h)."""
        return math.log(2.0) / self.uptake_half_life_h

    def activity_MBq(self, time_h: np.ndarray | float, administered_MBq: float) -> np.ndarray:
        """Activity in the compartment (MBq) at ``time_h`` hours after the start of administration."""
        t = np.asarray(time_h, dtype=float)
        ku = self.uptake_rate_per_h
        out = np.zeros_like(t)
        for c in self.components:
            lam = c.decay_constant_per_h
            out = out + c.fraction * (np.exp(-lam * t) - np.exp(-(lam + ku) * t))
        return administered_MBq * out

    def tia_MBq_h(self, administered_MBq: float) -> float:
        """Analytic time-integrated activity from 0 to infinity (MBq h)."""
        ku = self.uptake_rate_per_h
        return administered_MBq * sum(
            c.fraction * (1.0 / c.decay_constant_per_h - 1.0 / (c.decay_constant_per_h + ku)) for c in self.components
        )

    @property
    def terminal_half_life_h(self) -> float:
        """Effective half-life of the slowest washout component (h)."""
        return max(c.effective_half_life_h for c in self.components)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (ground truth of the demo): the formula, the components' fractions and effective
        half-lives (h), the uptake half-life (h) and the source."""
        return {
            "model": "sum_i f_i*(exp(-ln2/T_eff_i*t) - exp(-(ln2/T_eff_i + ln2/T_up)*t))",
            "components": [
                {"fraction": c.fraction, "effective_half_life_h": c.effective_half_life_h} for c in self.components
            ],
            "uptake_half_life_h": self.uptake_half_life_h,
            "source": self.source,
        }


def _k(components: list[tuple[float, float]], uptake_h: float, source: str) -> Kinetics:
    return Kinetics(tuple(Component(f, t) for f, t in components), uptake_h, source)


#: Cycle-1 kinetics per kinetic compartment. Keys are SEG structure names, plus ``background`` (remainder of
#: the body: blood pool and soft tissue, distributed over tissues by relative weights, see phantom.py).
CYCLE1_KINETICS: dict[str, Kinetics] = {
    # Kidneys: small early (blood/urine transit) term + retained tubular fraction; target 0.6 Gy/GBq.
    "kidneys": _k([(0.010, 4.0), (0.036, 42.0)], 1.0, "Delker 2016; Kratochwil 2016; Violet 2019"),
    "liver": _k([(0.030, 40.0)], 2.0, "Delker 2016 (~0.1 Gy/GBq)"),
    "spleen": _k([(0.0036, 40.0)], 2.0, "Delker 2016 (~0.1 Gy/GBq)"),
    "parotid_glands": _k([(0.0058, 40.0)], 1.5, "Violet 2019 (~0.6 Gy/GBq)"),
    "submandibular_glands": _k([(0.0012, 40.0)], 1.5, "Violet 2019 (~0.45 Gy/GBq)"),
    "lacrimal_glands": _k([(0.00024, 38.0)], 1.5, "Violet 2019; Hohberg 2016"),
    # Red marrow follows blood (fast) with a small retained fraction; target 0.03 Gy/GBq.
    "red_marrow": _k([(0.0005, 8.0), (0.0004, 45.0)], 0.2, "Kratochwil 2016; Kabasakal 2017"),
    # Bladder content: urinary excretion filling and voiding (effective 'washout' = voiding).
    "bladder": _k([(0.08, 6.0)], 1.0, "Kabasakal 2017 (~57 % urinary excretion by 24 h)"),
    # Remainder: blood distribution (0.16 h) and elimination (10.8 h) phases, Kabasakal 2017, plus slow tissue.
    "background": _k([(0.30, 10.8), (0.10, 40.0)], 0.16, "Kabasakal 2017"),
    # Lesions: slow washout, slower uptake; self-dose 3-6 Gy/GBq (Violet 2019; Kratochwil 2016).
    "lesion_bone_1": _k([(0.0052, 68.0)], 2.5, "Violet 2019; Kratochwil 2016"),
    "lesion_bone_2": _k([(0.0022, 62.0)], 2.5, "Violet 2019; Kratochwil 2016"),
    "lesion_bone_3": _k([(0.0010, 60.0)], 2.5, "Violet 2019; Kratochwil 2016"),
    "lesion_node_1": _k([(0.0043, 70.0)], 2.0, "Violet 2019; Kratochwil 2016"),
    "lesion_node_2": _k([(0.0009, 64.0)], 2.0, "Violet 2019; Kratochwil 2016"),
    "lesion_node_3": _k([(0.0052, 66.0)], 2.0, "Violet 2019; Kratochwil 2016"),
}

#: Log-normal SD of cycle-to-cycle factors: (amplitudes, half-lives); lesion uptake factor after cycle 1.
INTER_OCCASION_SD: dict[str, float] = {"fraction": 0.05, "half_life": 0.04, "lesion_response": 0.85}


@dataclass(frozen=True)
class _Perturbation:
    fraction_factor: float
    half_life_factor: float
    extra: dict[str, float] = field(default_factory=dict)


def cycle2_kinetics(rng: np.random.Generator, base: dict[str, Kinetics] | None = None) -> dict[str, Kinetics]:
    """Cycle-2 kinetics: cycle-1 values with inter-occasion variability (see module docstring).

    Random draws are taken in the fixed order of ``base`` so the result is deterministic for a seeded ``rng``.
    """
    base = CYCLE1_KINETICS if base is None else base
    out: dict[str, Kinetics] = {}
    for name, kin in base.items():
        ff = float(np.exp(rng.normal(0.0, INTER_OCCASION_SD["fraction"])))
        hf = float(np.exp(rng.normal(0.0, INTER_OCCASION_SD["half_life"])))
        if name.startswith("lesion_"):
            ff *= INTER_OCCASION_SD["lesion_response"]
        comps = tuple(
            Component(c.fraction * ff, c.effective_half_life_h * hf) for c in kin.components
        )
        out[name] = replace(kin, components=comps, source=kin.source + "; cycle-2 inter-occasion variability")
    return out
