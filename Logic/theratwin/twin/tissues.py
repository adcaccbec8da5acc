"""Radiobiology parameters, organ-at-risk limits and dose-per-TIA conversion used by the twin.

The twin prefers the project's radiobiology tissue table (``theratwin.radiobiology.TISSUES``, if installed)
and dosimetry S-values (``theratwin.dosimetry.organ_self_s_value`` / ``sphere_s_value``); the fallbacks
below are used only when those are absent, and each value cites its source.

Fallback radiobiology table (α/β in Gy, repair half-time T_rep in h):

==================  ======  ======  =====================================================================
tissue              α/β     T_rep   source
==================  ======  ======  =====================================================================
kidney              2.6     2.8     Barone R et al. J Nucl Med 2005;46:99S; Wessels BW et al. JNM 2008;49:1884
red_marrow          10      0.5     generic early-responding-tissue assumption (as in theratwin.radiobiology)
salivary_gland      3       1.5     unpublished for RLT; late-responding normal-tissue convention (assumption)
lacrimal_gland      3       1.5     unpublished (assumption)
liver               2.5     1.5     α/β: Dawson LA, QUANTEC liver, IJROBP 2010;76:S94 (EBRT); T_rep assumption
spleen              3       1.5     unpublished (assumption)
bladder             5       1.5     unpublished (assumption)
tumour              10      1.5     Dale RG. Br J Radiol 1985;58:515 (α/β 10 Gy, T_rep 1.5 h convention)
soft_tissue / body  3       1.5     unpublished (assumption)
==================  ======  ======  =====================================================================

Default cumulative limits (all configurable; each a research-use reference, not a validated constraint):

* kidneys: BED 40 Gy — Bodei L et al. Eur J Nucl Med Mol Imaging 2008;35:1847 (28 Gy with risk factors);
  Wessels BW et al. J Nucl Med 2008;49:1884.
* red marrow: absorbed dose 2 Gy — the 131I-therapy blood/marrow limit (Benua RS et al. Am J Roentgenol
  1962;87:171) used for 177Lu PRRT by Sandström M et al. J Nucl Med 2013;54:33.
* parotid and submandibular glands: mean EQD2 25 Gy (both glands) — QUANTEC, Deasy JO et al. Int J Radiat
  Oncol Biol Phys 2010;76:S58 (external beam; its transfer to RLT is unvalidated).
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import ConfigurationError
from ..nuclides import get as get_nuclide
from ..study.codes import structure_kind
from .priors import local_self_s_value

__all__ = [
    "TissueParameters",
    "FALLBACK_TISSUES",
    "tissue_parameters",
    "OrganLimit",
    "DEFAULT_LIMITS",
    "resolve_limits",
    "dose_per_tia_Gy_per_MBq_h",
]


@dataclass(frozen=True)
class TissueParameters:
    """Linear-quadratic parameters of a tissue: α/β (Gy) and mono-exponential repair half-time (h)."""

    alpha_beta_Gy: float
    repair_half_time_h: float
    reference: str

    @property
    def repair_rate_per_h(self) -> float:
        """Repair rate ``μ = ln 2 / repair_half_time_h`` (1/h)."""
        return float(np.log(2.0) / self.repair_half_time_h)


FALLBACK_TISSUES: dict[str, TissueParameters] = {
    "kidney": TissueParameters(2.6, 2.8, "Barone 2005 JNM 46:99S; Wessels 2008 JNM 49:1884"),
    "red_marrow": TissueParameters(10.0, 0.5, "generic early-responding-tissue assumption"),
    "salivary_gland": TissueParameters(3.0, 1.5, "assumption (unpublished for RLT)"),
    "lacrimal_gland": TissueParameters(3.0, 1.5, "assumption (unpublished)"),
    "liver": TissueParameters(2.5, 1.5, "alpha/beta: QUANTEC liver 2010; T_rep assumption"),
    "spleen": TissueParameters(3.0, 1.5, "assumption (unpublished)"),
    "bladder": TissueParameters(5.0, 1.5, "assumption (unpublished)"),
    "tumour": TissueParameters(10.0, 1.5, "Dale 1985 Br J Radiol 58:515 convention"),
    "soft_tissue": TissueParameters(3.0, 1.5, "assumption (unpublished)"),
    "body": TissueParameters(3.0, 1.5, "assumption (unpublished)"),
}


def _project_tissue(tissue: str) -> TissueParameters | None:
    """The radiobiology stage's table entry, if that package is installed and has one."""
    try:
        rb = importlib.import_module("theratwin.radiobiology")
    except ImportError:
        return None
    table = getattr(rb, "TISSUES", None)
    if not isinstance(table, dict) or tissue not in table:
        return None
    entry = table[tissue]
    get = entry.get if isinstance(entry, dict) else (lambda k, e=entry: getattr(e, k, None))
    ab, trep = get("alpha_beta_Gy"), get("repair_half_time_h")
    if ab is None or trep is None:
        return None
    return TissueParameters(float(ab), float(trep), str(get("note") or "theratwin.radiobiology.TISSUES"))


