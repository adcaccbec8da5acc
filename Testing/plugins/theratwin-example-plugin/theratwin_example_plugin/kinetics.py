"""A mono-exponential kinetic model written the way a research site would write its own.

``A(t) = A0 exp(-(lambda_phys + k_bio) t)`` with ``theta = (ln A0, ln k_bio)``, so both stay positive; the
time-integrated activity from 0 to infinity is ``A0 / (lambda_phys + k_bio)`` (MIRD Pamphlet No. 21).
"""

from __future__ import annotations

import math

import numpy as np


class ExampleMonoExponential:
    """Implements ``theratwin.kinetics.KineticModel`` (the least-squares protocol)."""

    name = "example_monoexp"
    param_names = ("log_A0", "log_k_bio")
    selectable = False  # only when asked for by name: model="example_monoexp"

    def initial_guesses(self, time_h: np.ndarray, activity_MBq: np.ndarray,
                        lambda_phys_per_h: float) -> list[np.ndarray]:
        a0 = float(np.max(activity_MBq)) * 1.5
        return [np.array([math.log(a0), math.log(k)]) for k in (0.003, 0.03, 0.3)]

    def evaluate(self, theta: np.ndarray, time_h: np.ndarray, lambda_phys_per_h: float) -> np.ndarray:
        lam = lambda_phys_per_h + math.exp(theta[1])
        return math.exp(theta[0]) * np.exp(-lam * np.asarray(time_h, dtype=float))

    def tia(self, theta: np.ndarray, lambda_phys_per_h: float) -> float:
        return math.exp(theta[0]) / (lambda_phys_per_h + math.exp(theta[1]))

    def physical_params(self, theta: np.ndarray, lambda_phys_per_h: float) -> dict[str, float]:
        return {"A0_MBq": math.exp(theta[0]), "lambda_eff_per_h": lambda_phys_per_h + math.exp(theta[1])}

    def effective_half_life_h(self, theta: np.ndarray, lambda_phys_per_h: float) -> float:
        return math.log(2.0) / (lambda_phys_per_h + math.exp(theta[1]))
