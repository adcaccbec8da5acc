"""Outcome models: lesion dose → response probability, organ dose/BED → toxicity probability (research use).

Protocol (:class:`OutcomeModel`) — what a plug-in registered in :data:`OUTCOME_MODELS` (entry-point group
``theratwin.outcome_models``) implements:

``name: str``; ``kind: str`` (``"response"`` or ``"toxicity"``); ``quantity: str`` (the dose measure the
model takes: ``"dose"``, ``"bed"`` or ``"eqd2"``, Gy); ``reference: str``;
``probability(value_Gy: np.ndarray) -> np.ndarray`` (vectorised, same shape, values in [0, 1]);
``to_dict() -> dict`` (parameters, for the report and the twin state).

The twin evaluates the model on every posterior draw, so the forecast carries the dosimetric uncertainty
(mean and 90 % interval). Parameter uncertainty of the dose–effect relation itself is not propagated.

Built-ins
---------
``lkb_kidney_burman1991``  Lyman–Kutcher–Burman NTCP (Lyman 1985 Radiat Res Suppl 8:S13; Kutcher & Burman
    1989 IJROBP 16:1623), whole kidney TD50 = 28 Gy, m = 0.1 (Burman C et al. IJROBP 1991;21:123), on the
    cumulative EQD2 (uniform irradiation: EUD = mean EQD2). Endpoint: clinical nephritis (EBRT data).
``lkb_parotid_dijkema2010`` LKB with TD50 = 39.9 Gy, m = 0.40 on the mean EQD2 (Dijkema T et al. IJROBP
    2010;78:449; QUANTEC Deasy 2010). Endpoint: salivary flow < 25 % of baseline (EBRT data).
``logistic_psma_violet2019`` Logistic response ``P = 1/(1 + (D50/D)^(4 γ50))`` on the per-cycle whole-body
    tumour absorbed dose; D50 = 10 Gy from the threshold reported by Violet J et al. J Nucl Med
    2019;60:517 (tumour dose < 10 Gy: PSA decline ≥ 50 % less likely); γ50 = 1 is an assumption (no
    published slope).
``logistic_net_assumed`` The same form with D50 = 30 Gy, γ50 = 1 for 177Lu-DOTATATE — assumption; a
    dose–response relation exists (Ilan E et al. J Nucl Med 2015;56:177) but no published D50 for this form.

All forecasts are labelled research use: the relations come from other modalities or small cohorts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from scipy.special import ndtr

from ..errors import ConfigurationError
from ..registry import Registry

__all__ = [
    "OutcomeModel",
    "OUTCOME_MODELS",
    "LKBModel",
    "LogisticDoseResponse",
    "default_toxicity_models",
    "default_response_model",
]


@runtime_checkable
class OutcomeModel(Protocol):
    """Protocol of an outcome (TCP/NTCP, dose–response) model: what the twin's forecast and planning call on it.

    :data:`OUTCOME_MODELS` refuses an entry that lacks one of these members (see the module docstring for
    their meaning).
    """

    name: str
    kind: str
    quantity: str
    reference: str

    def probability(self, value_Gy: np.ndarray) -> np.ndarray:
        """Probability of the outcome (in [0, 1], same shape) for each value of ``quantity`` in Gy."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """The model's name and parameters (JSON-ready), recorded with every forecast."""
        ...


@dataclass(frozen=True)
class LKBModel:
    """Lyman–Kutcher–Burman NTCP for a uniformly irradiated organ: ``Φ((D − TD50)/(m·TD50))``."""

    name: str
    td50_Gy: float
    m: float
    quantity: str = "eqd2"
    reference: str = ""
    kind: str = "toxicity"

    def __post_init__(self) -> None:
        if not (self.td50_Gy > 0 and self.m > 0):
            raise ConfigurationError(f"LKB model '{self.name}': TD50 and m must be positive.")

    def probability(self, value_Gy: np.ndarray) -> np.ndarray:
        """NTCP ``Φ((D − TD50) / (m·TD50))`` (Φ: standard normal CDF) for each dose ``D`` in Gy of
        :attr:`quantity`."""
        d = np.asarray(value_Gy, dtype=float)
        return ndtr((d - self.td50_Gy) / (self.m * self.td50_Gy))

    def to_dict(self) -> dict[str, Any]:
        """The parameters with ``"type": "lkb"``: name, TD50 (Gy), m, quantity, reference and kind."""
        return {"type": "lkb", **asdict(self)}


@dataclass(frozen=True)
class LogisticDoseResponse:
    """Logistic dose–response ``P = 1/(1 + (D50/D)^(4 γ50))`` (γ50: normalised slope at D50)."""

    name: str
    d50_Gy: float
    gamma50: float
    quantity: str = "dose"
    reference: str = ""
    kind: str = "response"

    def __post_init__(self) -> None:
        if not (self.d50_Gy > 0 and self.gamma50 > 0):
            raise ConfigurationError(f"Logistic model '{self.name}': D50 and gamma50 must be positive.")

    def probability(self, value_Gy: np.ndarray) -> np.ndarray:
        """``P = 1 / (1 + (D50/D)^(4 γ50))`` for each dose ``D`` in Gy (``D`` <= 0 gives 0)."""
        d = np.maximum(np.asarray(value_Gy, dtype=float), 1e-12)
        return 1.0 / (1.0 + np.power(self.d50_Gy / d, 4.0 * self.gamma50))

    def to_dict(self) -> dict[str, Any]:
        """The parameters with ``"type": "logistic"``: name, D50 (Gy), γ50, quantity, reference and kind."""
        return {"type": "logistic", **asdict(self)}


#: Registry of outcome models (entry-point group ``theratwin.outcome_models``); entries are instances, checked
#: against :class:`OutcomeModel` when registered.
OUTCOME_MODELS: Registry[Any] = Registry("theratwin.outcome_models", "outcome model", protocol=OutcomeModel)

OUTCOME_MODELS.register("lkb_kidney_burman1991", LKBModel(
    "lkb_kidney_burman1991", 28.0, 0.1, "eqd2", "Burman 1991 IJROBP 21:123 (EBRT, whole kidney, nephritis)"))
OUTCOME_MODELS.register("lkb_parotid_dijkema2010", LKBModel(
    "lkb_parotid_dijkema2010", 39.9, 0.40, "eqd2", "Dijkema 2010 IJROBP 78:449; QUANTEC 2010 (EBRT, flow <25 %)"))
OUTCOME_MODELS.register("logistic_psma_violet2019", LogisticDoseResponse(
    "logistic_psma_violet2019", 10.0, 1.0, "dose",
    "D50 from Violet 2019 JNM 60:517 (10 Gy whole-body tumour dose threshold); gamma50 = 1 assumed"))
OUTCOME_MODELS.register("logistic_net_assumed", LogisticDoseResponse(
    "logistic_net_assumed", 30.0, 1.0, "dose",
    "assumption; dose-response shown by Ilan 2015 JNM 56:177, no published D50 for this form"))


def default_toxicity_models() -> dict[str, str]:
    """Default NTCP model name by structure kind key."""
    return {
        "kidneys": "lkb_kidney_burman1991",
        "parotid_glands": "lkb_parotid_dijkema2010",
        "submandibular_glands": "lkb_parotid_dijkema2010",
    }


def default_response_model(radiopharmaceutical_key: str) -> str:
    """Default lesion response model name for a radiopharmaceutical prior key."""
    return "logistic_psma_violet2019" if radiopharmaceutical_key == "psma-617" else "logistic_net_assumed"
