"""The dosimetry report: one self-contained HTML file, its PDF, and the PDF as DICOM Encapsulated PDF.

Example (``results`` from a pipeline run)::

    from theratwin.report import write_report
    files = write_report(results, "out/")                # report.html, report.pdf, dicom/report-pdf.dcm

Every number shown is read from the JSON form of the results and carries its JSON path (``data-path``), so
that it can be checked against ``results.json``. The report carries the research-use notice on every page.
"""

from __future__ import annotations

from .dicom import REPORT_DOCUMENT_CODE, encapsulated_pdf_dataset, write_encapsulated_pdf
from .format import format_number
from .html import ReportConfig, render_html, results_json_data
from .pdf import html_to_pdf
from .writer import ReportFiles, write_report

__all__ = [
    "ReportConfig",
    "ReportFiles",
    "render_html",
    "html_to_pdf",
    "write_report",
    "write_encapsulated_pdf",
    "encapsulated_pdf_dataset",
    "format_number",
    "results_json_data",
    "REPORT_DOCUMENT_CODE",
]
