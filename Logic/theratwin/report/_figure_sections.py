"""The report's figure sections: time-activity curves, maximum-intensity projections and DVHs.

The figures are drawn by :mod:`theratwin.report.figures` from the in-memory objects and embedded as PNG.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..results import CUMULATIVE, Results, map_name
from ..study import ImageVolume
from ._dosimetry import field_path, latest_cycle_key
from ._generic import is_number
from .figures import dvh_figure, figure_png, mip_figure, png_data_uri, tac_figure
from .format import esc, number_span

__all__ = ["section_structures", "section_images", "section_dvh"]


# Fit-quality figures worth a physicist's glance (others stay in results.json).
_FIT_QUALITY_KEYS = ("r_squared", "chi2_reduced")


def _fit_caption(data: dict[str, Any], name: str) -> str:
    """Model, TIA method, Akaike weights and fit quality per cycle, for a TAC's caption."""
    lines = []
    for key, c in (data.get("cycles") or {}).items():
        sr = (c.get("structures") or {}).get(name) or {}
        if not sr:
            continue
        items = [f"model {esc(sr.get('kinetic_model') or '–')}"]
        if sr.get("tia_method"):
            items.append(f"TIA {esc(sr['tia_method'])}")
        weights = sr.get("model_weights")
        if isinstance(weights, dict):
            vals = [f"{esc(k)} {number_span(data, field_path(key, name, f'model_weights.{k}'), structure=name, cycle=key)}"
                    for k, v in weights.items() if is_number(v) and "." not in str(k)]
            if len(vals) > 1:
                # what the weights are depends on how the kinetics stage selected its models
                method = str(sr.get("tia_method") or "")
                label = ("posterior model probabilities" if method.startswith("evidence") else
                         "AICc weights" if method.startswith(("aicc", "model_average")) else "model weights")
                items.append(f"{label} " + ", ".join(vals))
        quality = sr.get("fit_quality")
        if isinstance(quality, dict):
            for k in _FIT_QUALITY_KEYS:
                if is_number(quality.get(k)):
                    items.append(f"{k.replace('_', ' ')} "
                                 f"{number_span(data, field_path(key, name, f'fit_quality.{k}'), structure=name, cycle=key)}")
        lines.append(f"<li>cycle {esc(key)}: {'; '.join(items)}</li>")
    return f'<ul class="fit-details">{"".join(lines)}</ul>' if lines else ""


def section_structures(data: dict[str, Any], colors: dict[str, str], names: list[str]) -> tuple[str, int]:
    """Small multiples of the time-activity curves, one per structure, captioned with the chosen model."""
    parts = []
    n_fig = 0
    for name in names:
        per_cycle = []
        for key, c in (data.get("cycles") or {}).items():
            sr = (c.get("structures") or {}).get(name)
            if sr:
                per_cycle.append({"cycle": key, "nuclide": c.get("nuclide"), **sr})
        fig = tac_figure(name, per_cycle, color=colors.get(name, "#0072B2"))
        if fig is None:
            continue
        n_fig += 1
        parts.append(
            f'<figure class="plot tac" data-figure="tac" data-structure="{esc(name)}" id="tac-{esc(name)}">'
            f'<img alt="Time-activity curve of {esc(name)}" src="{png_data_uri(figure_png(fig))}">'
            f"<figcaption>{_fit_caption(data, name)}</figcaption></figure>"
        )
    if not parts:
        return "", 0
    return ('<section id="structures"><h2>Time-activity curves</h2><p class="note">Measured activity (± 1 SD), '
            "fitted model re-evaluated from the stored parameters, and ± 1 SD band (relative TIA uncertainty "
            f'applied to the curve).</p><div class="tac-grid">{"".join(parts)}</div></section>'), n_fig


def section_images(results: Results, data: dict[str, Any], masks: dict[str, np.ndarray],
                    activity: ImageVolume | None, colors: dict[str, str]) -> str:
    key = latest_cycle_key(data) or (str(min(results.cycles)) if results.cycles else None)
    panels: list[tuple[str, ImageVolume]] = []
    if activity is not None:
        panels.append(("Activity (first scan)", activity))
    tia, dose = (map_name(int(key), "tia"), map_name(int(key), "dose")) if key is not None else ("", "")
    if activity is None and tia in results.maps:
        panels.append((f"TIA cycle {key}", results.maps[tia]))
    if dose in results.maps:
        panels.append((f"Dose cycle {key}", results.maps[dose]))
    if len(results.cycles) > 1 and map_name(CUMULATIVE, "dose") in results.maps:
        panels.append(("Cumulative dose", results.maps[map_name(CUMULATIVE, "dose")]))
    if not panels:
        return ""
    shape = panels[0][1].shape
    panels = [(t, v) for t, v in panels if v.shape == shape]
    fig = mip_figure(panels, {n: m for n, m in masks.items() if np.shape(m) == shape}, colors)
    if fig is None:
        return ""
    return (
        '<section id="images"><h2>Activity and dose: maximum-intensity projections</h2>'
        '<figure class="plot mip" data-figure="mip"><img alt="Coronal and axial maximum-intensity projections" '
        f'src="{png_data_uri(figure_png(fig, palette=False))}"><figcaption>Coronal (head up) and axial (anterior up) '
        "maximum-intensity projections on the reference SPECT grid; patient left on the viewer's right. "
        "Lines: projected structure outlines.</figcaption></figure></section>"
    )


def section_dvh(results: Results, data: dict[str, Any], colors: dict[str, str]) -> str:
    curves = []
    for key, c in (data.get("cycles") or {}).items():
        for name, sr in (c.get("structures") or {}).items():
            if isinstance(sr.get("dvh"), dict):
                curves.append((name, int(key), sr["dvh"]))
    seg = results.study.segmentation if results.study is not None else None
    panels = None
    if seg is not None:
        roles = {st.name: st.role.value for st in seg.structures}
        if any(r == "lesion" for r in roles.values()):
            panels = {n: "lesions" if roles.get(n) == "lesion" else "organs and body" for n in roles}
    fig = dvh_figure(curves, colors, panels)
    if fig is None:
        return ""
    return (
        '<section id="dvh"><h2>Dose-volume histograms</h2><figure class="plot dvh" data-figure="dvh">'
        f'<img alt="Cumulative dose-volume histograms" src="{png_data_uri(figure_png(fig))}">'
        "<figcaption>Cumulative DVH (fraction of the structure volume receiving at least the dose): latest cycle "
        "solid, earlier cycles thin dashed.</figcaption></figure></section>"
    )
