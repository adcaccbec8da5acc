"""Which radionuclide a series shows: code sequence, else half-life, else the user's ``--nuclide``.

1. Radionuclide Code Sequence (0054,0300): the code looked up in CID 18 "Isotopes in Radiopharmaceuticals" and
   CID 4020 "PET Radionuclide" (pydicom's copy of PS3.16), else its Code Meaning read as text; failing that, the
   Radiopharmaceutical (0018,0031) text ("Lu-177-PSMA-617").
2. Radionuclide Half Life (0018,1075), in seconds: the nuclide of those two context groups (plus the therapy
   nuclides TheraTwin is tested with) whose ICRP-107 half-life is within 1 % of it, if exactly one is.
3. The nuclide the user gives (``ReadOptions.nuclide``, CLI ``--nuclide``); it must agree with 1 or 2 when they
   give an answer.
"""

from __future__ import annotations

import functools
import re

from pydicom.dataset import Dataset

from ._read_values import get_float, get_item, get_text

__all__ = ["nuclide_from_text", "nuclide_from_code", "nuclide_from_half_life", "identify_nuclide",
           "HALF_LIFE_TOLERANCE"]

#: Relative tolerance of a Radionuclide Half Life match.
HALF_LIFE_TOLERANCE = 0.01

_ELEMENTS = {
    "lutetium": "Lu", "yttrium": "Y", "iodine": "I", "terbium": "Tb", "actinium": "Ac", "radium": "Ra",
    "lead": "Pb", "bismuth": "Bi", "holmium": "Ho", "samarium": "Sm", "rhenium": "Re", "copper": "Cu",
    "gallium": "Ga", "fluorine": "F", "technetium": "Tc", "indium": "In", "thorium": "Th", "astatine": "At",
    "scandium": "Sc", "strontium": "Sr", "erbium": "Er", "zirconium": "Zr", "thallium": "Tl", "carbon": "C",
    "nitrogen": "N", "oxygen": "O", "rubidium": "Rb", "zinc": "Zn", "bromine": "Br", "manganese": "Mn",
    "germanium": "Ge", "titanium": "Ti", "potassium": "K", "selenium": "Se", "sodium": "Na", "cobalt": "Co",
    "iron": "Fe", "chromium": "Cr", "gold": "Au", "xenon": "Xe", "krypton": "Kr", "barium": "Ba",
    "gadolinium": "Gd", "iridium": "Ir", "niobium": "Nb", "phosphorus": "P", "ruthenium": "Ru",
    "tantalum": "Ta", "ytterbium": "Yb", "arsenic": "As",
}
#: Therapy nuclides beyond CID 18/4020 that sites image or plan with (ICRP-107 names).
_EXTRA_CANDIDATES = ("Tb-161", "Ac-225", "Pb-212", "Bi-213", "Th-227", "At-211", "Sc-47", "Er-169", "Tb-149",
                     "Tb-152", "Tb-155", "Cu-67", "Ho-166")


def nuclide_from_text(text: str) -> str | None:
    """Canonical nuclide name (``"Lu-177"``) from texts such as ``"^177^Lutetium"``, ``"Lu-177"``,
    ``"177Lu"``, ``"Lutetium-177"`` or ``"Lu-177-PSMA-617"``; None if no nuclide can be recognised."""
    if not text:
        return None
    s = text.replace("^", " ").replace("_", " ")
    m = re.search(r"(\d{1,3})\s*(m?)\s*-?\s*([A-Za-z]{3,})", s)  # 177 Lutetium, 99m Technetium
    if m and m[3].lower() in _ELEMENTS:
        return f"{_ELEMENTS[m[3].lower()]}-{int(m[1])}{m[2]}"
    m = re.search(r"([A-Za-z]{3,})\s*-?\s*(\d{1,3})(m?)(?![A-Za-z])", s)  # Lutetium-177
    if m and m[1].lower() in _ELEMENTS:
        return f"{_ELEMENTS[m[1].lower()]}-{int(m[2])}{m[3]}"
    symbols = {v.lower(): v for v in _ELEMENTS.values()}
    m = re.search(r"(?<![A-Za-z])([A-Za-z]{1,2})\s*-?\s*(\d{1,3})(m?)(?![\dA-Za-ln-z])", s)  # Lu-177, Tc99m
    if m and m[1].lower() in symbols:
        return f"{symbols[m[1].lower()]}-{int(m[2])}{m[3]}"
    m = re.search(r"(?<!\d)(\d{1,3})(m?)\s*-?\s*([A-Za-z]{1,2})(?![A-Za-z])", s)  # 177Lu, 99mTc
    if m and m[3].lower() in symbols:
        return f"{symbols[m[3].lower()]}-{int(m[1])}{m[2]}"
    return None


