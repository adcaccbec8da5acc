"""Loading ICRP-107 emission data and building :class:`Nuclide` records (see the package docstring)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError

__all__ = ["Nuclide", "Emission", "get", "available"]

# Supported therapy nuclides; any other ICRP-107 nuclide also loads, these are the ones tested.
_TESTED = ("Lu-177", "Y-90", "I-131", "Tb-161", "Ac-225")

# Seconds per ICRP-107 time unit (definitions of the units, not data).
_UNIT_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "y": 365.25 * 86400.0}

# A daughter whose half-life is below this fraction of the parent's is treated as in secular equilibrium.
_EQUILIBRIUM_RATIO = 0.1

_ELECTRON_TYPES = ("beta-", "beta+", "IE", "auger")
_PHOTON_TYPES = ("gamma", "X", "annihilation")
_ALPHA_TYPES = ("alpha", "alpha recoil")

# numpy >= 2 renamed trapz to trapezoid; Slicer 5.x may still bundle numpy 1.x
_trapezoid = getattr(np, "trapezoid", None) or getattr(np, "trapz")  # noqa: B009


@dataclass(frozen=True)
class Emission:
    """A discrete emission line: energy in MeV and yield per decay of the parent."""

    kind: str
    energy_MeV: float
    yield_per_decay: float
    emitter: str


@dataclass(frozen=True)
class Nuclide:
    """Decay data of a radionuclide (with its short-lived daughters for chains such as Ac-225).

    Attributes
    ----------
    name
        Canonical name, e.g. ``"Lu-177"``.
    half_life_h
        Physical half-life in hours.
    electron_energy_MeV, photon_energy_MeV, alpha_energy_MeV
        Mean energy emitted per decay of the parent, in MeV, by type (daughters at equilibrium included).
    emissions
        All discrete lines (energy MeV, yield per parent decay, emitter).
    beta_spectrum_MeV, beta_spectrum_per_MeV
        Continuous beta spectrum (energy grid in MeV, probability density per MeV and per parent decay, summed
        over the chain).
    chain
        ``(nuclide, decays per parent decay)`` for the parent and each daughter included.
    """

    name: str
    half_life_h: float
    electron_energy_MeV: float
    photon_energy_MeV: float
    alpha_energy_MeV: float
    emissions: tuple[Emission, ...] = field(repr=False)
    beta_spectrum_MeV: np.ndarray = field(repr=False)
    beta_spectrum_per_MeV: np.ndarray = field(repr=False)
    chain: tuple[tuple[str, float], ...] = ()
    source: str = "ICRP Publication 107 (icrp107-database); branching from radioactivedecay"

    @property
    def decay_constant_per_h(self) -> float:
        """Physical decay constant ln(2)/T½ in 1/h."""
        return math.log(2.0) / self.half_life_h

    @property
    def decay_constant_per_s(self) -> float:
        return self.decay_constant_per_h / 3600.0

    @property
    def half_life_s(self) -> float:
        return self.half_life_h * 3600.0

    @property
    def total_energy_MeV(self) -> float:
        """Mean energy of all emissions per decay, MeV."""
        return self.electron_energy_MeV + self.photon_energy_MeV + self.alpha_energy_MeV

    @property
    def non_penetrating_energy_MeV(self) -> float:
        """Electrons plus alphas per decay (MeV): the part absorbed locally at organ scale."""
        return self.electron_energy_MeV + self.alpha_energy_MeV

    def gamma_lines(self, min_yield: float = 0.01) -> list[Emission]:
        """Gamma (and X-ray) lines with yield at least ``min_yield`` per decay, strongest first."""
        lines = [e for e in self.emissions if e.kind in ("gamma", "X") and e.yield_per_decay >= min_yield
                 and e.energy_MeV >= 0.02]
        return sorted(lines, key=lambda e: -e.yield_per_decay)

    def lines(self, kinds: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Energies (MeV) and yields (per parent decay) of the discrete lines of the given kinds."""
        sel = [e for e in self.emissions if e.kind in kinds]
        return (np.array([e.energy_MeV for e in sel]), np.array([e.yield_per_decay for e in sel]))

    def decay_factor(self, time_h: float | np.ndarray) -> float | np.ndarray:
        """exp(-λ t): the fraction of activity left after ``time_h`` hours."""
        return np.exp(-self.decay_constant_per_h * np.asarray(time_h, dtype=float))


def _package_dir() -> Path:
    import icrp107_database

    return Path(icrp107_database.__file__).parent / "icrp107"


