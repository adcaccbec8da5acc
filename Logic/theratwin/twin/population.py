"""Population priors of the twin as a file a site can supply (schema ``theratwin-priors/1``).

The twin's prior for a structure is a population distribution of its log-parameters (the nonlinear
mixed-effects structure of population pharmacokinetics): a mean μ and a between-patient covariance Ω (IIV),
a between-cycle covariance Γ of the same patient (IOV), and the measurement error of its activities. The
built-in set is converted from published summary statistics (:mod:`theratwin.twin.priors`); a site that has
fitted its own cohort (e.g. with NLME) writes the same numbers into a JSON file and passes it to the twin
(``PatientTwin(priors=...)``, the pipeline option ``twin.priors`` or ``theratwin demo/run --priors FILE``).

Parameters (model ``"biexp"``, ``A(t) = A_adm · U · (e^{−λw t} − e^{−λu t})``; also used by ``"pbpk_psma"``)
----------------------------------------------------------------------------------------------------------
=========================  ==========  =======================================================================
name                       unit        meaning
=========================  ==========  =======================================================================
``log_uptake_per_g``       ln(1/g^β)   ``ln U − β ln m``: the uptake amplitude U (fraction of the
                                       administered activity) per gram^β of the structure (m its mass in g,
                                       β the ``mass_exponent``; β = 1: uptake fraction per gram)
``log_washout_bio_per_h``  ln(1/h)     ``φ = ln(λw − λ_phys)``: the biological part of the washout rate
``log_uptake_excess_per_h`` ln(1/h)    ``ψ = ln(λu − λw)``: how much faster uptake is than washout
=========================  ==========  =======================================================================

So the amplitude prior of a structure scales with its own mass: the prior mean of ``ln U`` for a structure
of mass m is ``μ₀ + β ln m``. The mass is the one the kinetics stage measured (segmentation volume × CT
density); without it the structure's ``reference_mass_g`` is used. This matters when the segmented structure
is not the organ the literature reports — an L1–L5 marrow surrogate of 90 g is not the 1170 g of the whole
red marrow (ICRP 89).

File format (JSON; the JSON Schema is ``priors.schema.json`` next to this module, :func:`priors_json_schema`)
----------------------------------------------------------------------------------------------------------
::

    {
      "schema": "theratwin-priors/1",
      "radiopharmaceutical": "PSMA-617",          # selects nothing by itself: it must match the patient's
      "nuclide": "Lu-177",
      "model": "biexp",
      "parameters": ["log_uptake_per_g", "log_washout_bio_per_h", "log_uptake_excess_per_h"],
      "description": "free text", "method": "how the numbers were obtained (e.g. NLME, software, cohort)",
      "structures": {
        "kidneys": {                               # a structure name, or a kind key (kidneys, liver, spleen,
                                                   # parotid_glands, submandibular_glands, lacrimal_glands,
                                                   # red_marrow, bladder, lesion, other)
          "mean": [m0, m1, m2],                    # μ, in the order of "parameters"
          "iiv_cov": [[...], [...], [...]],        # Ω, symmetric positive definite
          "iov_cov": [[...], [...], [...]],        # Γ, symmetric positive definite
          "mass_exponent": 1.0,                    # β (optional, default 1)
          "reference_mass_g": 310.0,               # mass used when the structure's own is unknown
          "measurement": {                         # optional; TheraTwin defaults otherwise
            "random_rel_sd": 0.05,                 #   per scan (counting, reconstruction, set-up, model misfit)
            "correlated_rel_sd": 0.05,             #   shared by the scans of one cycle (calibration,
                                                   #   segmentation, recovery)
            "additive_sd_MBq": 0.05
          },
          "n_patients": 61,                        # optional: size of the cohort the numbers come from
          "sources": {"mean": "...", "iiv_cov": "...", "iov_cov": "...", "measurement": "..."}
        }
      },
      "references": {"ELLS24": "Ells Z et al. J Nucl Med 2024;65:1264", ...}
    }

A structure is looked up by its exact name, then by its kind key (``theratwin.twin.priors.prior_key``: every
lesion uses ``"lesion"``, the body and unknown structures ``"other"``). Structures missing from a site's file
use the built-in prior and the twin says so (``PatientTwin.summary()["structures"][name]["prior_source"]``).
A per-structure measurement model in the file replaces TheraTwin's default unless the twin is given an
explicit :class:`~theratwin.twin.MeasurementErrorModel`; data that carry their own uncertainties (the
kinetics stage's per-scan random SD and per-cycle correlated SD) add to / replace it per observation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigurationError, InvalidInputError
from .priors import (
    PRIOR_SPECS,
    KineticPriorSpec,
    StructurePrior,
    prior_key,
    radiopharmaceutical_key,
    structure_prior,
)

__all__ = [
    "PRIORS_SCHEMA",
    "PARAMETERS",
    "MeasurementSpec",
    "PopulationPrior",
    "PopulationPriors",
    "builtin_priors",
    "load_priors",
    "priors_json_schema",
]

#: Schema identifier of the priors file (``"schema"`` field); readers refuse other versions with a clear error.
PRIORS_SCHEMA = "theratwin-priors/1"
#: Parameter names of the built-in model family, in file order.
PARAMETERS = ("log_uptake_per_g", "log_washout_bio_per_h", "log_uptake_excess_per_h")

_PUBLISHED_REFERENCES = {
    "ELLS24": "Ells Z et al. Dosimetry of [177Lu]Lu-PSMA-targeted radiopharmaceutical therapies: systematic review "
              "and meta-analysis. J Nucl Med 2024;65:1264",
    "KABA17": "Kabasakal L et al. Lu-177-PSMA-617 prostate-specific membrane antigen inhibitor therapy in patients "
              "with castration-resistant prostate cancer. Mol Imaging Radionucl Ther 2017;26:62",
    "HOHB16": "Hohberg M et al. Lacrimal glands may represent organs at risk for radionuclide therapy of prostate "
              "cancer with [177Lu]DKFZ-PSMA-617. Mol Imaging Biol 2016;18:437",
    "VIOL19": "Violet J et al. Dosimetry of 177Lu-PSMA-617 in metastatic castration-resistant prostate cancer. "
              "J Nucl Med 2019;60:517",
    "DELK16": "Delker A et al. Dosimetry for 177Lu-DKFZ-PSMA-617. Eur J Nucl Med Mol Imaging 2016;43:42",
    "CNM13": "Dosimetric analyses of kidneys, liver, spleen, pituitary gland, and neuroendocrine tumors of patients "
             "treated with 177Lu-DOTATATE. Clin Nucl Med 2013;38(3)",
    "STAA21": "Staanum PF et al. Practical kidney dosimetry in PRRT using [177Lu]Lu-DOTATOC and [177Lu]Lu-DOTATATE. "
              "EJNMMI Phys 2021;8:78",
    "STP18": "Feasibility and accuracy of single time point imaging for renal dosimetry following 177Lu-DOTATATE "
             "('Lutate') therapy. EJNMMI Phys 2018, doi:10.1186/s40658-018-0232-9",
    "HOU21": "Hou X et al. Feasibility of single-time-point dosimetry for radiopharmaceutical therapies. J Nucl Med "
             "2021;62:1006",
    "AAPM26": "Normal-organ effective half-lives for 177Lu-PSMA(-617), AAPM Annual Meeting 2026, abstract 2620",
    "ICRP89": "ICRP Publication 89 (2002): basic anatomical and physiological data, reference adult male masses",
    "GEAR18": "Gear JI et al. EANM practical guidance on uncertainty analysis for molecular radiotherapy absorbed "
              "dose calculations. Eur J Nucl Med Mol Imaging 2018;45:2456",
}


def _fail(where: str, what: str) -> InvalidInputError:
    return InvalidInputError(f"{where}: {what}")


def _matrix(value: Any, where: str, name: str, n: int) -> np.ndarray:
    """A symmetric positive-definite n×n matrix from JSON data, or a clear error."""
    try:
        m = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise _fail(where, f"'{name}' must be a {n}x{n} matrix of numbers, got {value!r:.80}.") from None
    if m.shape != (n, n) or not np.all(np.isfinite(m)):
        raise _fail(where, f"'{name}' must be a {n}x{n} matrix of finite numbers, got shape {m.shape}.")
    if not np.allclose(m, m.T, rtol=1e-9, atol=1e-12):
        raise _fail(where, f"'{name}' must be symmetric.")
    try:
        np.linalg.cholesky(m)
    except np.linalg.LinAlgError:
        raise _fail(where, f"'{name}' must be positive definite (a covariance of log-parameters); "
                           f"its eigenvalues are {np.round(np.linalg.eigvalsh(m), 6).tolist()}.") from None
    return m


def _positive(value: Any, where: str, name: str, *, allow_zero: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise _fail(where, f"'{name}' must be a number, got {value!r:.40}.") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise _fail(where, f"'{name}' must be {'>= 0' if allow_zero else '> 0'}, got {value!r}.")
    return v


@dataclass(frozen=True)
class MeasurementSpec:
    """Measurement error of a structure's activities (relative SDs; ``additive_sd_MBq`` in MBq).

    ``random_rel_sd`` is independent between scans; ``correlated_rel_sd`` is one factor shared by every scan
    of one cycle (calibration, segmentation, recovery: Gear et al. 2018 separate the two for this reason).
    """

    random_rel_sd: float
    correlated_rel_sd: float
    additive_sd_MBq: float = 0.05

    def to_dict(self) -> dict[str, float]:
        """The ``measurement`` object of a priors file."""
        return {"random_rel_sd": self.random_rel_sd, "correlated_rel_sd": self.correlated_rel_sd,
                "additive_sd_MBq": self.additive_sd_MBq}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> MeasurementSpec:
        """The spec from the ``measurement`` object of a priors file.

        Raises
        ------
        InvalidInputError
            ``d`` is not an object, lacks a relative SD or has an unknown field, or a SD is negative, not a
            number or (relative) not below 1; the message starts with ``where`` (file and structure).
        """
        if not isinstance(d, Mapping):
            raise _fail(where, "'measurement' must be an object with random_rel_sd, correlated_rel_sd, additive_sd_MBq.")
        unknown = set(d) - {"random_rel_sd", "correlated_rel_sd", "additive_sd_MBq"}
        if unknown:
            raise _fail(where, f"unknown measurement field(s) {sorted(unknown)}.")
        vals = {}
        for k in ("random_rel_sd", "correlated_rel_sd"):
            if k not in d:
                raise _fail(where, f"measurement needs '{k}' (a relative SD, e.g. 0.05).")
            vals[k] = _positive(d[k], where, f"measurement.{k}", allow_zero=True)
            if vals[k] >= 1.0:
                raise _fail(where, f"measurement.{k} is a relative SD and must be < 1, got {vals[k]}.")
        add = _positive(d.get("additive_sd_MBq", 0.05), where, "measurement.additive_sd_MBq", allow_zero=True)
        return cls(vals["random_rel_sd"], vals["correlated_rel_sd"], add)


@dataclass(frozen=True, eq=False)
class PopulationPrior:
    """Population distribution of one structure's log-parameters (see the module docstring).

    ``mean[0]`` is per gram^``mass_exponent``; :meth:`structure_prior` gives the prior of a structure of a
    given mass in the twin's parameters ``(ln U, φ, ψ)``.
    """

    mean: np.ndarray
    iiv_cov: np.ndarray
    iov_cov: np.ndarray
    reference_mass_g: float
    mass_exponent: float = 1.0
    measurement: MeasurementSpec | None = None
    n_patients: int | None = None
    sources: dict[str, str] = field(default_factory=dict)
    spec: KineticPriorSpec | None = None

    def log_amplitude_shift(self, mass_g: float | None) -> float:
        """``β ln m``: what the structure's mass adds to the prior mean of ln U (reference mass if None)."""
        m = self.reference_mass_g if mass_g is None else float(mass_g)
        return self.mass_exponent * math.log(m)

    def structure_prior(self, mass_g: float | None = None, *, source: str = "") -> StructurePrior:
        """The prior of ``(ln U, φ, ψ)`` for a structure of ``mass_g`` grams (``reference_mass_g`` if None)."""
        mean = np.array(self.mean, dtype=float)
        mean[0] += self.log_amplitude_shift(mass_g)
        return StructurePrior(mean, np.array(self.iiv_cov, float), np.array(self.iov_cov, float), self.spec,
                              mass_g=self.reference_mass_g if mass_g is None else float(mass_g),
                              source=source, measurement=self.measurement)

    def to_dict(self) -> dict[str, Any]:
        """The structure's entry of a priors file (lists of numbers; the optional fields only when set)."""
        d: dict[str, Any] = {
            "mean": [float(v) for v in self.mean],
            "iiv_cov": np.asarray(self.iiv_cov, float).tolist(),
            "iov_cov": np.asarray(self.iov_cov, float).tolist(),
            "mass_exponent": self.mass_exponent,
            "reference_mass_g": self.reference_mass_g,
        }
        if self.measurement is not None:
            d["measurement"] = self.measurement.to_dict()
        if self.n_patients is not None:
            d["n_patients"] = self.n_patients
        d["sources"] = dict(self.sources)
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str) -> PopulationPrior:
        """The prior from a structure's entry of a priors file.

        Raises
        ------
        InvalidInputError
            A field is missing, unknown or invalid (the covariances must be symmetric positive-definite
            matrices of the model's size); the message starts with ``where`` (file and structure).
        """
        if not isinstance(d, Mapping):
            raise _fail(where, "a structure's prior must be an object with mean, iiv_cov, iov_cov, reference_mass_g.")
        known = {"mean", "iiv_cov", "iov_cov", "mass_exponent", "reference_mass_g", "measurement", "n_patients",
                 "sources"}
        unknown = set(d) - known
        if unknown:
            raise _fail(where, f"unknown field(s) {sorted(unknown)}; known: {sorted(known)}.")
        for k in ("mean", "iiv_cov", "iov_cov", "reference_mass_g"):
            if k not in d:
                raise _fail(where, f"missing '{k}'.")
        n = len(PARAMETERS)
        try:
            mean = np.asarray(d["mean"], dtype=float)
        except (TypeError, ValueError):
            raise _fail(where, f"'mean' must be {n} numbers, got {d['mean']!r:.80}.") from None
        if mean.shape != (n,) or not np.all(np.isfinite(mean)):
            raise _fail(where, f"'mean' must be {n} finite numbers ({', '.join(PARAMETERS)}), got {d['mean']!r:.80}.")
        beta = d.get("mass_exponent", 1.0)
        try:
            beta = float(beta)
        except (TypeError, ValueError):
            raise _fail(where, f"'mass_exponent' must be a number, got {beta!r}.") from None
        if not math.isfinite(beta):
            raise _fail(where, f"'mass_exponent' must be finite, got {beta!r}.")
        n_pat = d.get("n_patients")
        if n_pat is not None and (not isinstance(n_pat, int) or isinstance(n_pat, bool) or n_pat < 1):
            raise _fail(where, f"'n_patients' must be a positive integer or null, got {n_pat!r}.")
        sources = d.get("sources", {})
        if not isinstance(sources, Mapping) or not all(isinstance(v, str) for v in sources.values()):
            raise _fail(where, "'sources' must map field names to text (a citation or a method).")
        meas = d.get("measurement")
        return cls(mean, _matrix(d["iiv_cov"], where, "iiv_cov", n), _matrix(d["iov_cov"], where, "iov_cov", n),
                   _positive(d["reference_mass_g"], where, "reference_mass_g"), beta,
                   None if meas is None else MeasurementSpec.from_dict(meas, where), n_pat, dict(sources))