def _project_limit(tissue: str) -> OrganLimit | None:
    """The radiobiology table's cumulative limit of ``tissue`` (quantity BED/EQD2/dose), if any."""
    try:
        rb = importlib.import_module("theratwin.radiobiology")
    except ImportError:
        return None
    entry = getattr(rb, "TISSUES", {}).get(tissue) if isinstance(getattr(rb, "TISSUES", None), dict) else None
    if entry is None or getattr(entry, "limit_quantity", None) is None or getattr(entry, "limit_Gy", None) is None:
        return None
    lim = entry.limit() if hasattr(entry, "limit") else {}
    return OrganLimit(str(entry.limit_quantity).lower(), float(entry.limit_Gy),
                      str((lim or {}).get("reference") or getattr(entry, "note", "theratwin.radiobiology.TISSUES")))


def tissue_parameters(structure: str, overrides: dict[str, TissueParameters] | None = None) -> TissueParameters:
    """α/β and repair half-time for ``structure`` (override by name or tissue key, project table, fallback)."""
    tissue = structure_kind(structure).tissue
    ov = overrides or {}
    if structure in ov:
        return ov[structure]
    if tissue in ov:
        return ov[tissue]
    found = _project_tissue(tissue)
    if found is not None:
        return found
    return FALLBACK_TISSUES.get(tissue, FALLBACK_TISSUES["soft_tissue"])