def nuclide_from_code(value: str, scheme: str) -> str | None:
    """Look a radionuclide code up in DICOM CID 18 / CID 4020 (pydicom's copy of PS3.16) and read its meaning."""
    try:
        from pydicom.sr._concepts_dict import concepts
    except ImportError:  # pragma: no cover - pydicom always ships it
        return None
    table: dict[str, dict[str, tuple[str, list[int]]]] = concepts.get(  # type: ignore[assignment]
        "SCT" if scheme in ("SCT", "SNM3", "SRT") else scheme, {})
    for entry in table.values():
        if value in entry:
            meaning, cids = entry[value]
            if 18 in cids or 4020 in cids or "^" in meaning:
                return nuclide_from_text(meaning)
    return None


@functools.lru_cache(maxsize=1)
def _candidates() -> tuple[tuple[str, float], ...]:
    """(name, ICRP-107 half-life in s) of every nuclide of CID 18 and CID 4020 plus the therapy extras."""
    from pydicom.sr._cid_dict import cid_concepts
    from pydicom.sr._concepts_dict import concepts

    from ..errors import InvalidInputError
    from ..nuclides._data import _half_life_s, _load_icrp

    names: set[str] = set(_EXTRA_CANDIDATES)
    for cid in (18, 4020):
        for scheme, keywords in cid_concepts.get(cid, {}).items():
            for kw in keywords:
                entries: dict[str, tuple[str, list[int]]] = concepts.get(scheme, {}).get(kw, {})  # type: ignore[assignment]
                for meaning, _cids in entries.values():
                    name = nuclide_from_text(meaning)
                    if name:
                        names.add(name)
    out = []
    for name in sorted(names):
        try:
            out.append((name, _half_life_s(_load_icrp(name))))
        except (InvalidInputError, KeyError, ValueError):
            continue  # not in ICRP-107 under this name
    return tuple(out)


def nuclide_from_half_life(half_life_s: float) -> tuple[str | None, list[str]]:
    """The unique candidate within :data:`HALF_LIFE_TOLERANCE` of ``half_life_s``, and all candidates that are."""
    matches = [n for n, t in _candidates() if abs(t - half_life_s) <= HALF_LIFE_TOLERANCE * t]
    return (matches[0] if len(matches) == 1 else None), matches


def identify_nuclide(item: Dataset, given: str | None) -> tuple[str | None, str, str]:
    """The nuclide of a Radiopharmaceutical Information Sequence item.

    Returns
    -------
    (nuclide, source, problem)
        ``source`` says which rule applied; ``problem`` is a one-line refusal (nuclide None) or "".
    """
    from_code: str | None = None
    code = get_item(item, "RadionuclideCodeSequence")
    if code is not None:
        from_code = nuclide_from_code(get_text(code, "CodeValue"), get_text(code, "CodingSchemeDesignator"))
        if from_code is None:
            from_code = nuclide_from_text(get_text(code, "CodeMeaning"))
    source = "RadionuclideCodeSequence (0054,0300)"
    if from_code is None:
        from_code = nuclide_from_text(get_text(item, "Radiopharmaceutical"))
        source = "Radiopharmaceutical (0018,0031)"
    half_life = get_float(item, "RadionuclideHalfLife")
    from_half: str | None = None
    matches: list[str] = []
    if half_life is not None and half_life > 0:
        from_half, matches = nuclide_from_half_life(half_life)
    if from_code is not None:
        if given is not None and given != from_code:
            return None, "", (f"--nuclide {given} contradicts {source}, which says {from_code}; remove --nuclide or "
                              "correct the files.")
        return from_code, source, ""
    if from_half is not None:
        if given is not None and given != from_half:
            return None, "", (f"--nuclide {given} contradicts RadionuclideHalfLife (0018,1075) {half_life:g} s, "
                              f"which is {from_half}'s (ICRP-107, within {100 * HALF_LIFE_TOLERANCE:g} %).")
        return from_half, (f"RadionuclideHalfLife (0018,1075) {half_life:g} s = {from_half} (ICRP-107, unique "
                           f"match within {100 * HALF_LIFE_TOLERANCE:g} %)"), ""
    if given is not None:
        if half_life is not None and half_life > 0 and matches and given not in matches:
            return None, "", (f"--nuclide {given} contradicts RadionuclideHalfLife (0018,1075) {half_life:g} s "
                              f"(candidates {', '.join(matches)}).")
        return given, "--nuclide (the files do not say it)", ""
    if half_life is not None and half_life > 0 and matches:
        why = f"RadionuclideHalfLife {half_life:g} s matches {', '.join(matches)} within 1 %"
    elif half_life is not None and half_life > 0:
        why = f"RadionuclideHalfLife {half_life:g} s matches no known nuclide within 1 %"
    else:
        why = "no RadionuclideHalfLife (0018,1075) either"
    return None, "", (f"radionuclide not recognised from RadionuclideCodeSequence (0054,0300) or Radiopharmaceutical "
                      f"(0018,0031), and {why}; give it with --nuclide (e.g. --nuclide F-18).")