def _canonical(name: str) -> str:
    """``"177Lu"``, ``"Lu177"``, ``"lu-177"``, ``"Lu-177m"`` -> ``"Lu-177"`` / ``"Lu-177m"``."""
    s = str(name).strip().replace(" ", "").replace("_", "-")
    m = re.fullmatch(r"([A-Za-z]{1,2})-?(\d{1,3})([mn]?\d?)", s)
    if not m:
        m2 = re.fullmatch(r"(\d{1,3})([mn]?\d?)-?([A-Za-z]{1,2})", s)
        if not m2:
            raise InvalidInputError(
                f"Cannot read nuclide name {name!r}; use a form like 'Lu-177', '177Lu' or 'Lu177'."
            )
        mass, meta, sym = m2.groups()
    else:
        sym, mass, meta = m.groups()
    return f"{sym[0].upper()}{sym[1:].lower()}-{int(mass)}{meta.lower()}"


def _load_icrp(name: str) -> dict:
    path = _package_dir() / f"{name}.json"
    if not path.exists():
        raise InvalidInputError(
            f"Nuclide {name!r} is not in the ICRP-107 database shipped with icrp107-database; check the name."
        )
    raw = json.loads(path.read_text(encoding="utf-8"))
    # the package stores a JSON string inside the JSON file
    return json.loads(raw) if isinstance(raw, str) else raw


def _half_life_s(data: dict) -> float:
    return float(data["half_life"]) * _UNIT_S[data["time_unit"]]


def _chain(name: str, parent_half_life_s: float) -> list[tuple[str, float]]:
    """Parent plus daughters short-lived enough to be at equilibrium, with decays per parent decay."""
    import radioactivedecay as rd

    out: dict[str, float] = {name: 1.0}
    stack = [(name, 1.0)]
    while stack:
        nuc, weight = stack.pop()
        try:
            rn = rd.Nuclide(nuc)
        except Exception:  # radioactivedecay does not know it: treat as a single nuclide
            continue
        for daughter, frac in zip(rn.progeny(), rn.branching_fractions(), strict=True):
            try:
                hl = rd.Nuclide(daughter).half_life("s")
            except Exception:
                continue
            if not math.isfinite(hl) or hl > _EQUILIBRIUM_RATIO * parent_half_life_s:
                continue  # stable, or too long-lived to count as equilibrium
            if not (_package_dir() / f"{daughter}.json").exists():
                continue
            w = weight * float(frac)
            out[daughter] = out.get(daughter, 0.0) + w
            stack.append((daughter, w))
    return list(out.items())


@lru_cache(maxsize=64)
def _build(name: str) -> Nuclide:
    data = _load_icrp(name)
    hl_s = _half_life_s(data)
    chain = _chain(name, hl_s)
    emissions: list[Emission] = []
    grid = np.linspace(0.0, 0.0, 1)
    spectra: list[tuple[np.ndarray, np.ndarray]] = []
    for member, weight in chain:
        d = data if member == name else _load_icrp(member)
        em = d["emissions"]
        for kind in _ELECTRON_TYPES + _PHOTON_TYPES + _ALPHA_TYPES:
            for energy, yld in em.get(kind, []):
                emissions.append(Emission(kind, float(energy), float(yld) * weight, member))
        spec = em.get("b-spectra") or []
        if spec:
            arr = np.asarray(spec, dtype=float)
            e, p = arr[:, 0], arr[:, 1]
            area = float(_trapezoid(p, e))
            beta_yield = sum(float(y) for _, y in em.get("beta-", [])) + sum(float(y) for _, y in em.get("beta+", []))
            if area > 0:
                spectra.append((e, p / area * beta_yield * weight))
    if spectra:
        grid = np.unique(np.concatenate([e for e, _ in spectra]))
        density = np.sum([np.interp(grid, e, p, left=0.0, right=0.0) for e, p in spectra], axis=0)
    else:
        grid, density = np.zeros(0), np.zeros(0)

    def _sum(kinds: tuple[str, ...]) -> float:
        return float(sum(e.energy_MeV * e.yield_per_decay for e in emissions if e.kind in kinds))

    return Nuclide(
        name=name,
        half_life_h=hl_s / 3600.0,
        electron_energy_MeV=_sum(_ELECTRON_TYPES),
        photon_energy_MeV=_sum(_PHOTON_TYPES),
        alpha_energy_MeV=_sum(_ALPHA_TYPES),
        emissions=tuple(emissions),
        beta_spectrum_MeV=grid,
        beta_spectrum_per_MeV=density,
        chain=tuple(chain),
    )


def get(name: str) -> Nuclide:
    """Return the decay data of a nuclide.

    Parameters
    ----------
    name
        ``"Lu-177"``, ``"177Lu"``, ``"Lu177"`` (case-insensitive) or any ICRP-107 name.

    Raises
    ------
    InvalidInputError
        If the name cannot be read or the nuclide is not in ICRP-107.
    """
    if isinstance(name, Nuclide):
        return name
    return _build(_canonical(name))


def available() -> tuple[str, ...]:
    """The therapy nuclides TheraTwin is tested with."""
    return _TESTED
