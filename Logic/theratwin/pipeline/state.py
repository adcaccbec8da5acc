"""What the stages hand each other in memory during a run: :class:`PipelineState`.

The stages' written results go into :class:`~theratwin.results.Results` (and ``results.json``); the objects a
later stage needs but nobody reads from a file (the registered images, the masks, the fits, the twin object)
go here, one typed attribute each. A stage documents which attributes it fills and which it reads; an attribute
is None until the stage that fills it has run (which stage that is, is recorded in the field's metadata and
used by :meth:`theratwin.pipeline.Pipeline.invalidate`).

The class has slots: a misspelt attribute (``state.mask = ...``) is an ``AttributeError``, not a silent new key.
Plug-in stages keep their own in-memory objects on their stage object or write them into ``Results.extras``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError

if TYPE_CHECKING:  # annotations only: the pipeline does not import the science at run time
    import numpy as np

    from ..kinetics.fit import TacFit
    from ..kinetics.stp import StpEstimate
    from ..kinetics.tac import StructureTac
    from ..kinetics.voxel import VoxelFit
    from ..registration.register import RegistrationResult
    from ..study import Geometry, ImageVolume
    from ..twin import PatientTwin

__all__ = ["PipelineState"]


def _by(stage: str) -> dict[str, str]:
    return {"stage": stage}


@dataclass(slots=True)
class PipelineState:
    """In-memory objects the stages pass to each other (see the module docstring).

    Attributes
    ----------
    reference_grid
        Registration: the voxel grid every map and mask is on (the SPECT grid of cycle 1's first time point).
    aligned_spect
        Registration: ``{cycle number: [ImageVolume, one per time point in acquisition order]}``, activity
        concentration in Bq/mL resampled onto ``reference_grid`` (total activity conserved).
    registration
        Registration: ``{cycle number: [RegistrationResult, one per time point]}`` (transform, residual in mm,
        method).
    masks
        Registration: ``{structure name: float32 array (z, y, x)}``, the fraction 0..1 of each voxel of
        ``reference_grid`` inside the structure; empty when the study has no segmentation.
    body_mask
        Registration: bool array (z, y, x) on ``reference_grid``, the body outline from the reference CT (None
        without CT).
    partial_volume
        Kinetics: how partial-volume effects were handled, for the dosimetry stage: ``system_fwhm_mm`` (float or
        None), ``structure_method``, ``image_method`` and ``voxel_map_fwhm_mm`` (resolution left in the voxel TIA
        maps, mm).
    voxel_fits
        Kinetics: ``{cycle number: VoxelFit}`` for cycles with at least two time points.
    aligned_spect_pvc
        Kinetics: ``{cycle number: [ImageVolume Bq/mL]}``, ``aligned_spect`` after the image-based partial-volume
        correction, for the cycles where it was applied (empty without it).
    tacs
        Kinetics: ``{cycle number: {structure name: StructureTac}}`` (times in h, activities in MBq).
    tac_fits
        Kinetics: ``{cycle number: {structure name: TacFit or StpEstimate}}``, the fitted curves (``predict(time_h)``
        gives MBq) or single-time-point estimates.
    dose_masks
        Dosimetry: ``{structure name: float32 array (z, y, x)}``, the fractional masks on the dose grid the doses
        were computed with (``masks``, or the segmentation's covered fractions without a registration stage).
    density_g_per_mL
        Dosimetry: float array (z, y, x), mass density on the dose grid from the reference CT's HU (None: water).
    twin
        Twin: the :class:`~theratwin.twin.PatientTwin` updated with every cycle's data.
    fhir_bundle
        FHIR export: the transaction Bundle as a JSON-ready dict.
    output_files
        Given by the caller: ``{path relative to the output folder: text}`` written when the run is sealed, just
        before ``results.json``, and listed in the manifest (e.g. the demo patient's ``demo-truth.json``).
    """

    reference_grid: Geometry | None = field(default=None, metadata=_by("registration"))
    aligned_spect: dict[int, list[ImageVolume]] | None = field(default=None, metadata=_by("registration"))
    registration: dict[int, list[RegistrationResult]] | None = field(default=None, metadata=_by("registration"))
    masks: dict[str, np.ndarray] | None = field(default=None, metadata=_by("registration"))
    body_mask: np.ndarray | None = field(default=None, metadata=_by("registration"))
    partial_volume: dict[str, Any] | None = field(default=None, metadata=_by("kinetics"))
    voxel_fits: dict[int, VoxelFit] | None = field(default=None, metadata=_by("kinetics"))
    aligned_spect_pvc: dict[int, list[ImageVolume]] | None = field(default=None, metadata=_by("kinetics"))
    tacs: dict[int, dict[str, StructureTac]] | None = field(default=None, metadata=_by("kinetics"))
    tac_fits: dict[int, dict[str, TacFit | StpEstimate]] | None = field(default=None, metadata=_by("kinetics"))
    dose_masks: dict[str, np.ndarray] | None = field(default=None, metadata=_by("dosimetry"))
    density_g_per_mL: np.ndarray | None = field(default=None, metadata=_by("dosimetry"))
    twin: PatientTwin | None = field(default=None, metadata=_by("twin"))
    fhir_bundle: dict[str, Any] | None = field(default=None, metadata=_by("fhir_export"))
    output_files: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PipelineState:
        """A state from ``{attribute: value}`` (the form ``Pipeline.run(state=...)`` took before this class).

        Raises
        ------
        ConfigurationError
            Naming the unknown keys and the known attributes.
        """
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigurationError(f"Unknown pipeline state {unknown}; a PipelineState has the attributes "
                                     f"{known}.")
        return cls(**values)

    @classmethod
    def stage_of(cls, attribute: str) -> str | None:
        """The stage that fills ``attribute`` (None: the caller's, such as ``output_files``)."""
        return next((f.metadata.get("stage") for f in dataclasses.fields(cls) if f.name == attribute), None)

    def snapshot(self) -> PipelineState:
        """A copy of the attributes (the objects they hold are shared: stages put new objects into the state,
        they do not change the ones an earlier stage put there)."""
        return PipelineState(**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    def restore(self, snapshot: PipelineState) -> None:
        """Set the attributes stages fill back to the ``snapshot``'s, in place (front ends holding this object see
        the change); what the caller gave (``output_files``) stays. An attribute no stage changed since the
        snapshot keeps its object."""
        for f in dataclasses.fields(self):
            if f.metadata.get("stage") is not None:
                setattr(self, f.name, getattr(snapshot, f.name))
