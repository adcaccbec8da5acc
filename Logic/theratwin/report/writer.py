"""Write the report files: ``report.html``, ``report.pdf`` and the Encapsulated PDF DICOM object."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._files import atomic_write
from ..progress import ProgressCallback, report, scaled
from ..results import Results
from ..study import ImageVolume
from .dicom import write_encapsulated_pdf
from .html import ReportConfig, render_html
from .pdf import html_to_pdf

__all__ = ["ReportFiles", "write_report"]


@dataclass
class ReportFiles:
    """Paths of the files written (``None`` when not written)."""

    html: Path
    pdf: Path | None = None
    dicom: Path | None = None


def write_report(results: Results, out_dir: str | Path, *, masks: dict[str, np.ndarray] | None = None,
                 activity: ImageVolume | None = None, config: ReportConfig | None = None,
                 progress: ProgressCallback | None = None) -> ReportFiles:
    """Render the report and write ``report.html``, ``report.pdf`` and ``dicom/report-pdf.dcm`` in ``out_dir``.

    Parameters
    ----------
    results
        The run's results.
    out_dir
        Output directory (created if needed).
    masks, activity, config
        See :func:`theratwin.report.render_html`.
    progress
        Progress callback (fraction, message).

    Returns
    -------
    ReportFiles
        The paths written.
    """
    cfg = config or ReportConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    html = render_html(results, masks=masks, activity=activity, config=cfg, progress=scaled(progress, 0.0, 0.6))
    files = ReportFiles(html=out / "report.html")
    atomic_write(files.html, html)
    if cfg.pdf:
        report(progress, 0.6, "report: PDF")
        try:
            pdf = html_to_pdf(html, out / "report.pdf")
        except (ImportError, OSError) as exc:
            # WeasyPrint needs Pango at run time; without it the HTML report still stands on its own
            results.warn("report", f"report.pdf not written ({exc}); install WeasyPrint and its Pango library "
                         "(see scripts/bootstrap.sh) to get the PDF and the Encapsulated PDF.")
            report(progress, 1.0, "report: done (HTML only)")
            return files
        files.pdf = out / "report.pdf"
        if cfg.dicom:
            report(progress, 0.95, "report: Encapsulated PDF")
            files.dicom = write_encapsulated_pdf(pdf, results, out / "dicom" / "report-pdf.dcm", title=cfg.title)
    report(progress, 1.0, "report: done")
    return files
