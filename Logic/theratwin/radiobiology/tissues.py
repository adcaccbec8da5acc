"""Tissue parameters (alpha/beta, repair half-time) and dose limits, keyed by ``Structure.tissue``.

The keys are those of ``theratwin.study.codes`` (``"kidney"``, ``"salivary_gland"``, ``"lacrimal_gland"``,
``"red_marrow"``, ``"liver"``, ``"spleen"``, ``"bladder"``, ``"tumour"``, ``"soft_tissue"``, ``"body"``).
Every number names its source; where no tissue-specific radiobiological estimate exists the entry says that
it is a generic assumption. Limits from external-beam radiotherapy (Emami, QUANTEC) are for 2-Gy fractions,
so they are stated as EQD2 limits; transfer to radionuclide therapy is itself an assumption that the
literature makes with caution. Users override any value through :func:`tissue_parameters` (``overrides``) or
the ``"tissues"`` option of the radiobiology stage.

==================  ======  =======  ===============================  ============================================
tissue              a/b Gy  Trep h   limit                            sources
==================  ======  =======  ===============================  ============================================
kidney              2.6     2.8      BED 40 Gy (28 Gy risk factors)   Wessels 2008 (a/b, Trep); Bodei 2008 (limits)
red_marrow          10      0.5      absorbed dose 2 Gy               generic early-responding a/b; Benua 1962 /
                                                                      EANM (Lassmann 2008) for 2 Gy
salivary_gland      3       1.5      EQD2 (mean) 25 Gy                generic late a/b; Deasy 2010 (QUANTEC)
lacrimal_gland      3       1.5      EQD2 (mean) 30 Gy                generic late a/b; Parsons 1994
liver               2.5     1.5      EQD2 (mean) 30 Gy                Dawson 2005 (a/b); Emami 1991 TD5/5
spleen              3       1.5      none                             generic late a/b
bladder             3       1.5      EQD2 65 Gy                       generic late a/b; Emami 1991 TD5/5
tumour              10      1.5      none (target)                    generic tumour a/b; Trep as Dale 1996
soft_tissue, body   3       1.5      none                             generic late a/b
==================  ======  =======  ===============================  ============================================

Tumours differ by indication (:data:`TUMOUR_INDICATIONS`, chosen from the radiopharmaceutical by
:func:`indication_for` or set in the radiobiology stage's ``indication`` option):

=====================  ======  =======  =====================================================================
indication             a/b Gy  Trep h   sources
=====================  ======  =======  =====================================================================
prostate_cancer        1.5     0.27     a/b: Brenner & Hall 1999 (1.5 Gy), Miralbell 2012 (1.4, 95 % CI
                                        0.9-2.2 Gy, 5969 patients); Trep: Wang 2003 (best estimate 16 min,
                                        0-90 min), 18 min in DU-145 cells (Wang 2005)
neuroendocrine_tumour  10      1.5      generic: no tumour-specific estimate is established
generic (tumour)       10      1.5      generic tumour values (Dale 1996)
=====================  ======  =======  =====================================================================

For a protracted radionuclide dose the repair half-time matters as much as a/b: with Teff = 60 h and D = 30 Gy,
BED/D is 1.09 for prostate cancer with Trep = 0.27 h but 1.49 with 1.5 h (a/b 1.5 Gy). The table's values are stated
assumptions, recorded in the methods; a site overrides them (``tissues={"tumour": {...}}``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from ..errors import ConfigurationError

__all__ = ["TissueParameters", "TISSUES", "tissue_parameters", "REFERENCES", "TUMOUR_INDICATIONS",
           "indication_for"]

REFERENCES: dict[str, str] = {
    "wessels2008": "Wessels BW et al. Bioeffect modeling of kidney toxicity in peptide receptor radionuclide "
                   "therapy. J Nucl Med 2008;49:1884-1899",
    "bodei2008": "Bodei L et al. Long-term evaluation of renal toxicity after PRRT with 90Y-DOTATOC and "
                 "177Lu-DOTATATE: the role of associated risk factors. Eur J Nucl Med Mol Imaging "
                 "2008;35:1847-1856",
    "barone2005": "Barone R et al. Patient-specific dosimetry in predicting renal toxicity with 90Y-DOTATOC: "
                  "relevance of kidney volume and dose rate in finding a dose-effect relationship. J Nucl Med "
                  "2005;46:99S-106S",
    "emami1991": "Emami B et al. Tolerance of normal tissue to therapeutic irradiation. Int J Radiat Oncol "
                 "Biol Phys 1991;21:109-122",
    "deasy2010": "Deasy JO et al. Radiation dose-volume effects in the salivary glands (QUANTEC). Int J Radiat "
                 "Oncol Biol Phys 2010;76:S58-S63",
    "parsons1994": "Parsons JT et al. Severe dry-eye syndrome following external beam irradiation. Int J Radiat "
                   "Oncol Biol Phys 1994;30:775-780",
    "dawson2005": "Dawson LA, Ten Haken RK. Partial volume tolerance of the liver to radiation. Semin Radiat "
                  "Oncol 2005;15:279-283",
    "benua1962": "Benua RS et al. The relation of radioiodine dosimetry to results and complications in the "
                 "treatment of metastatic thyroid cancer. Am J Roentgenol 1962;87:171-182",
    "lassmann2008": "Lassmann M et al. EANM Dosimetry Committee series on standard operational procedures for "
                    "pre-therapeutic dosimetry I: blood and bone marrow dosimetry in differentiated thyroid "
                    "cancer therapy. Eur J Nucl Med Mol Imaging 2008;35:1405-1412",
    "dale1996": "Dale RG. Dose-rate effects in targeted radiotherapy. Phys Med Biol 1996;41:1871-1884",
    "hobbs_sgouros": "Hobbs RF, Sgouros G. Calculation of the biological effective dose for piecewise defined "
                     "dose-rate fits. Med Phys 2009;36:904-907",
    "brenner_hall1999": "Brenner DJ, Hall EJ. Fractionation and protraction for radiotherapy of prostate carcinoma. "
                        "Int J Radiat Oncol Biol Phys 1999;43:1095-1101",
    "miralbell2012": "Miralbell R, Roberts SA, Zubizarreta E, Hendry JH. Dose-fractionation sensitivity of prostate "
                     "cancer deduced from radiotherapy outcomes of 5,969 patients in seven international "
                     "institutional datasets: alpha/beta = 1.4 (0.9-2.2) Gy. Int J Radiat Oncol Biol Phys "
                     "2012;82:e17-e24",
    "wang2003": "Wang JZ, Guerrero M, Li XA. How low is the alpha/beta ratio for prostate cancer? Int J Radiat "
                "Oncol Biol Phys 2003;55:194-203 (repair half-time best estimate 16 min, range 0-90 min)",
    "wang2005": "Wang JZ, Rhee J, Stewart R, Li XA. In vitro measurement of the repair time for prostate cancer "
                "(DU-145 split-dose experiments: 18 min). Med Phys 2005;32:2031 (abstract MO-D-T-6E-06)",
    "user": "Value set by the user's configuration",
    "generic": "Generic value (early-responding/tumour 10 Gy, late-responding 3 Gy; repair half-time 1.5 h) "
               "as commonly assumed when no tissue-specific estimate exists (e.g. Dale 1996)",
}


@dataclass(frozen=True)
class TissueParameters:
    """Radiobiological parameters and the dose limit of one tissue.

    Attributes
    ----------
    tissue
        Tissue key (``Structure.tissue``).
    alpha_beta_Gy, repair_half_time_h
        Linear-quadratic alpha/beta ratio (Gy) and half-time of sublethal damage repair (h).
    limit_quantity
        ``"BED"``, ``"EQD2"``, ``"dose"`` (absorbed dose) or None (no limit, e.g. tumours).
    limit_Gy
        The limit in Gy for that quantity (cumulative over cycles).
    limit_with_risk_factors_Gy
        A lower limit that applies with risk factors (kidney: hypertension, diabetes, ...).
    references
        Keys into :data:`REFERENCES`, one per number, and a note saying which number comes from where.
    """

    tissue: str
    alpha_beta_Gy: float
    repair_half_time_h: float
    limit_quantity: str | None = None
    limit_Gy: float | None = None
    limit_with_risk_factors_Gy: float | None = None
    note: str = ""
    references: tuple[str, ...] = ()

    def limit(self, *, risk_factors: bool = False) -> dict[str, Any] | None:
        """The limit as stored in ``StructureResult.limit`` (quantity, value, reference text), or None."""
        if self.limit_quantity is None or self.limit_Gy is None:
            return None
        value = self.limit_with_risk_factors_Gy if (risk_factors and self.limit_with_risk_factors_Gy) else self.limit_Gy
        return {
            "quantity": self.limit_quantity,
            "value_Gy": value,
            "risk_factors": bool(risk_factors and self.limit_with_risk_factors_Gy is not None),
            "note": self.note,
            "reference": "; ".join(REFERENCES[r] for r in self.references if r in REFERENCES),
        }

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, with each reference key expanded to its full citation."""
        d = asdict(self)
        d["references"] = [REFERENCES.get(r, r) for r in self.references]
        return d


