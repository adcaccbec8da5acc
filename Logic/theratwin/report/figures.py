"""Figures of the report (matplotlib, Agg canvas, no pyplot global state): time-activity curves, maximum
intensity projections with structure outlines, and dose-volume histograms.

Figures are returned as PNG bytes so that the HTML can embed them (``data:`` URIs) and stay one file.
"""

from __future__ import annotations

import base64
import functools
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import patheffects
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..study import ImageVolume

__all__ = [
    "figure_png",
    "png_data_uri",
    "tac_figure",
    "dvh_figure",
    "mip_figure",
    "model_curve",
    "structure_colors",
    "limits_figure",
]

#: Resolution of embedded figures: sharp on screen and in A4 print, small enough to keep the file light.
FIGURE_DPI = 110

# Colour cycle readable by people with the common colour-vision deficiencies (Okabe & Ito 2008,
# "Color Universal Design", https://jfly.uni-koeln.de/color/).
_OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
_LINESTYLES = ("-", "--", ":", "-.")


def structure_colors(names: Sequence[str]) -> dict[str, str]:
    """One colour per structure, used in every figure of the report.

    Up to eight structures get the Okabe-Ito palette (distinguishable with the common colour-vision
    deficiencies); more get matplotlib's 20-colour ``tab20`` qualitative palette. The segmentation's own
    colours are not used: neighbouring organs often have similar ones (e.g. Slicer's kidney and liver).
    """
    if len(names) <= len(_OKABE_ITO):
        return {n: _OKABE_ITO[i] for i, n in enumerate(names)}
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    cmap = colormaps["tab20"]
    return {n: to_hex(cmap(i % 20)) for i, n in enumerate(names)}


