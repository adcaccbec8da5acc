"""Coded concepts for the structures TheraTwin knows, as DICOM SEG / SR expect them.

Codes are taken from pydicom's DICOM code dictionary (``pydicom.sr.codedict.codes``, which follows PS3.16),
looked up by keyword rather than typed in, so a wrong value cannot slip in. ``tissue`` links a structure to the
radiobiology table (alpha/beta, repair half-time, limits) and to the twin's population priors.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

from pydicom.sr.codedict import codes

__all__ = ["CodedConcept", "StructureKind", "STRUCTURE_KINDS", "structure_kind"]


@dataclass(frozen=True)
class CodedConcept:
    """A (value, scheme, meaning) triple, e.g. ``("64033007", "SCT", "Kidney")``."""

    value: str
    scheme: str
    meaning: str

    @classmethod
    def sct(cls, keyword: str, meaning: str | None = None) -> CodedConcept:
        """A SNOMED CT concept from pydicom's ``codes.SCT`` by its keyword (e.g. ``"Kidney"``), optionally
        with another meaning."""
        code = getattr(codes.SCT, keyword)
        return cls(code.value, code.scheme_designator, meaning or code.meaning)

    def to_dict(self) -> dict[str, str]:
        """``{value, scheme, meaning}``."""
        return {"value": self.value, "scheme": self.scheme, "meaning": self.meaning}

    @classmethod
    def from_dict(cls, d: dict[str, str]) -> CodedConcept:
        """The concept from ``{value, scheme, meaning}`` (:meth:`to_dict`)."""
        return cls(d["value"], d["scheme"], d["meaning"])


class StructureRole(str, Enum):
    """What a structure is for the dosimetry."""

    BODY = "body"
    ORGAN_AT_RISK = "organ_at_risk"
    ORGAN = "organ"
    LESION = "lesion"


@dataclass(frozen=True)
class StructureKind:
    """Template for a kind of structure: its codes (DICOM SEG CID 7150/7151), role, tissue key and the
    recommended display colour (sRGB 0-255, written to DICOM SEG as RecommendedDisplayCIELabValue)."""

    key: str
    category: CodedConcept
    type: CodedConcept
    role: StructureRole
    tissue: str
    anatomic_region: CodedConcept | None = None
    color_rgb: tuple[int, int, int] = (128, 174, 128)


# Display colours (sRGB). Kidney, liver, spleen and urinary bladder are the recommendedDisplayRGBValue of
# Slicer's "DICOM master list" segmentation terminology (SegmentationCategoryTypeModifier-DICOM-Master.term.json),
# skin and the default (tissue) those of its "Slicer General Anatomy" list, so a SEG from TheraTwin and one drawn
# in Slicer look alike. The terminologies give none for the glands, marrow and lesions: those take colours of the
# Okabe-Ito colour-blind-safe palette (Okabe M, Ito K. Color Universal Design, 2008), lesions the warm ones.
_COLORS: dict[str, tuple[int, int, int]] = {
    "body": (177, 122, 101),  # Skin (Slicer General Anatomy)
    "kidneys": (185, 102, 83),
    "liver": (221, 130, 101),
    "spleen": (157, 108, 162),
    "bladder": (222, 154, 132),
    "parotid_glands": (86, 180, 233),  # Okabe-Ito sky blue
    "submandibular_glands": (0, 114, 178),  # blue
    "lacrimal_glands": (240, 228, 66),  # yellow
    "red_marrow": (204, 121, 167),  # reddish purple
    "bone_lesion": (213, 94, 0),  # vermillion
    "node_lesion": (230, 159, 0),  # orange
    "lesion": (255, 0, 255),
    "other": (128, 174, 128),  # Tissue (Slicer General Anatomy)
}


_TISSUE = CodedConcept.sct("Tissue")
_ANATOMY = CodedConcept.sct("AnatomicalStructure")
_ABNORMAL = CodedConcept.sct("MorphologicallyAbnormalStructure")

#: Built-in structure kinds, by key. ``tissue`` keys are those of ``theratwin.radiobiology``.
STRUCTURE_KINDS: dict[str, StructureKind] = {
    k.key: replace(k, color_rgb=_COLORS[k.key])
    for k in [
        StructureKind("body", _ANATOMY, CodedConcept.sct("External", "External body contour"), StructureRole.BODY, "body"),
        StructureKind("kidneys", _ANATOMY, CodedConcept.sct("Kidney"), StructureRole.ORGAN_AT_RISK, "kidney"),
        StructureKind("liver", _ANATOMY, CodedConcept.sct("Liver"), StructureRole.ORGAN, "liver"),
        StructureKind("spleen", _ANATOMY, CodedConcept.sct("Spleen"), StructureRole.ORGAN, "spleen"),
        StructureKind("parotid_glands", _ANATOMY, CodedConcept.sct("ParotidGland"), StructureRole.ORGAN_AT_RISK, "salivary_gland"),
        StructureKind("submandibular_glands", _ANATOMY, CodedConcept.sct("SubmandibularGland"), StructureRole.ORGAN_AT_RISK, "salivary_gland"),
        StructureKind("lacrimal_glands", _ANATOMY, CodedConcept.sct("LacrimalGland"), StructureRole.ORGAN_AT_RISK, "lacrimal_gland"),
        StructureKind(
            "red_marrow", _TISSUE, CodedConcept.sct("BoneMarrow", "Bone marrow"), StructureRole.ORGAN_AT_RISK, "red_marrow",
            anatomic_region=CodedConcept.sct("LumbarSpine"),
        ),
        StructureKind("bladder", _ANATOMY, CodedConcept.sct("UrinaryBladderStructure", "Urinary bladder"), StructureRole.ORGAN, "bladder"),
        StructureKind(
            "bone_lesion", _ABNORMAL, CodedConcept.sct("NeoplasmSecondary", "Neoplasm, Secondary"), StructureRole.LESION, "tumour",
            anatomic_region=CodedConcept.sct("Bone"),
        ),
        StructureKind(
            "node_lesion", _ABNORMAL, CodedConcept.sct("NeoplasmSecondary", "Neoplasm, Secondary"), StructureRole.LESION, "tumour",
            anatomic_region=CodedConcept.sct("LymphNode", "Lymph node"),
        ),
        StructureKind("lesion", _ABNORMAL, CodedConcept.sct("Lesion"), StructureRole.LESION, "tumour"),
        StructureKind("other", _ANATOMY, CodedConcept.sct("AnatomicalStructure"), StructureRole.ORGAN, "soft_tissue"),
    ]
}


def structure_kind(name: str) -> StructureKind:
    """Guess the kind of a structure from its name (``"kidneys"``, ``"Kidney_L"``, ``"lesion_bone_1"`` ...).

    Falls back to ``"other"``; the caller can always give the kind explicitly.
    """
    n = name.lower().replace(" ", "_").replace("-", "_")
    rules = [
        ("body", ("body", "external", "skin")),
        ("kidneys", ("kidney", "renal")),
        ("liver", ("liver",)),
        ("spleen", ("spleen",)),
        ("parotid_glands", ("parotid",)),
        ("submandibular_glands", ("submandibular",)),
        ("lacrimal_glands", ("lacrimal",)),
        ("red_marrow", ("marrow", "vertebra", "lumbar")),
        ("bladder", ("bladder",)),
        ("bone_lesion", ("bone_lesion", "lesion_bone", "bone_met", "osseous")),
        ("node_lesion", ("node_lesion", "lesion_node", "lymph", "node")),
        ("lesion", ("lesion", "tumor", "tumour", "met")),
    ]
    for key, words in rules:
        if any(w in n for w in words):
            return STRUCTURE_KINDS[key]
    return STRUCTURE_KINDS["other"]