_GENERIC_AB_GY, _GENERIC_TREP_H = 3.0, 1.5  # generic late-responding values (see REFERENCES["generic"])

#: Built-in table (see the module docstring for what each number comes from).
TISSUES: dict[str, TissueParameters] = {
    t.tissue: t
    for t in [
        TissueParameters(
            "kidney", 2.6, 2.8, "BED", 40.0, 28.0,
            note="a/b 2.6 Gy and Trep 2.8 h as used by Wessels 2008 (also Barone 2005 BED model); BED limits "
                 "40 Gy (no risk factors) and 28 Gy (with risk factors) from Bodei 2008.",
            references=("wessels2008", "barone2005", "bodei2008"),
        ),
        TissueParameters(
            "red_marrow", 10.0, 0.5, "dose", 2.0,
            note="a/b 10 Gy and Trep 0.5 h are generic early-responding-tissue assumptions; the 2 Gy absorbed-"
                 "dose limit is the blood/marrow limit of Benua 1962 adopted by the EANM (Lassmann 2008).",
            references=("generic", "benua1962", "lassmann2008"),
        ),
        TissueParameters(
            "salivary_gland", 3.0, 1.5, "EQD2", 25.0,
            note="Generic late-tissue a/b and Trep; mean-dose limit 25 Gy in 2-Gy fractions (both parotids, "
                 "QUANTEC, Deasy 2010), applied as EQD2.",
            references=("generic", "deasy2010"),
        ),
        TissueParameters(
            "lacrimal_gland", 3.0, 1.5, "EQD2", 30.0,
            note="Generic late-tissue a/b and Trep; dry-eye risk rises above about 30 Gy in 2-Gy fractions "
                 "(Parsons 1994), applied as EQD2.",
            references=("generic", "parsons1994"),
        ),
        TissueParameters(
            "liver", 2.5, 1.5, "EQD2", 30.0,
            note="a/b 2.5 Gy for liver (Dawson 2005); Trep generic; whole-liver TD5/5 30 Gy (Emami 1991) "
                 "applied as EQD2.",
            references=("dawson2005", "generic", "emami1991"),
        ),
        TissueParameters("spleen", _GENERIC_AB_GY, _GENERIC_TREP_H, note="Generic late-tissue values; no limit set.",
                         references=("generic",)),
        TissueParameters(
            "bladder", 3.0, 1.5, "EQD2", 65.0,
            note="Generic late-tissue a/b and Trep; whole-bladder TD5/5 65 Gy (Emami 1991) applied as EQD2.",
            references=("generic", "emami1991"),
        ),
        TissueParameters("tumour", 10.0, 1.5, note="Generic tumour a/b 10 Gy; Trep 1.5 h (Dale 1996). No limit.",
                         references=("generic", "dale1996")),
        TissueParameters("soft_tissue", _GENERIC_AB_GY, _GENERIC_TREP_H, note="Generic late-tissue values; no limit set.",
                         references=("generic",)),
        TissueParameters("body", _GENERIC_AB_GY, _GENERIC_TREP_H, note="Generic late-tissue values; no limit set.",
                         references=("generic",)),
    ]
}