def figure_png(fig: Figure, *, palette: bool = True) -> bytes:
    """Render a figure to a compact PNG with the Agg canvas (RGB, no alpha channel).

    With ``palette`` the image is reduced to 256 colours: line plots have few distinct colours, so this is
    lossless in practice and makes the HTML, the PDF and the FHIR attachment about three times smaller.
    Images with smooth grey or colour-map gradients (projections) should keep full colour.
    """
    from PIL import Image

    canvas = FigureCanvasAgg(fig)
    fig.set_dpi(FIGURE_DPI)
    fig.set_facecolor("white")
    canvas.draw()
    img = Image.fromarray(np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[..., :3]))
    if palette:
        img = img.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def png_data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` URI of PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


@functools.lru_cache(maxsize=16)
def _lambda_phys_per_h(nuclide: str | None) -> float | None:
    """Physical decay constant (1/h) of ``nuclide`` from the ICRP-107 data (cached: looked up per figure)."""
    if not nuclide:
        return None
    try:
        from .. import nuclides

        return float(nuclides.get(nuclide).decay_constant_per_h)
    except Exception:  # an unknown nuclide only costs the fitted curve, not the report
        return None


def _theta_from_physical(model: Any, params: Mapping[str, float], time_h: np.ndarray, activity_MBq: np.ndarray,
                         lambda_phys_per_h: float) -> np.ndarray | None:
    """Internal parameters ``theta`` whose ``physical_params`` reproduce ``params`` (relative error < 1e-6).

    ``results.json`` keeps the readable parameters (``A0_MBq``, ``lambda_eff_per_h`` ...); the registry's
    models evaluate ``theta``. Solving for ``theta`` works for every plug-in that implements the protocol.
    """
    from scipy.optimize import least_squares

    keys = [k for k, v in params.items() if isinstance(v, (int, float)) and math.isfinite(v) and v != 0.0]
    if not keys:
        return None
    target = np.array([float(params[k]) for k in keys])

    def resid(theta: np.ndarray) -> np.ndarray:
        got = model.physical_params(theta, lambda_phys_per_h)
        return np.array([float(got.get(k, np.nan)) for k in keys]) / target - 1.0

    best: np.ndarray | None = None
    best_cost = np.inf
    for guess in model.initial_guesses(time_h, activity_MBq, lambda_phys_per_h):
        try:
            sol = least_squares(resid, np.asarray(guess, dtype=float), xtol=1e-14, ftol=1e-14, gtol=1e-14)
        except (ValueError, FloatingPointError):
            continue
        if np.all(np.isfinite(sol.fun)) and sol.cost < best_cost:
            best, best_cost = sol.x, sol.cost
    if best is None or np.max(np.abs(resid(best))) > 1e-6:
        return None
    return best


def model_curve(model: str | None, params: Mapping[str, float] | None, time_h: np.ndarray, *,
                nuclide: str | None = None, measured_time_h: Sequence[float] | np.ndarray | None = None,
                measured_activity_MBq: Sequence[float] | np.ndarray | None = None,
                measured_sd_MBq: Sequence[float] | np.ndarray | None = None) -> np.ndarray | None:
    """Activity (MBq) of a fitted kinetic model at ``time_h``, re-evaluated through the kinetics model registry
    (:data:`theratwin.kinetics.models.KINETIC_MODELS`) from the parameters stored in the results.

    Least-squares models are evaluated at the internal parameters that reproduce the stored physical
    parameters; direct models (trapezoidal) are re-run on the measured samples. Returns ``None`` when the
    kinetics package, the model or the data needed is not available (the report then shows the points only).
    """
    if not model or params is None:
        return None
    name = model.split(":", 1)[1] if model.startswith("fit:") else model
    lp = _lambda_phys_per_h(nuclide)
    if lp is None or measured_time_h is None or measured_activity_MBq is None:
        return None
    try:
        from ..kinetics.models import get_model

        entry = get_model(name)
    except Exception:  # kinetics not installed, or a model name this installation does not know
        return None
    t_meas = np.asarray(measured_time_h, dtype=float)
    a_meas = np.asarray(measured_activity_MBq, dtype=float)
    tq = np.asarray(time_h, dtype=float)
    try:
        if getattr(entry, "param_names", ()) and hasattr(entry, "physical_params"):
            theta = _theta_from_physical(entry, params, t_meas, a_meas, lp)
            if theta is None:
                return None
            y = np.asarray(entry.evaluate(theta, tq, lp), dtype=float)
        elif hasattr(entry, "fit_direct"):
            sd = None if measured_sd_MBq is None else np.asarray(measured_sd_MBq, dtype=float)
            y = np.asarray(entry.fit_direct(t_meas, a_meas, sd, lp).predict(tq), dtype=float)
        else:
            return None
    except Exception:  # a plug-in failing to evaluate costs the curve only
        return None
    return y if y.shape == tq.shape and np.all(np.isfinite(y)) else None


def tac_figure(structure: str, cycles: Sequence[Mapping[str, Any]], *, color: str = "#0072B2") -> Figure | None:
    """Time-activity curve of one structure: measured points (±1 SD), fitted model and ±1 SD band per cycle.

    Parameters
    ----------
    structure
        Structure name (title).
    cycles
        One mapping per cycle with the JSON fields of ``StructureResult`` plus ``"cycle"``: ``time_h``,
        ``activity_MBq``, ``activity_sd_MBq``, ``kinetic_model``, ``kinetic_params``, ``tia_MBq_h``,
        ``tia_sd_MBq_h``.

    Returns
    -------
    Figure or None
        ``None`` when no cycle has a measured curve.
    """
    usable = [c for c in cycles if c.get("time_h") and c.get("activity_MBq")]
    if not usable:
        return None
    fig = Figure(figsize=(3.6, 2.5))
    ax = fig.subplots()
    t_max = max(max(c["time_h"]) for c in usable)
    for i, c in enumerate(usable):
        ls = _LINESTYLES[i % len(_LINESTYLES)]
        t = np.asarray(c["time_h"], dtype=float)
        a = np.asarray(c["activity_MBq"], dtype=float)
        sd = c.get("activity_sd_MBq")
        label = f"cycle {c['cycle']}"
        marker = "os^Dv"[i % 5]
        if sd is not None and len(sd) == len(a):
            ax.errorbar(t, a, yerr=np.asarray(sd, dtype=float), fmt=marker, color=color, ms=4, capsize=2,
                        alpha=1.0 - 0.25 * min(i, 2), label=f"{label} measured")
        else:
            ax.plot(t, a, marker, color=color, ms=4, label=f"{label} measured")
        tt = np.linspace(0.0, max(t_max * 1.15, 1.0), 240)
        y = model_curve(c.get("kinetic_model"), c.get("kinetic_params"), tt, nuclide=c.get("nuclide"),
                        measured_time_h=t, measured_activity_MBq=a, measured_sd_MBq=sd)
        if y is not None:
            ax.plot(tt, y, ls, color=color, lw=1.4, label=f"{label} fit: {c.get('kinetic_model')}")
            tia, tia_sd = c.get("tia_MBq_h"), c.get("tia_sd_MBq_h")
            if tia and tia_sd is not None and tia > 0:
                # band: the relative SD of the TIA applied to the curve (the fit's parameter covariance is
                # not kept in results.json; the TIA SD is its propagated summary)
                rel = float(tia_sd) / float(tia)
                ax.fill_between(tt, y * (1 - rel), y * (1 + rel), color=color, alpha=0.15, lw=0,
                                label=f"{label} ±1 SD")
    ax.set_xlabel("time since administration (h)")
    ax.set_ylabel("activity (MBq)")
    ax.set_xlim(left=0.0)
    ax.set_ylim(bottom=0.0)
    ax.set_title(structure, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="upper right", frameon=False)
    ax.tick_params(labelsize=7)
    ax.xaxis.label.set_fontsize(8)
    ax.yaxis.label.set_fontsize(8)
    # fixed margins instead of tight_layout: it would draw the figure twice (TACs are the most numerous figures)
    fig.subplots_adjust(left=0.17, right=0.97, bottom=0.17, top=0.9)
    return fig


def dvh_figure(curves: Sequence[tuple[str, int, Mapping[str, Any]]], colors: Mapping[str, str],
               panels: Mapping[str, str] | None = None) -> Figure | None:
    """Cumulative DVHs, one panel per group of structures (e.g. organs, lesions).

    Parameters
    ----------
    curves
        ``[(structure, cycle, {"dose_Gy": [...], "volume_fraction": [...]})]``.
    colors
        Line colour per structure.
    panels
        Panel title per structure (default: one panel). The latest cycle is drawn solid, earlier cycles
        thin and dashed.
    """
    usable = [(s, c, d) for s, c, d in curves
              if d and d.get("dose_Gy") and d.get("volume_fraction")
              and len(d["dose_Gy"]) == len(d["volume_fraction"])]
    if not usable:
        return None
    latest = max(c for _, c, _ in usable)
    groups: dict[str, list[tuple[str, int, Mapping[str, Any]]]] = {}
    for item in usable:
        groups.setdefault((panels or {}).get(item[0], "structures"), []).append(item)
    fig = Figure(figsize=(3.6 * len(groups) + 0.4, 3.6))
    axes = np.atleast_1d(fig.subplots(1, len(groups), squeeze=False))[0]
    for ax, (title, items) in zip(axes, groups.items(), strict=True):
        for s, c, d in items:
            dose = np.asarray(d["dose_Gy"], dtype=float)
            vol = np.asarray(d["volume_fraction"], dtype=float)
            solid = c == latest
            ax.plot(dose, 100.0 * vol, "-" if solid else "--", color=colors.get(s, "black"),
                    lw=1.5 if solid else 0.8, alpha=1.0 if solid else 0.7, label=s if solid else None)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("absorbed dose (Gy)", fontsize=8)
        ax.set_ylabel("volume (%)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlim(left=0.0)
        ax.set_ylim(0.0, 102.0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="upper right", frameon=False, ncol=1 if len(items) < 14 else 2)
    fig.tight_layout()
    return fig


def limits_figure(rows: Sequence[Mapping[str, Any]], *, confidence: float) -> Figure | None:
    """Cumulative organ doses against their limits, in % of each limit (one horizontal bar per organ).

    Parameters
    ----------
    rows
        Per organ: ``label``, ``limit_Gy``, ``delivered_Gy`` (cumulative so far, measured; may be None),
        ``end_mean_Gy``, ``end_low_Gy``, ``end_high_Gy`` (predicted at the end of the plan, 90 % interval) and
        ``quantile_Gy`` (the quantile at ``confidence`` the plan is held to).

    The dark bar is what was delivered so far, the light bar the predicted mean at the end of the plan with its
    90 % interval as a whisker, the diamond the quantile the plan must keep under the limit (dashed line, 100 %).
    """
    rows = [r for r in rows if r.get("limit_Gy")]
    if not rows:
        return None
    n = len(rows)
    fig = Figure(figsize=(7.2, 0.42 * n + 1.15))
    ax = fig.subplots()
    y = np.arange(n)[::-1]

    def pct(v: Any, lim: float) -> float:
        return 100.0 * float(v) / lim if v is not None and math.isfinite(float(v)) else math.nan

    end = np.array([pct(r.get("end_mean_Gy"), r["limit_Gy"]) for r in rows])
    lo = np.array([pct(r.get("end_low_Gy"), r["limit_Gy"]) for r in rows])
    hi = np.array([pct(r.get("end_high_Gy"), r["limit_Gy"]) for r in rows])
    given = np.array([pct(r.get("delivered_Gy"), r["limit_Gy"]) for r in rows])
    quant = np.array([pct(r.get("quantile_Gy"), r["limit_Gy"]) for r in rows])
    ax.barh(y, np.nan_to_num(end), height=0.62, color="#9ecae1", label="end of plan (predicted mean)")
    ax.barh(y, np.nan_to_num(given), height=0.62, color="#08519c", label="delivered so far")
    ok = np.isfinite(lo) & np.isfinite(hi)
    ax.errorbar(end[ok], y[ok], xerr=np.vstack([end[ok] - lo[ok], hi[ok] - end[ok]]), fmt="none", ecolor="#1b1f24",
                elinewidth=1.0, capsize=3, label="90 % prediction interval")
    over = quant > 100.0
    ax.plot(quant[~over], y[~over], "D", color="#1b7a3a", ms=5, label=f"{100 * confidence:.0f} % quantile")
    if np.any(over):
        ax.plot(quant[over], y[over], "D", color="#b00020", ms=5)
    ax.axvline(100.0, color="#b00020", ls="--", lw=1.2)
    ax.set_yticks(y)
    ax.set_yticklabels([str(r["label"]) for r in rows], fontsize=8)
    top = float(np.nanmax(np.concatenate([[110.0], hi, quant, given])))
    ax.set_xlim(0.0, min(max(110.0, 1.08 * top), 400.0))
    ax.set_xlabel("cumulative value in % of the organ's limit", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(axis="x", alpha=0.3)
    # the legend above the axes, where it can never hide a bar
    ax.legend(fontsize=6.5, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False, ncol=4)
    fig.tight_layout()
    return fig


def cmap_for(unit: str) -> str:
    """Colour map of a projection: inverted grey for activity (the nuclear-medicine MIP convention),
    a perceptually uniform map for dose."""
    return "Greys" if unit in ("Bq/mL", "BQML", "Bq.h/mL") else "inferno"


def _display_flips(volume: ImageVolume) -> tuple[bool, bool, bool]:
    """Which array axes (z, y, x) to reverse so that x runs to patient left, y to posterior, z to superior.

    Only axis-aligned grids (direction cosines a signed permutation that keeps each index axis on its own LPS
    axis) are reoriented; any other grid is shown in index order.
    """
    d = volume.geometry.direction_matrix
    if not np.allclose(np.abs(d), np.eye(3), atol=1e-3):
        return (False, False, False)
    sx, sy, sz = (float(np.sign(d[i, i])) for i in range(3))
    return (sz < 0, sy < 0, sx < 0)


def _oriented(arr: np.ndarray, flips: tuple[bool, bool, bool]) -> np.ndarray:
    axes = tuple(i for i, f in enumerate(flips) if f)
    return np.flip(arr, axis=axes) if axes else arr


def _projection_extent(geometry_spacing: Sequence[float], shape: Sequence[int], view: str) -> list[float]:
    sx, sy, sz = geometry_spacing
    nz, ny, nx = shape
    if view == "coronal":  # rows z (superior up), columns x (patient left to the viewer's right)
        return [0.0, nx * sx, 0.0, nz * sz]
    return [0.0, nx * sx, ny * sy, 0.0]  # axial: rows y (anterior at the top), columns x


def mip_figure(panels: Sequence[tuple[str, ImageVolume]], masks: Mapping[str, np.ndarray],
               colors: Mapping[str, str]) -> Figure | None:
    """Coronal and axial maximum-intensity projections of each volume, with structure outlines.

    Parameters
    ----------
    panels
        ``[(title, volume)]``, e.g. activity (Bq/mL) and dose (Gy), all on one grid.
    masks
        ``{structure: mask (z, y, x)}`` on the grid of the volumes (fractional or boolean); outlined where
        the projected mask crosses 0.5.
    colors
        Outline colour per structure.

    Notes
    -----
    Arrays are (z, y, x) in LPS index order. With the usual axis-aligned directions, x increases towards the
    patient's left (shown to the viewer's right: radiological convention), y towards posterior and z
    towards superior. Rotated grids are shown in index space.
    """
    panels = [(t, v) for t, v in panels if v is not None and np.size(v.array) > 0]
    if not panels:
        return None
    flips = _display_flips(panels[0][1])
    shape = panels[0][1].shape
    # projected outlines are the same in every row: project each mask once per view
    outlines: dict[str, dict[str, np.ndarray]] = {"coronal": {}, "axial": {}}
    for name, m in masks.items():
        if np.shape(m) != shape:
            continue
        inside = _oriented(np.asarray(m) >= 0.5, flips)
        for view, axis in (("coronal", 1), ("axial", 0)):
            mp = np.asarray(inside.any(axis=axis), dtype=np.float32)
            if mp.any() and not mp.all():
                outlines[view][name] = mp
    fig = Figure(figsize=(7.2, 2.7 * len(panels)))
    axes = np.atleast_2d(fig.subplots(len(panels), 2, squeeze=False))
    for row, (title, vol) in enumerate(panels):
        arr = _oriented(np.nan_to_num(np.asarray(vol.array, dtype=np.float32)), flips)
        unit = vol.unit
        if unit in ("Bq/mL", "BQML") and arr.max(initial=0.0) >= 1e5:
            arr, unit = arr / 1e6, "MBq/mL"  # readable colour-bar ticks; display only
        elif unit == "Bq.h/mL" and arr.max(initial=0.0) >= 1e5:
            arr, unit = arr / 1e6, "MBq·h/mL"
        for col, view in enumerate(("coronal", "axial")):
            ax = axes[row, col]
            axis = 1 if view == "coronal" else 0
            proj = arr.max(axis=axis)
            extent = _projection_extent(vol.geometry.spacing_mm, arr.shape, view)
            origin = "lower" if view == "coronal" else "upper"
            # window to the 99.5th percentile so one hot voxel does not wash out the image
            vmax = float(np.percentile(proj, 99.5)) if np.any(proj > 0) else 1.0
            im = ax.imshow(proj, cmap=cmap_for(vol.unit), origin=origin, extent=extent, vmin=0.0,
                           vmax=vmax if vmax > 0 else 1.0, interpolation="nearest")
            for name, mp in (outlines[view].items() if arr.shape == shape else ()):
                cs = ax.contour(mp, levels=[0.5], colors=[colors.get(name, "#0072B2")], linewidths=1.3,
                                origin=origin, extent=extent)
                # a thin white halo keeps every outline colour visible on dark and light pixels alike
                cs.set(path_effects=[patheffects.Stroke(linewidth=2.6, foreground="white"),
                                     patheffects.Normal()])
            ax.set_title(f"{title} — {view} MIP", fontsize=8.5)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_aspect("equal")
            cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
            cb.ax.tick_params(labelsize=6.5)
            cb.set_label(unit, fontsize=7)
    drawn = [n for n in masks if n in outlines["coronal"] or n in outlines["axial"]]
    handles = [Line2D([0], [0], color=colors.get(name, "#0072B2"), lw=1.5, label=name) for name in drawn]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.05 if handles else 0, 1, 1))
    return fig
