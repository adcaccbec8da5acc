"""Population priors of the twin's kinetic model, per radiopharmaceutical and structure kind.

Model (per structure *s*, cycle *k*; see :mod:`theratwin.twin.model`)::

    A(t) = A_adm · U · (exp(-λw t) − exp(-λu t)),   λw = λ_phys + exp(φ),   λu = λw + exp(ψ)
    θ = (log U, φ, ψ)          patient level:   θ_i  ~ N(μ, Ω)        (inter-individual variability, IIV)
    η_ik = θ_i + κ_ik           cycle level:     κ_ik ~ N(0, Γ)        (inter-occasion variability, IOV)

``U`` is the amplitude as a fraction of the administered activity, ``exp(φ)`` the biological washout rate
(so ``λw ≥ λ_phys`` by construction) and ``exp(ψ)`` the excess of the uptake rate over the washout rate (so
``λu > λw``; the uptake rate itself is ``λw + exp(ψ)``).

The literature reports absorbed dose per activity, effective half-lives and uptake fractions rather than μ,
Ω, Γ. The table below gives, per structure kind, the **published quantity** each number is built from and
its source; :func:`structure_prior` turns them into (μ, Ω, Γ) by the conversions stated there. Where no
number is published the entry says **unpublished (assumption)**; every value is a field of
:class:`KineticPriorSpec` and can be overridden (``PatientTwin(prior_overrides=...)``).

``U`` from a published dose per activity ``d`` (Gy/GBq = mGy/MBq) uses the residence time
``τ = d / (S · 3600 s/h)`` with the local-deposition self S-value of a reference mass
``S = 0.1602 · E_e / m`` mGy/(MBq·s) (E_e mean electron energy per decay, ICRP 107, MeV; m in g;
0.1602 = 1.602e-13 J/MeV · 1e6 /s / 1e-3 kg/g · 1e3 mGy/Gy), and ``U ≈ τ · λ_eff`` (mono-exponential
washout, uptake phase neglected). Lu-177: E_e = 0.148 MeV (ICRP 107).

Per gram: a dose per activity is a mean over the organ, so ``U ∝ d · m``: the uptake *per gram* is what the
published number fixes. :func:`theratwin.twin.population.builtin_priors` therefore divides ``U`` by the reference
mass, and the twin multiplies it by the mass of the structure it actually observes (an L1–L5 marrow surrogate
of ~90 g takes ~90/1170 of the whole-marrow uptake). That set is also what a site's own priors file replaces.

References
----------
[ELLS24]  Ells Z et al. Dosimetry of [177Lu]Lu-PSMA-targeted radiopharmaceutical therapies: systematic review
          and meta-analysis. J Nucl Med 2024;65:1264. Pooled 177Lu-PSMA-617 kidney dose 4.04 Gy per 7.4 GBq
          cycle (= 0.55 Gy/GBq).
[KABA17]  Kabasakal L et al. Lu-177-PSMA-617 prostate-specific membrane antigen inhibitor therapy in patients
          with castration-resistant prostate cancer: stability, bio-distribution and dosimetry. Mol Imaging
          Radionucl Ther 2017;26:62. Kidneys 0.82 ± 0.25, parotid 1.90 ± 1.19, bone marrow 0.030 ± 0.008 Gy/GBq.
[HOHB16]  Hohberg M et al. Lacrimal glands may represent organs at risk for radionuclide therapy of prostate
          cancer with [177Lu]DKFZ-PSMA-617. Mol Imaging Biol 2016;18:437. Lacrimal 2.82, salivary 0.72,
          kidneys 0.53 mGy/MBq.
[VIOL19]  Violet J et al. Dosimetry of 177Lu-PSMA-617 in metastatic castration-resistant prostate cancer.
          J Nucl Med 2019;60:517. Kidney ≈ 0.39 Gy/GBq with CV ≈ 0.38 (SD as recalled by the author of this
          module, not re-checked against the paper's table); tumour dose–PSA response.
[DELK16]  Delker A et al. Dosimetry for 177Lu-DKFZ-PSMA-617. Eur J Nucl Med Mol Imaging 2016;43:42. Liver and
          spleen ≈ 0.1 Gy/GBq (indicative; table value not re-checked for this module).
[CNM13]   Dosimetric analyses of kidneys, liver, spleen, pituitary gland, and neuroendocrine tumors of patients
          treated with 177Lu-DOTATATE. Clin Nucl Med 2013;38(3). Kidneys 0.57 ± 0.09, liver 0.27 ± 0.05,
          spleen 1.17 ± 0.14, NETs 3.41 ± 0.68 mGy/MBq (61 patients).
[STAA21]  Staanum PF et al. Practical kidney dosimetry in PRRT using [177Lu]Lu-DOTATOC and [177Lu]Lu-DOTATATE.
          EJNMMI Phys 2021;8:78. DOTATATE kidney mean 0.46 Gy/GBq.
[STP18]   Feasibility and accuracy of single time point imaging for renal dosimetry following 177Lu-DOTATATE
          ('Lutate') therapy. EJNMMI Phys 2018, doi:10.1186/s40658-018-0232-9. Kidney 0.38 ± 0.19 Gy/GBq over
          80 cycles; the patient's own cycle-1 clearance applied to later cycles reproduces their doses within
          2 % on average (24 h image) — i.e. small inter-occasion variability of renal clearance.
[HOU21]   Hou X et al. Feasibility of single-time-point dosimetry for radiopharmaceutical therapies. J Nucl Med
          2021;62:1006 (PMC8882881). Effective half-lives across patients are log-normal — the reason the
          twin works in log space.
[AAPM26]  Normal-organ effective half-lives for 177Lu-PSMA (-617), AAPM Annual Meeting 2026, abstract 2620:
          20 patients, SPECT/CT at 4, 24, 48, 72 h, mono-exponential fits; median T_eff kidneys 35.5 h
          (range 8.5-152), liver 22.9 h, spleen 16.8 h, parotid 42.2 h, bone marrow 32.0 h.
[ICRP89]  ICRP Publication 89 (2002), reference adult male organ masses: kidneys 310 g, liver 1800 g,
          spleen 150 g, salivary glands 85 g, red marrow 1170 g, urinary bladder wall 50 g.

Table (177Lu; d = dose per activity used to derive U; "ind." = indicative value, see reference note;
"unp." = unpublished, assumption of this module)

============================  ===========================  ============  ==========  ==========  ===========
kind (radiopharmaceutical)    d Gy/GBq [ref]               mass g        T_eff h     T_up h      CV_U / CV_T
============================  ===========================  ============  ==========  ==========  ===========
kidneys (PSMA-617)            0.55 [ELLS24]                310 [ICRP89]  35.5 [AAPM26] 1.5 unp.  0.38 [VIOL19] / 0.20 unp.
parotid_glands (PSMA-617)     0.72 [HOHB16]                50 unp.       42.2 [AAPM26] 1.5 unp.  0.63 [KABA17] / 0.25 unp.
submandibular (PSMA-617)      0.72 [HOHB16]                25 unp.       42.2 unp.   1.5 unp.    0.63 [KABA17] / 0.25 unp.
lacrimal_glands (PSMA-617)    2.82 [HOHB16]                1.4 unp.      40 ind.     1.5 unp.    0.50 unp. / 0.25 unp.
liver (PSMA-617)              0.10 [DELK16] ind.           1800 [ICRP89] 22.9 [AAPM26] 1.0 unp.  0.40 unp. / 0.25 unp.
spleen (PSMA-617)             0.10 [DELK16] ind.           150 [ICRP89]  16.8 [AAPM26] 1.0 unp.  0.40 unp. / 0.25 unp.
red_marrow (PSMA-617)         0.030 [KABA17]               1170 [ICRP89] 32.0 [AAPM26] 0.5 unp.  0.27 [KABA17] / 0.25 unp.
bladder (PSMA-617)            0.30 unp.                    50 [ICRP89]   12 unp.     0.5 unp.    0.50 unp. / 0.30 unp.
lesion (PSMA-617, per 10 g)   5.0 ind. [ELLS24, VIOL19]    10 unp.       60 ind.     2.0 unp.    1.00 unp. / 0.25 unp.
kidneys (DOTATATE)            0.46 [STAA21]                310 [ICRP89]  50 ind.     2.0 unp.    0.40 [STP18 0.19/0.38] / 0.20 unp.
liver (DOTATATE)              0.27 [CNM13]                 1800 [ICRP89] 70 ind.     2.0 unp.    0.19 [CNM13] / 0.25 unp.
spleen (DOTATATE)             1.17 [CNM13]                 150 [ICRP89]  70 ind.     2.0 unp.    0.12 [CNM13] / 0.25 unp.
red_marrow (DOTATATE)         0.04 ind. unp.               1170 [ICRP89] 30 ind.     0.5 unp.    0.40 unp. / 0.25 unp.
salivary/lacrimal (DOTATATE)  0.05 unp.                    as above      40 unp.     1.5 unp.    0.60 unp. / 0.30 unp.
bladder (DOTATATE)            0.30 unp.                    50 [ICRP89]   12 unp.     0.5 unp.    0.50 unp. / 0.30 unp.
lesion (DOTATATE, per 10 g)   3.41 [CNM13]                 10 unp.       80 ind.     2.0 unp.    0.80 unp. (0.68/3.41 is
                                                                                                 between patients' mean) / 0.25 unp.
other / body (both)           0.05 unp. (vague prior)      1000 unp.     30 unp.     1.0 unp.    1.00 unp. / 0.50 unp.
============================  ===========================  ============  ==========  ==========  ===========

Submandibular glands take the parotid half-life (unp.). "ind." half-lives are the order of magnitude reported across the cited studies, rounded; they were not
copied from one table and must be verified (or replaced by a site's own population fit) before research use.
CV of the uptake-rate excess (ψ) is 0.5 throughout (unp.). Between-parameter correlations are 0 (unp.).

Inter-occasion variability (all unpublished as such; chosen from [STP18], which shows cycle-1 clearance
predicting later cycles to a few per cent for kidneys): SD of (log U, φ, ψ) between cycles is
(0.10, 0.10, 0.20) for organs and (0.20, 0.12, 0.20) for lesions (tumour uptake changes with response).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from ..errors import ConfigurationError
from ..nuclides import get as get_nuclide
from ..study.codes import structure_kind

__all__ = [
    "KineticPriorSpec",
    "StructurePrior",
    "PRIOR_SPECS",
    "radiopharmaceutical_key",
    "prior_key",
    "prior_spec",
    "structure_prior",
    "local_self_s_value",
]

# 1.602176634e-13 J/MeV × 1e6 decays/(MBq·s) / 1e-3 kg/g × 1e3 mGy/Gy (SI definitions)
_MEV_PER_G_TO_MGY = 0.1602176634


def local_self_s_value(electron_energy_MeV: float, mass_g: float | np.ndarray) -> float | np.ndarray:
    """Self S-value with local deposition of the electron energy, mGy/(MBq·s).

    ``S = 0.1602 · E_e / m`` (MIRD Pamphlet 21 definition of S with absorbed fraction 1 for electrons and 0
    for photons). Used only to turn published doses into uptake fractions and as the last-resort dose
    conversion when neither the patient's dosimetry nor ``theratwin.dosimetry`` is available.
    """
    return _MEV_PER_G_TO_MGY * electron_energy_MeV / np.asarray(mass_g, dtype=float)


@dataclass(frozen=True)
class KineticPriorSpec:
    """Published-quantity form of one structure kind's prior (see the module table for sources).

    Attributes
    ----------
    dose_per_activity_Gy_per_GBq
        Mean absorbed dose per administered activity used to derive the uptake amplitude U.
    reference_mass_g
        Mass the published dose refers to (reference organ mass or lesion size).
    effective_half_life_h
        Typical effective half-life of the washout phase, h.
    uptake_half_life_h
        Half-time of the uptake phase, h (``ln 2 / (λu − λw)``).
    cv_uptake_amplitude, cv_effective_half_life, cv_uptake_rate
        Between-patient coefficients of variation (IIV) of U, T_eff and the uptake-rate excess.
    iov_sd
        SD between cycles of the same patient of (log U, φ, ψ).
    sources
        Reference key for each field, for reports.
    """

    dose_per_activity_Gy_per_GBq: float
    reference_mass_g: float
    effective_half_life_h: float
    uptake_half_life_h: float
    cv_uptake_amplitude: float
    cv_effective_half_life: float
    cv_uptake_rate: float = 0.5
    iov_sd: tuple[float, float, float] = (0.10, 0.10, 0.20)
    sources: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (:meth:`from_dict` reads it back)."""
        d = asdict(self)
        d["iov_sd"] = list(self.iov_sd)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KineticPriorSpec:
        """The spec from its :meth:`to_dict` form (``iov_sd`` defaults to (0.10, 0.10, 0.20) for (ln U, φ,
        ψ))."""
        d = dict(d)
        d["iov_sd"] = tuple(d.get("iov_sd", (0.10, 0.10, 0.20)))
        return cls(**d)