@dataclass(eq=False)
class PopulationPriors:
    """A set of population priors for one radiopharmaceutical and nuclide (one priors file).

    Attributes
    ----------
    radiopharmaceutical, nuclide
        What the numbers describe; the twin refuses a set made for another radiopharmaceutical or nuclide.
    structures
        ``{structure name or kind key: PopulationPrior}``.
    model
        The model family the parameters belong to (``"biexp"``).
    references
        ``{key: citation}`` for the keys used in the ``sources``.
    description, method
        Free text: what the set is and how it was obtained.
    origin
        Where the set came from (``"built-in"`` or the file path); not written to the file.
    fallback
        Priors for structures missing from this set (the built-in set for a site's file), or None.
    """

    radiopharmaceutical: str
    nuclide: str
    structures: dict[str, PopulationPrior]
    model: str = "biexp"
    references: dict[str, str] = field(default_factory=dict)
    description: str = ""
    method: str = ""
    origin: str = "built-in"
    fallback: PopulationPriors | None = None

    def lookup(self, structure: str) -> tuple[PopulationPrior, str]:
        """The prior of ``structure`` (exact name, then kind key) and where it came from.

        Raises
        ------
        ConfigurationError
            Neither this set nor its fallback has a prior for the structure.
        """
        for key in (structure, prior_key(structure)):
            if key in self.structures:
                return self.structures[key], f"{self.origin}: {key}"
        if "other" in self.structures:
            return self.structures["other"], f"{self.origin}: other"
        if self.fallback is not None:
            pr, src = self.fallback.lookup(structure)
            return pr, f"{src} (not in {self.origin})"
        raise ConfigurationError(
            f"No twin prior for structure '{structure}' (kind key '{prior_key(structure)}') in {self.origin}; "
            "add it to the priors file's 'structures'.")

    def check_matches(self, radiopharmaceutical: str, nuclide: str) -> None:
        """Refuse to use priors made for another radiopharmaceutical or nuclide."""
        from ..nuclides import get as get_nuclide

        try:
            same_rph = radiopharmaceutical_key(self.radiopharmaceutical) == radiopharmaceutical_key(radiopharmaceutical)
        except ConfigurationError:
            same_rph = self.radiopharmaceutical.strip().lower() == radiopharmaceutical.strip().lower()
        if not same_rph:
            raise ConfigurationError(
                f"The priors of {self.origin} are for {self.radiopharmaceutical}, the patient received "
                f"{radiopharmaceutical}; supply priors for {radiopharmaceutical}.")
        if get_nuclide(self.nuclide).name != get_nuclide(nuclide).name:
            raise ConfigurationError(
                f"The priors of {self.origin} are for {self.nuclide}, the patient received {nuclide}; supply "
                f"priors for {nuclide}.")

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """The set as the JSON data of a priors file (schema :data:`PRIORS_SCHEMA`)."""
        return {
            "schema": PRIORS_SCHEMA,
            "radiopharmaceutical": self.radiopharmaceutical,
            "nuclide": self.nuclide,
            "model": self.model,
            "parameters": list(PARAMETERS),
            "description": self.description,
            "method": self.method,
            "structures": {k: v.to_dict() for k, v in self.structures.items()},
            "references": dict(self.references),
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The priors file's text (``theratwin-priors/1`` JSON); non-finite numbers raise ``ValueError``."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def save(self, path: str | Path) -> Path:
        """Write the set as a priors file (JSON)."""
        p = Path(path)
        p.write_text(self.to_json() + "\n", encoding="utf-8")
        return p

    @classmethod
    def from_dict(cls, d: Any, *, origin: str = "priors file") -> PopulationPriors:
        """Read priors-file data; every problem is an :class:`~theratwin.errors.InvalidInputError` naming the
        file (``origin``), the structure and the field."""
        if not isinstance(d, Mapping):
            raise _fail(origin, "a priors file must hold a JSON object (schema theratwin-priors/1).")
        if d.get("schema") != PRIORS_SCHEMA:
            raise _fail(origin, f"schema is {d.get('schema')!r}; this TheraTwin reads {PRIORS_SCHEMA!r}.")
        known = {"schema", "radiopharmaceutical", "nuclide", "model", "parameters", "description", "method",
                 "structures", "references"}
        unknown = set(d) - known
        if unknown:
            raise _fail(origin, f"unknown top-level field(s) {sorted(unknown)}; known: {sorted(known)}.")
        for k in ("radiopharmaceutical", "nuclide", "structures"):
            if k not in d:
                raise _fail(origin, f"missing '{k}'.")
        model = d.get("model", "biexp")
        if model not in ("biexp", "pbpk_psma"):
            raise _fail(origin, f"model {model!r} is not one this file format describes ('biexp').")
        params = d.get("parameters", list(PARAMETERS))
        if list(params) != list(PARAMETERS):
            raise _fail(origin, f"'parameters' must be {list(PARAMETERS)} (in this order), got {params!r}.")
        from ..nuclides import get as get_nuclide

        try:
            get_nuclide(str(d["nuclide"]))
        except InvalidInputError as exc:
            raise _fail(origin, f"nuclide: {exc}") from None
        structs = d["structures"]
        if not isinstance(structs, Mapping) or not structs:
            raise _fail(origin, "'structures' must be a non-empty object {structure name or kind key: prior}.")
        refs = d.get("references", {})
        if not isinstance(refs, Mapping):
            raise _fail(origin, "'references' must map keys to citations.")
        out = {str(k): PopulationPrior.from_dict(v, f"{origin}, structure '{k}'") for k, v in structs.items()}
        return cls(str(d["radiopharmaceutical"]), str(d["nuclide"]), out, str(model),
                   {str(k): str(v) for k, v in refs.items()}, str(d.get("description", "")),
                   str(d.get("method", "")), origin)

    @classmethod
    def load(cls, path: str | Path) -> PopulationPriors:
        """Read a priors file; structures it lacks fall back to the built-in priors of its radiopharmaceutical."""
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except OSError as exc:
            raise InvalidInputError(f"{p}: cannot read the priors file ({exc.strerror or exc}).") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"{p}: not valid JSON ({exc}); write it as theratwin-priors/1 JSON.") from None
        priors = cls.from_dict(data, origin=str(p))
        try:
            priors.fallback = builtin_priors(priors.radiopharmaceutical, priors.nuclide)
        except ConfigurationError:
            priors.fallback = None  # a radiopharmaceutical without built-in priors: the file must be complete
        return priors


