"""Pipeline stage ``dicom_export``: write RT Dose, SEG and SR into ``OUT/dicom`` and push them if asked.

Options (``PipelineConfig.stage_options["dicom_export"]``):

``seg_algorithm_type``
    SegmentAlgorithmType of the input segmentation written into the SEG (default ``"MANUAL"``).

When ``PipelineConfig.pacs_url`` is set, every DICOM file of ``OUT/dicom`` (including the report's
Encapsulated PDF) is pushed; a failed push leaves the files in ``OUT/outbox`` and adds a warning, and
``theratwin push OUT --pacs URL`` completes it later.
"""

from __future__ import annotations

from typing import Any

from ..errors import PushError
from ..pipeline.core import STAGES, PipelineContext
from .export import export_dicom

__all__ = ["DicomExportStage"]

#: How long the pipeline's push waits for a push of the same folder started by someone else.
_PUSH_WAIT_S = 120.0


class DicomExportStage:
    """Writes the DICOM results (see the module docstring)."""

    name = "dicom_export"
    requires: tuple[str, ...] = ()

    def run(self, context: PipelineContext) -> None:
        res = context.results
        if context.out_dir is None:
            res.warn(self.name, "No output folder: DICOM objects were not written.", severity="info")
            return
        opts: dict[str, Any] = context.config.options(self.name)
        rep = export_dicom(res, context.out_dir, seg_algorithm_type=str(opts.get("seg_algorithm_type", "MANUAL")),
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