def _spec(d: float, m: float, teff: float, tup: float, cvu: float, cvt: float, src: str,
          iov: tuple[float, float, float] = (0.10, 0.10, 0.20), cvr: float = 0.5) -> KineticPriorSpec:
    return KineticPriorSpec(d, m, teff, tup, cvu, cvt, cvr, iov, {"table": src})


_ORGAN_IOV = (0.10, 0.10, 0.20)   # unpublished as such; see module docstring ([STP18])
_LESION_IOV = (0.20, 0.12, 0.20)  # unpublished; tumour uptake changes with response

#: Built-in prior specifications: {radiopharmaceutical key: {prior key: spec}} (values: module table).
PRIOR_SPECS: dict[str, dict[str, KineticPriorSpec]] = {
    "psma-617": {
        "kidneys": _spec(0.55, 310.0, 35.5, 1.5, 0.38, 0.20, "d ELLS24; m ICRP89; CV_U VIOL19; T_eff AAPM26; rest unp."),
        "parotid_glands": _spec(0.72, 50.0, 42.2, 1.5, 0.63, 0.25, "d HOHB16; CV_U KABA17; T_eff AAPM26; rest unp."),
        "submandibular_glands": _spec(0.72, 25.0, 42.2, 1.5, 0.63, 0.25, "d HOHB16; CV_U KABA17; rest unp."),
        "lacrimal_glands": _spec(2.82, 1.4, 40.0, 1.5, 0.50, 0.25, "d HOHB16; rest unp."),
        "liver": _spec(0.10, 1800.0, 22.9, 1.0, 0.40, 0.25, "d DELK16 ind.; m ICRP89; T_eff AAPM26; rest unp."),
        "spleen": _spec(0.10, 150.0, 16.8, 1.0, 0.40, 0.25, "d DELK16 ind.; m ICRP89; T_eff AAPM26; rest unp."),
        "red_marrow": _spec(0.030, 1170.0, 32.0, 0.5, 0.27, 0.25, "d, CV_U KABA17; m ICRP89; T_eff AAPM26; rest unp."),
        "bladder": _spec(0.30, 50.0, 12.0, 0.5, 0.50, 0.30, "unp. (urine content with voiding); m ICRP89"),
        "lesion": _spec(5.0, 10.0, 60.0, 2.0, 1.00, 0.25, "d ELLS24/VIOL19 ind.; rest unp.", _LESION_IOV),
        "other": _spec(0.05, 1000.0, 30.0, 1.0, 1.00, 0.50, "vague prior, unp."),
    },
    "dotatate": {
        "kidneys": _spec(0.46, 310.0, 50.0, 2.0, 0.40, 0.20, "d STAA21; CV_U STP18; m ICRP89; rest unp."),
        "liver": _spec(0.27, 1800.0, 70.0, 2.0, 0.19, 0.25, "d, CV_U CNM13; m ICRP89; rest ind./unp."),
        "spleen": _spec(1.17, 150.0, 70.0, 2.0, 0.12, 0.25, "d, CV_U CNM13; m ICRP89; rest ind./unp."),
        "red_marrow": _spec(0.04, 1170.0, 30.0, 0.5, 0.40, 0.25, "ind./unp.; m ICRP89"),
        "parotid_glands": _spec(0.05, 50.0, 40.0, 1.5, 0.60, 0.30, "unp."),
        "submandibular_glands": _spec(0.05, 25.0, 40.0, 1.5, 0.60, 0.30, "unp."),
        "lacrimal_glands": _spec(0.05, 1.4, 40.0, 1.5, 0.60, 0.30, "unp."),
        "bladder": _spec(0.30, 50.0, 12.0, 0.5, 0.50, 0.30, "unp.; m ICRP89"),
        "lesion": _spec(3.41, 10.0, 80.0, 2.0, 0.80, 0.25, "d CNM13; rest unp.", _LESION_IOV),
        "other": _spec(0.05, 1000.0, 30.0, 1.0, 1.00, 0.50, "vague prior, unp."),
    },
}