def load_priors(path: str | Path) -> PopulationPriors:
    """Read a site's priors file (see the module docstring); same as :meth:`PopulationPriors.load`."""
    return PopulationPriors.load(path)


def _from_spec(spec: KineticPriorSpec, nuclide: str, measurement: MeasurementSpec | None) -> PopulationPrior:
    """Per-gram population prior from a published-quantity :class:`KineticPriorSpec` (conversion in
    :func:`theratwin.twin.priors.structure_prior`, at the spec's reference mass)."""
    sp = structure_prior(spec, nuclide)
    mean = np.array(sp.mean, float)
    mean[0] -= math.log(spec.reference_mass_g)  # ln U at the reference mass -> per gram (β = 1)
    table = spec.sources.get("table", "")
    sources = {
        "mean": f"converted from dose per activity, reference mass and effective half-life ({table})",
        "iiv_cov": f"from the published coefficients of variation, correlations 0 (unpublished) ({table})",
        "iov_cov": "unpublished (assumption), chosen from STP18",
        "mass_exponent": "uptake proportional to the structure's mass (assumption)",
    }
    if measurement is not None:
        sources["measurement"] = "TheraTwin default (assumption; GEAR18 for the split random/correlated)"
    return PopulationPrior(mean, sp.iiv_cov, sp.iov_cov, spec.reference_mass_g, 1.0, measurement, None, sources,
                           spec)