@dataclass(frozen=True)
class OrganLimit:
    """A cumulative limit for an organ at risk.

    Attributes
    ----------
    quantity
        ``"bed"``, ``"eqd2"`` or ``"dose"`` (cumulative over cycles; BED and EQD2 add across cycles given
        full repair between them, Dale 1985).
    value_Gy
        The limit, Gy.
    reference
        Where it comes from.
    """

    quantity: str
    value_Gy: float
    reference: str

    def __post_init__(self) -> None:
        if self.quantity not in ("bed", "eqd2", "dose"):
            raise ConfigurationError(f"Limit quantity '{self.quantity}' unknown; use 'bed', 'eqd2' or 'dose'.")
        if not self.value_Gy > 0:
            raise ConfigurationError(f"Limit value {self.value_Gy} Gy must be positive.")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: quantity, limit (Gy) and reference."""
        return asdict(self)


#: Default cumulative limits by structure kind key (see the module docstring for sources).
DEFAULT_LIMITS: dict[str, OrganLimit] = {
    "kidneys": OrganLimit("bed", 40.0, "Bodei 2008 EJNMMI 35:1847; Wessels 2008 JNM 49:1884"),
    "red_marrow": OrganLimit("dose", 2.0, "Benua 1962 AJR 87:171; Sandstrom 2013 JNM 54:33"),
    "parotid_glands": OrganLimit("eqd2", 25.0, "QUANTEC Deasy 2010 IJROBP 76:S58 (EBRT; unvalidated for RLT)"),
    "submandibular_glands": OrganLimit("eqd2", 25.0, "QUANTEC Deasy 2010 IJROBP 76:S58 (EBRT; unvalidated for RLT)"),
}


def resolve_limits(structures: list[str], limits: dict[str, Any] | None) -> dict[str, OrganLimit]:
    """Limits per structure name: ``limits`` first, else (organs, not lesions or the body) the limit of the
    project's radiobiology table (``theratwin.radiobiology.TISSUES``), else :data:`DEFAULT_LIMITS`.

    ``limits`` maps a structure name or kind key to an :class:`OrganLimit`, a dict
    (``{"quantity": "bed", "value_Gy": 40, "reference": ...}``), a number (Gy, same quantity as the default)
    or ``None`` (drop that default).
    """
    user = dict(limits or {})
    out: dict[str, OrganLimit] = {}
    for s in structures:
        kind = structure_kind(s)
        key = kind.key
        if s in user:
            item = user[s]
        elif key in user:
            item = user[key]
        elif kind.role.value in ("organ_at_risk", "organ"):
            # the project's radiobiology table (one source of truth: the limits the dosimetry results carry,
            # e.g. liver and bladder too), else this module's defaults
            item = _project_limit(kind.tissue) or DEFAULT_LIMITS.get(key)
        else:
            item = None
        if item is None:
            continue
        if isinstance(item, dict):
            item = OrganLimit(str(item.get("quantity", "bed")).lower(), float(item["value_Gy"]),
                              str(item.get("reference", "user setting")))
        elif isinstance(item, (int, float)):
            default = DEFAULT_LIMITS.get(key)
            item = OrganLimit(default.quantity if default else "bed", float(item), "user setting")
        elif not isinstance(item, OrganLimit):
            raise ConfigurationError(f"Limit for '{s}' must be an OrganLimit, a dict or a number, not {item!r}.")
        out[s] = item
    return out


def dose_per_tia_Gy_per_MBq_h(structure: str, nuclide: str, mass_g: float) -> tuple[float, str]:
    """Mean absorbed dose per TIA (Gy per MBq·h) of ``structure`` from a MIRD self S-value (cached).

    See :func:`_dose_per_tia_uncached`.
    """
    return _dose_per_tia_cached(structure_kind(structure).role.value == "lesion", nuclide, float(mass_g))


@functools.lru_cache(maxsize=1024)
def _dose_per_tia_cached(is_lesion: bool, nuclide: str, mass_g: float) -> tuple[float, str]:
    return _dose_per_tia_uncached("lesion" if is_lesion else "organ", nuclide, mass_g)


def _dose_per_tia_uncached(structure: str, nuclide: str, mass_g: float) -> tuple[float, str]:
    """Mean absorbed dose per time-integrated activity (Gy per MBq·h) from a MIRD self S-value.

    Uses ``theratwin.dosimetry.sphere_s_value`` for lesions and ``organ_self_s_value`` otherwise
    (mGy/(MBq·s)); falls back to local deposition of the electron energy (``priors.local_self_s_value``)
    when the dosimetry package is not installed. ``Gy/(MBq·h) = S · 3600 s/h / 1000 mGy/Gy``.
    """
    if not (mass_g > 0):
        raise ConfigurationError(f"Mass {mass_g} g of '{structure}' must be positive to compute its S-value.")
    is_lesion = structure == "lesion"
    try:
        dos = importlib.import_module("theratwin.dosimetry")
        fn = getattr(dos, "sphere_s_value" if is_lesion else "organ_self_s_value")
        s_value = float(fn(nuclide, mass_g))
        method = "sphere_s_value" if is_lesion else "organ_self_s_value"
    except (ImportError, AttributeError):
        s_value = float(local_self_s_value(get_nuclide(nuclide).electron_energy_MeV, mass_g))
        method = "local_electron_deposition"
    return s_value * 3600.0 / 1000.0, method