_RPH_ALIASES = {
    "psma-617": "psma-617", "psma617": "psma-617", "vipivotide tetraxetan": "psma-617", "pluvicto": "psma-617",
    "dotatate": "dotatate", "dota-tate": "dotatate", "oxodotreotide": "dotatate", "lutathera": "dotatate",
    "dotatoc": "dotatate",
}


def radiopharmaceutical_key(radiopharmaceutical: str) -> str:
    """Normalise a radiopharmaceutical name (``"177Lu-PSMA-617"``, ``"Lutathera"`` ...) to a prior key."""
    n = radiopharmaceutical.lower().replace("[177lu]lu-", "").replace("177lu-", "").replace("lu-177 ", "")
    n = n.replace("lu-177-", "").replace("_", "-").strip()
    for alias, key in _RPH_ALIASES.items():
        if alias in n or alias.replace("-", "") in n.replace("-", ""):
            return key
    raise ConfigurationError(
        f"No built-in twin prior for radiopharmaceutical '{radiopharmaceutical}'. Built-in: "
        f"{sorted(PRIOR_SPECS)}; pass prior_overrides={{structure kind: KineticPriorSpec(...)}} and "
        "radiopharmaceutical='custom' to supply your own."
    )


def prior_key(structure: str) -> str:
    """Prior table key of a structure name (via its SNOMED kind: lesions share one prior)."""
    kind = structure_kind(structure)
    if kind.role.value == "lesion":
        return "lesion"
    if kind.key in ("body", "other"):
        return "other"
    return kind.key


