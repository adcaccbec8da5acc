"""The HTML report: one self-contained file (CSS inlined, figures embedded as base64 PNG).

All numbers are read from the JSON form of the results (``Results.to_dict()`` after a JSON round trip, i.e.
exactly what ``results.json`` holds) and shown through :func:`~theratwin.report.format.number_span`, which
annotates each with its JSON path. Figures are drawn from the in-memory objects (maps, masks).

The sections are rendered by the private modules of this package (``_dosimetry`` for the tables of the
results, ``_figure_sections`` for the figures, ``_twin_methods`` for the twin, warnings and methods, on
``_generic`` for JSON of no fixed schema); this module assembles the page.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from string import Template
from typing import Any

import numpy as np

from ..progress import ProgressCallback, report
from ..results import RESEARCH_USE_NOTICE, Results
from ..study import ImageVolume
from ._dosimetry import limit_status, section_dosimetry, section_treatment
from ._figure_sections import section_dvh, section_images, section_structures
from ._first_page import section_first_page
from ._twin_methods import section_methods, section_twin, section_warnings
from .figures import structure_colors
from .format import esc

__all__ = ["ReportConfig", "render_html", "results_json_data", "limit_status"]


@dataclass(frozen=True)
class ReportConfig:
    """Settings of the report (plain data, JSON-serialisable; the report stage's ``ReportStage.Options``).

    Attributes
    ----------
    title
        Document title (HTML ``<title>``, heading, DICOM Document Title).
    institution
        Shown under the title when set.
    pdf
        Also write ``report.pdf`` (WeasyPrint).
    dicom
        Also write the Encapsulated PDF DICOM object (needs ``pdf``).
    show_body_outline
        Outline the body contour on the projections (off: it frames every image and hides little).
    """

    title: str = "TheraTwin dosimetry report"
    institution: str = ""
    pdf: bool = True
    dicom: bool = True
    show_body_outline: bool = False


def results_json_data(results: Results) -> dict[str, Any]:
    """The results as ``results.json`` holds them (a JSON round trip, so floats are exactly the written ones)."""
    return json.loads(results.to_json())


def _read_package_text(name: str) -> str:
    return resources.files(__package__).joinpath("templates", name).read_text(encoding="utf-8")


def _section_ids(data: dict[str, Any]) -> str:
    """Identifiers of the study and the software (the first page keeps the patient's)."""
    study = data.get("study") or {}
    items = [
        ("Study Instance UID", f'<span class="uid">{esc(study.get("study_uid") or "–")}</span>'),
        ("Results created", f'<span data-path=\'["created"]\'>{esc(data.get("created", ""))}</span>'),
        ("Software", f'TheraTwin <span data-path=\'["software","version"]\'>'
                     f'{esc((data.get("software") or {}).get("version", ""))}</span>'),
        ("Results schema", esc(data.get("schema", ""))),
    ]
    dl = "".join(f"<div><dt>{k}</dt><dd>{v}</dd></div>" for k, v in items)
    return f'<section id="identifiers"><h2>Identifiers</h2><dl class="ids">{dl}</dl></section>'


def _lesions(results: Results) -> set[str]:
    """Names of the structures whose role is lesion (from the segmentation's coded kinds)."""
    seg = results.study.segmentation if results.study is not None else None
    return {st.name for st in seg.structures if st.is_lesion} if seg is not None else set()


def _ordered_structures(results: Results) -> list[str]:
    """Structures in reading order: organs at risk, other organs, lesions, then the body."""
    names = results.structure_names()
    seg = results.study.segmentation if results.study is not None else None
    if seg is None:
        return names
    rank = {"organ_at_risk": 0, "organ": 1, "lesion": 2, "body": 3}
    roles = {st.name: rank.get(st.role.value, 1) for st in seg.structures}
    return sorted(names, key=lambda n: (roles.get(n, 1), names.index(n)))


def _masks_for(results: Results, masks: dict[str, np.ndarray] | None, shape: tuple[int, int, int] | None,
               config: ReportConfig) -> dict[str, np.ndarray]:
    seg = results.study.segmentation if results.study is not None else None
    body = {s.name for s in seg.structures if s.role.value == "body"} if seg is not None else {"body"}
    if masks is None and seg is not None and results.maps and shape is not None:
        geom = next(v.geometry for v in results.maps.values() if v.shape == shape)
        masks = {s.name: seg.fractional_mask(s.name, geom) for s in seg.structures}
    masks = dict(masks or {})
    if not config.show_body_outline:
        masks = {k: v for k, v in masks.items() if k not in body}
    return masks


def render_html(results: Results, *, masks: dict[str, np.ndarray] | None = None,
                activity: ImageVolume | None = None, config: ReportConfig | None = None,
                progress: ProgressCallback | None = None) -> str:
    """Render the report as one self-contained HTML document.

    Parameters
    ----------
    results
        The run's results (numbers are taken from their JSON form, as in ``results.json``).
    masks
        ``{structure: mask (z, y, x)}`` on the grid of the maps (e.g. ``ctx.state.masks``); by default the
        study's segmentation resampled to that grid.
    activity
        Activity-concentration volume (Bq/mL) on the grid of the maps for the projections; by default the
        latest cycle's TIA map.
    config
        Report settings.
    progress
        Progress callback (fraction, message).

    Returns
    -------
    str
        The HTML text (UTF-8; figures embedded as ``data:image/png;base64`` URIs).
    """
    cfg = config or ReportConfig()
    data = results_json_data(results)
    report(progress, 0.0, "report: collecting results")
    names = _ordered_structures(results)
    seg = results.study.segmentation if results.study is not None else None
    colors = structure_colors(list(dict.fromkeys([*names, *(seg.names if seg else [])])))
    shape = activity.shape if activity is not None else (
        next(iter(results.maps.values())).shape if results.maps else None)
    mask_map = _masks_for(results, masks, shape, cfg)
    report(progress, 0.1, "report: time-activity curves")
    struct_html, _ = section_structures(data, colors, names)
    report(progress, 0.6, "report: projections and DVH")
    appendix = [
        section_treatment(data),
        section_twin(data, names),
        section_dosimetry(data, names),
        struct_html,
        section_images(results, data, mask_map, activity, colors),
        section_dvh(results, data, colors),
        section_warnings(data),
        section_methods(data),
    ]
    titles = {"treatment": "Treatment", "twin": "Twin details", "dosimetry": "Dosimetry tables",
              "structures": "Time-activity curves", "images": "Projections", "dvh": "DVH",
              "warnings": "Warnings and run notes", "methods": "Methods"}
    present = [k for k in titles if any(f'<section id="{k}"' in p for p in appendix if p)]
    nav = ('<nav class="toc">Appendix: ' + " · ".join(f'<a href="#{k}">{titles[k]}</a>' for k in present) + "</nav>")
    parts = [
        section_first_page(data, results, title=cfg.title, institution=cfg.institution, lesions=_lesions(results)),
        '<div class="appendix" id="appendix"><h1 class="appendix-title">Appendix</h1>'
        f'<p class="subtitle">Details of the dosimetry, the digital twin and the run ({esc(cfg.title)}, patient '
        f'{esc((data.get("study") or {}).get("patient_id") or "–")})</p>{nav}',
        *appendix,
        _section_ids(data),
        "</div>",
    ]
    page = Template(_read_package_text("report.html")).substitute(
        title=esc(cfg.title), css=_read_package_text("report.css"), notice=esc(RESEARCH_USE_NOTICE),
        version=esc(data.get("software", {}).get("version", "")), body="\n".join(p for p in parts if p),
    )
    report(progress, 1.0, "report: HTML done")
    return page
