"""Pipeline stage ``dicom_export``: write RT Dose, SEG and SR into ``OUT/dicom`` and push them if asked.

Options (``PipelineConfig.stage_options["dicom_export"]``): the fields of :class:`DicomExportOptions`. With
``PipelineConfig.write_outputs`` off nothing is written (and nothing pushed).

When ``PipelineConfig.pacs_url`` is set, every DICOM file of ``OUT/dicom`` (including the report's
Encapsulated PDF) is pushed; a failed push leaves the files in ``OUT/outbox`` and adds a warning, and
``theratwin push OUT --pacs URL`` completes it later.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigurationError, PushError
from ..options import parse_options
from ..pipeline.core import STAGES, PipelineContext
from .export import export_dicom

__all__ = ["DicomExportOptions", "DicomExportStage"]

#: Segment Algorithm Type (0062,0008) defined terms (PS3.3 C.8.20.2).
_SEG_ALGORITHM_TYPES = ("MANUAL", "SEMIAUTOMATIC", "AUTOMATIC")


@dataclass(frozen=True)
class DicomExportOptions:
    """Options of the ``dicom_export`` stage (``DicomExportStage.Options``).

    Attributes
    ----------
    seg_algorithm_type
        Segment Algorithm Type (0062,0008) of the input segmentation written into the SEG: ``"MANUAL"`` (default),
        ``"SEMIAUTOMATIC"`` or ``"AUTOMATIC"`` (any case).
    """

    seg_algorithm_type: str = "MANUAL"

    def __post_init__(self) -> None:
        if self.seg_algorithm_type.upper() not in _SEG_ALGORITHM_TYPES:
            raise ConfigurationError(f"seg_algorithm_type must be one of {', '.join(_SEG_ALGORITHM_TYPES)} "
                                     f"(PS3.3 C.8.20.2); got {self.seg_algorithm_type!r}.")

#: How long the pipeline's push waits for a push of the same folder started by someone else.
_PUSH_WAIT_S = 120.0


class DicomExportStage:
    """Writes the DICOM results (see the module docstring)."""

    name = "dicom_export"
    requires: tuple[str, ...] = ()
    Options = DicomExportOptions

    def run(self, context: PipelineContext) -> None:
        """Write RT Dose, SR (TID 1500) and SEG of the results into ``out_dir/dicom`` (nothing, with an
        info warning, without an output folder or with ``write_outputs`` off)."""
        res = context.results
        opts = parse_options(self.Options, context.config.options(self.name), stage=self.name)
        if context.out_dir is None or not context.config.write_outputs:
            why = "No output folder" if context.out_dir is None else "Writing outputs is off (write_outputs)"
            res.warn(self.name, f"{why}: DICOM objects were not written.", severity="info")
            return
        rep = export_dicom(res, context.out_dir, seg_algorithm_type=opts.seg_algorithm_type,
                           progress=context.stage_progress)
        for w in rep.warnings:
            res.warn(self.name, w)
        res.outputs["dicom"] = rep.all_files
        if rep.rtdose:
            res.outputs["rtdose"] = rep.rtdose
        if rep.seg:
            res.outputs["seg"] = rep.seg
        if rep.sr:
            res.outputs["sr"] = rep.sr
        res.record_method(self.name, "DICOM RT Dose, SEG and TID 1500 SR export",
                          {"rtdose_pixel": "uint16 with per-object DoseGridScaling",
                           "dose_summation_types": "CYCLE, MULTI_CYCLE"},
                          ["DICOM PS3.3 A.18 (RT Dose), A.51 (SEG), A.35.13 (Comprehensive 3D SR); PS3.16 TID 1500"])
        if context.config.pacs_url:
            from ..delivery import push_dicom_directory, push_lock

            # this run's objects only (an earlier run's report object may still be in dicom/ until the run ends);
            # the folder check of `theratwin push` is for finished folders, this one is being written (the
            # settings were checked by the pipeline before any stage ran)
            mine = [*rep.rtdose, *rep.seg, *rep.sr]
            if res.outputs.get("report_dicom"):
                mine.append(str(res.outputs["report_dicom"]))
            try:
                with push_lock(context.out_dir, wait_s=_PUSH_WAIT_S):
                    push = push_dicom_directory(context.out_dir, context.config.pacs_url, files=mine)
            except PushError as exc:  # another push of this folder running: keep the run, say why
                res.warn(self.name, f"PACS push not done: {exc}", severity="error")
                return
            res.outputs["pacs_push"] = push.describe()
            if not push.ok:
                res.warn(self.name, push.describe(), severity="error")


STAGES.register("dicom_export", DicomExportStage)