def prior_spec(radiopharmaceutical: str, structure: str,
               overrides: dict[str, KineticPriorSpec] | None = None) -> KineticPriorSpec:
    """The :class:`KineticPriorSpec` for ``structure`` (override by structure name, then by prior key)."""
    ov = overrides or {}
    if structure in ov:
        return ov[structure]
    key = prior_key(structure)
    if key in ov:
        return ov[key]
    table = PRIOR_SPECS[radiopharmaceutical_key(radiopharmaceutical)] if radiopharmaceutical != "custom" else {}
    if key in table:
        return table[key]
    if "other" in ov:
        return ov["other"]
    if "other" in table:
        return table["other"]
    raise ConfigurationError(f"No twin prior for structure '{structure}' (key '{key}'); add one to prior_overrides.")


@dataclass(frozen=True)
class StructurePrior:
    """Gaussian prior of θ = (log U, φ, ψ) for one structure: mean, IIV covariance Ω, IOV covariance Γ.

    ``mass_g`` is the structure mass the amplitude prior was scaled to (None: a model's own absolute prior),
    ``source`` where the prior came from, ``measurement`` the structure's measurement error model from the
    priors file (a :class:`~theratwin.twin.population.MeasurementSpec`, or None for TheraTwin's default).
    """

    mean: np.ndarray
    iiv_cov: np.ndarray
    iov_cov: np.ndarray
    spec: KineticPriorSpec | None
    mass_g: float | None = None
    source: str = ""
    measurement: Any = None

    def with_scale(self, *, iiv: float = 1.0, iov: float = 1.0) -> StructurePrior:
        """The prior with its IIV and IOV SDs multiplied by ``iiv`` and ``iov`` (covariances by their
        squares)."""
        return replace(self, iiv_cov=self.iiv_cov * iiv**2, iov_cov=self.iov_cov * iov**2)


