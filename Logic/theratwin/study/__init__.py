"""Study data model: images with LPS geometry, administrations, time points, cycles and segmentations."""

from .codes import STRUCTURE_KINDS, CodedConcept, StructureKind, StructureRole, structure_kind
from .image import Geometry, ImageVolume
from .model import Administration, Cycle, Patient, Segmentation, SourceRef, Structure, Study, TimePoint

__all__ = [
    "Geometry",
    "ImageVolume",
    "Patient",
    "Administration",
    "TimePoint",
    "Cycle",
    "Structure",
    "Segmentation",
    "Study",
    "SourceRef",
    "CodedConcept",
    "StructureKind",
    "StructureRole",
    "STRUCTURE_KINDS",
    "structure_kind",
]