#: Tumour parameters by indication (see the module docstring); ``tissue`` is always ``"tumour"``.
TUMOUR_INDICATIONS: dict[str, TissueParameters] = {
    "prostate_cancer": TissueParameters(
        "tumour", 1.5, 0.27,
        note="Prostate cancer: a/b 1.5 Gy (Brenner & Hall 1999; Miralbell 2012: 1.4 Gy, 95 % CI 0.9-2.2); repair "
             "half-time 16 min (Wang 2003, best estimate from clinical LDR/EBRT equivalence; 18 min in vitro, "
             "Wang 2005). Both uncertain; BED of a protracted dose depends strongly on the repair half-time.",
        references=("brenner_hall1999", "miralbell2012", "wang2003", "wang2005"),
    ),
    "neuroendocrine_tumour": TissueParameters(
        "tumour", 10.0, 1.5,
        note="Neuroendocrine tumour: generic tumour a/b 10 Gy and Trep 1.5 h (Dale 1996); no NET-specific "
             "estimate is established.",
        references=("generic", "dale1996"),
    ),
    "generic": TISSUES["tumour"],
}

# radiopharmaceutical name fragments -> indication (lower case; first match wins)
_INDICATION_BY_LIGAND = (
    ("psma", "prostate_cancer"),
    ("pnt2002", "prostate_cancer"),
    ("dotatate", "neuroendocrine_tumour"),
    ("dotatoc", "neuroendocrine_tumour"),
    ("dotanoc", "neuroendocrine_tumour"),
    ("edotreotide", "neuroendocrine_tumour"),
    ("oxodotreotide", "neuroendocrine_tumour"),
    ("somatostatin", "neuroendocrine_tumour"),
)