def builtin_priors(radiopharmaceutical: str, nuclide: str = "Lu-177",
                   overrides: Mapping[str, KineticPriorSpec] | None = None) -> PopulationPriors:
    """The built-in population priors of ``radiopharmaceutical`` (``"custom"``: only ``overrides``).

    ``overrides`` maps a structure name or kind key to a :class:`KineticPriorSpec` replacing the built-in one.
    """
    from .results import MeasurementErrorModel

    default = MeasurementErrorModel()
    rph = "custom" if radiopharmaceutical == "custom" else radiopharmaceutical_key(radiopharmaceutical)
    specs = dict(PRIOR_SPECS.get(rph, {}))
    specs.update(overrides or {})
    if not specs:
        raise ConfigurationError("A 'custom' radiopharmaceutical needs prior_overrides (or a priors file).")
    out = {}
    for key, spec in specs.items():
        lesion = key == "lesion" or prior_key(key) == "lesion"
        meas = MeasurementSpec(default.lesion_proportional_sd if lesion else default.proportional_sd,
                               default.lesion_correlated_sd if lesion else default.correlated_sd,
                               default.additive_sd_MBq)
        out[key] = _from_spec(spec, nuclide, meas)
    used = {r for s in specs.values() for r in _PUBLISHED_REFERENCES if r in s.sources.get("table", "")}
    used |= {"ICRP89", "GEAR18"}
    return PopulationPriors(
        radiopharmaceutical if rph == "custom" else {"psma-617": "PSMA-617", "dotatate": "DOTATATE"}.get(rph, rph),
        nuclide, out, "biexp", {k: _PUBLISHED_REFERENCES[k] for k in sorted(used)},
        "TheraTwin built-in priors, converted from published summary statistics (theratwin.twin.priors).",
        "Published dose per activity, reference masses, effective half-lives and their CVs converted to the "
        "mean and covariance of the log-parameters (see theratwin.twin.priors); unpublished numbers are marked "
        "in the sources.", "built-in" if not overrides else "built-in with overrides")


def priors_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the priors file, for validating files made elsewhere."""
    text = resources.files(__package__).joinpath("priors.schema.json").read_text(encoding="utf-8")
    return dict(json.loads(text))
