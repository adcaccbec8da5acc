"""A Poisson tumour-control model written the way a research site would write its own outcome model.

``TCP(D) = exp(-N0 exp(-alpha D))`` for a uniform absorbed dose ``D`` (Gy): the probability that no clonogen
survives when ``N0`` clonogens each survive with probability ``exp(-alpha D)`` (Munro TR, Gilbert CW. Br J Radiol
1961;34:246). ``N0 = 1e6`` and ``alpha = 0.35 /Gy`` are example values, not a clinical model.

An outcome-model entry point names an *instance* (``EXAMPLE_TCP``): the twin calls ``probability`` on the registered
object itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class ExamplePoissonTCP:
    """Implements ``theratwin.twin.OutcomeModel``."""

    name = "example_poisson_tcp"
    kind = "response"
    quantity = "dose"
    reference = "Munro & Gilbert 1961 Br J Radiol 34:246 (Poisson TCP); example parameters"

    def __init__(self, clonogens: float = 1e6, alpha_per_Gy: float = 0.35) -> None:
        self.clonogens = float(clonogens)
        self.alpha_per_Gy = float(alpha_per_Gy)

    def probability(self, value_Gy: np.ndarray) -> np.ndarray:
        """``exp(-N0 exp(-alpha D))`` for each dose ``D`` in Gy."""
        d = np.asarray(value_Gy, dtype=float)
        return np.exp(-self.clonogens * np.exp(-self.alpha_per_Gy * d))

    def to_dict(self) -> dict[str, Any]:
        """The parameters, recorded with every forecast."""
        return {"type": "poisson_tcp", "name": self.name, "clonogens": self.clonogens,
                "alpha_per_Gy": self.alpha_per_Gy, "quantity": self.quantity, "reference": self.reference}


EXAMPLE_TCP = ExamplePoissonTCP()
