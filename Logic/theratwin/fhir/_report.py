"""The ``DiagnosticReport`` grouping the analysis's Observations, with the HTML/PDF report as ``presentedForm``."""

from __future__ import annotations

import base64
import hashlib
import logging
from pathlib import Path
from typing import Any

from ..results import RESEARCH_USE_NOTICE, Results
from ._common import Analysis, fhir_datetime
from .codes import IDENTIFIER_BASE, V2_0074_SYSTEM, coding

__all__ = ["add_diagnostic_report"]

# the export logs under its public module, as before the split
log = logging.getLogger("theratwin.fhir.bundle")


def add_diagnostic_report(a: Analysis, result_refs: list[str], imaging_refs: list[str], out: Path | None, *,
                          include_reports: bool, max_attachment_bytes: int) -> str:
    """Add the DiagnosticReport of ``result_refs`` (the Observations) and return its ``fullUrl``.

    The reports are embedded when ``include_reports`` and no larger than ``max_attachment_bytes``; the
    conclusion names those too large.
    """
    results, study, key, tag, issued, patient_ref, tz = (a.results, a.study, a.key, a.tag, a.issued, a.patient_ref,
                                                        a.tz)
    report_system = f"{IDENTIFIER_BASE}/diagnostic-report"
    dr: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "meta": {"tag": [tag]},
        "identifier": [{"system": report_system, "value": f"{key}/report"}],
        "status": "final",
        "category": [{"coding": [{"system": V2_0074_SYSTEM, "code": "NMS", "display": "Nuclear Medicine Scan"}]}],
        "code": {"coding": [coding("dosimetry-report")], "text": "Radioligand therapy dosimetry (TheraTwin)"},
        "subject": {"reference": patient_ref},
        "effectiveDateTime": fhir_datetime(study.cycles[-1].administration.start, tz),
        "issued": issued,
        "conclusion": _conclusion(results),
    }
    if result_refs:
        dr["result"] = [{"reference": r} for r in result_refs]
    if imaging_refs:
        dr["imagingStudy"] = [{"reference": r} for r in imaging_refs]
    forms, too_big = _presented_forms(results, out, max_attachment_bytes) if include_reports else ([], [])
    if forms:
        dr["presentedForm"] = forms
    if too_big:
        dr["conclusion"] += (f" Report file(s) {', '.join(too_big)} too large to embed (> "
                             f"{max_attachment_bytes} bytes); see the DICOM Encapsulated PDF in the imaging study.")
    return a.builder.add(dr, system=report_system, value=f"{key}/report")


def _conclusion(results: Results) -> str:
    lines = []
    for n, cr in sorted(results.cycles.items()):
        parts = []
        for name, sr in cr.structures.items():
            if sr.mean_dose_Gy is not None:
                parts.append(f"{name} {sr.mean_dose_Gy:.2f} Gy")
        if parts:
            lines.append(f"Cycle {n} ({cr.administered_MBq:.0f} MBq {cr.nuclide} {cr.radiopharmaceutical}): mean "
                         "absorbed dose " + ", ".join(parts) + ".")
    # results accepted despite a failed plausibility check say so where the EHR shows them
    lines.extend(f"CHECK BEFORE USE ({w.stage}): {w.message}" for w in results.warnings
                 if w.stage == "plausibility" or w.severity == "error")
    lines.append(RESEARCH_USE_NOTICE)
    return " ".join(lines)


def _presented_forms(results: Results, out: Path | None,
                     max_bytes: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Attachments of the PDF/HTML reports (base64) and the names of those too large to embed."""
    forms: list[dict[str, Any]] = []
    too_big: list[str] = []
    for kind, ctype, title in (("report_pdf", "application/pdf", "TheraTwin dosimetry report (PDF)"),
                               ("report_html", "text/html", "TheraTwin dosimetry report (HTML)")):
        rel = results.outputs.get(kind)
        if not rel or out is None:
            continue
        path = Path(str(rel))
        path = path if path.is_absolute() else out / path
        if not path.is_file():
            log.warning("FHIR export: %s listed as %s does not exist; not attached", path, kind)
            continue
        data = path.read_bytes()
        if len(data) > max_bytes:
            log.info("FHIR export: %s is %d bytes (> %d); not embedded", path, len(data), max_bytes)
            too_big.append(path.name)
            continue
        forms.append({
            "contentType": ctype,
            "language": "en",
            "data": base64.b64encode(data).decode("ascii"),
            "size": len(data),
            # Attachment.hash is the base64 SHA-1 of the data (FHIR R4 datatypes, Attachment)
            "hash": base64.b64encode(hashlib.sha1(data).digest()).decode("ascii"),
            "title": title,
        })
    return forms, too_big
