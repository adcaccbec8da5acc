"""Pipeline stage ``report``: writes report.html, report.pdf and dicom/report-pdf.dcm.

Runs after ``twin`` and before ``dicom_export`` (which pushes everything in ``dicom/``) and ``fhir_export``
(which attaches the PDF to DiagnosticReport.presentedForm). Options (``stage_options["report"]``) are the
fields of :class:`~theratwin.report.ReportConfig`.
"""

from __future__ import annotations

from ..options import parse_options
from ..pipeline.core import STAGES, PipelineContext
from ..study import ImageVolume
from .html import ReportConfig
from .writer import write_report

__all__ = ["ReportStage"]


def _activity_volume(ctx: PipelineContext) -> ImageVolume | None:
    """Activity concentration (Bq/mL) of the first time point of cycle 1 on the reference grid."""
    aligned = ctx.state.aligned_spect or {}
    if aligned:
        first = aligned[min(aligned)]
        if first:
            return first[0]
    c1 = ctx.study.cycles[0]
    return c1.time_points[0].image if c1.time_points else None


class ReportStage:
    """The report stage (see the module docstring)."""

    name = "report"
    requires: tuple[str, ...] = ()
    Options = ReportConfig

    def run(self, ctx: PipelineContext) -> None:
        """Write report.html, report.pdf and the Encapsulated PDF (``dicom/report-pdf.dcm``); nothing
        without an output folder or with ``write_outputs`` off."""
        cfg = parse_options(self.Options, ctx.config.options(self.name), stage=self.name)
        if ctx.out_dir is None or not ctx.config.write_outputs:
            return  # nothing to write to; the report is a file
        masks = ctx.state.masks
        activity = _activity_volume(ctx)
        ref = ctx.state.reference_grid
        if activity is not None and ref is not None and not activity.geometry.same_grid(ref):
            activity = activity.resample_to(ref)
        files = write_report(ctx.results, ctx.out_dir, masks=masks, activity=activity, config=cfg,
                             progress=ctx.stage_progress)
        ctx.results.outputs["report_html"] = files.html.relative_to(ctx.out_dir).as_posix()
        if files.pdf is not None:
            ctx.results.outputs["report_pdf"] = files.pdf.relative_to(ctx.out_dir).as_posix()
        if files.dicom is not None:
            ctx.results.outputs["report_dicom"] = files.dicom.relative_to(ctx.out_dir).as_posix()
        ctx.results.record_method(
            self.name, "HTML/PDF report (matplotlib figures, WeasyPrint PDF, DICOM Encapsulated PDF)",
            {"pdf": cfg.pdf, "dicom": cfg.dicom},
            ["DICOM PS3.3 A.45.1 Encapsulated PDF IOD"],
        )


STAGES.register("report", ReportStage)