def structure_prior(spec: KineticPriorSpec, nuclide: str = "Lu-177") -> StructurePrior:
    """Convert a :class:`KineticPriorSpec` into (μ, Ω, Γ) of θ = (log U, φ, ψ).

    Conversions (module docstring): τ = d/(S·3600), U = τ·λ_eff; log-normal moments
    σ² = ln(1 + CV²), μ_log = ln(mean) − σ²/2 (the published numbers are means); the SD of
    φ = ln(λ_eff − λ_phys) follows by the delta method, σ_φ = σ_lnλ · λ_eff/(λ_eff − λ_phys).
    """
    nuc = get_nuclide(nuclide)
    lam_phys = nuc.decay_constant_per_h
    lam_eff = math.log(2.0) / spec.effective_half_life_h
    if lam_eff <= lam_phys * 1.01:
        raise ConfigurationError(
            f"Prior effective half-life {spec.effective_half_life_h} h is not shorter than the physical half-life "
            f"of {nuclide} ({nuc.half_life_h:.1f} h); the twin needs some biological washout."
        )
    s_value = float(local_self_s_value(nuc.electron_energy_MeV, spec.reference_mass_g))
    residence_h = spec.dose_per_activity_Gy_per_GBq / (s_value * 3600.0)  # mGy/MBq / (mGy/(MBq·s) · s/h)
    u_mean = residence_h * lam_eff
    lam_up_excess = math.log(2.0) / spec.uptake_half_life_h
    s_u = math.sqrt(math.log1p(spec.cv_uptake_amplitude**2))
    s_lam = math.sqrt(math.log1p(spec.cv_effective_half_life**2))
    s_phi = s_lam * lam_eff / (lam_eff - lam_phys)
    s_psi = math.sqrt(math.log1p(spec.cv_uptake_rate**2))
    mean = np.array([
        math.log(u_mean) - 0.5 * s_u**2,
        math.log(lam_eff - lam_phys),
        math.log(lam_up_excess),
    ])
    iiv = np.diag([s_u**2, s_phi**2, s_psi**2])
    iov = np.diag(np.square(np.asarray(spec.iov_sd, dtype=float)))
    return StructurePrior(mean, iiv, iov, spec)