def indication_for(radiopharmaceutical: str | None) -> str:
    """The tumour indication implied by a radiopharmaceutical's name (``"generic"`` when none is known)."""
    name = (radiopharmaceutical or "").lower().replace(" ", "")
    return next((ind for frag, ind in _INDICATION_BY_LIGAND if frag in name), "generic")


def tissue_parameters(tissue: str, overrides: dict[str, dict[str, Any]] | None = None, *,
                      indication: str | None = None) -> TissueParameters:
    """Parameters of ``tissue`` from :data:`TISSUES`, with optional overrides.

    Parameters
    ----------
    tissue
        Tissue key (``Structure.tissue``); unknown keys fall back to ``"soft_tissue"``.
    overrides
        ``{tissue: {field: value}}``, e.g. ``{"kidney": {"limit_Gy": 28.0}}`` or
        ``{"tumour": {"alpha_beta_Gy": 8.0, "note": "site protocol"}}``; new tissue keys may be added with
        at least ``alpha_beta_Gy`` and ``repair_half_time_h``.
    indication
        For ``tissue="tumour"``: a key of :data:`TUMOUR_INDICATIONS` (None: the generic tumour). Overrides of
        ``"tumour"`` apply on top.
    """
    key = tissue.lower()
    base = TISSUES.get(key)
    if key == "tumour" and indication is not None:
        if indication not in TUMOUR_INDICATIONS:
            raise ConfigurationError(f"Unknown tumour indication {indication!r}; known: {sorted(TUMOUR_INDICATIONS)}.")
        base = TUMOUR_INDICATIONS[indication]
    ov = dict((overrides or {}).get(key, {}))
    if base is None:
        if "alpha_beta_Gy" in ov and "repair_half_time_h" in ov:
            base = TissueParameters(key, float(ov.pop("alpha_beta_Gy")), float(ov.pop("repair_half_time_h")),
                                    references=("user",))
        else:
            base = replace(TISSUES["soft_tissue"], tissue=key)
    if not ov:
        return base
    known = set(TissueParameters.__dataclass_fields__) - {"tissue"}
    unknown = set(ov) - known
    if unknown:
        raise ConfigurationError(
            f"Unknown tissue parameter(s) {sorted(unknown)} for '{key}'; known: {sorted(known)}."
        )
    if "references" in ov:
        ov["references"] = tuple(ov["references"])
    for f in ("alpha_beta_Gy", "repair_half_time_h"):
        if f in ov and not (float(ov[f]) > 0):
            raise ConfigurationError(f"Tissue '{key}': {f} must be > 0; got {ov[f]!r}.")
    if "references" not in ov:
        ov["references"] = (*base.references, "user")
    return replace(base, **ov)
