"""The short cohort report (``cohort-report.html``, one self-contained file).

What a site looks at first after re-analysing an archive: how many patients ran and which failed (with the
reason), the distributions of absorbed dose per administered activity for the organs at risk (kidneys, red
marrow, salivary and lacrimal glands, liver, spleen) and the lesions, and the error of Hänscheid's single-time-point
TIA against full kinetics where a cycle had both. Numbers come from the cohort table, figures are embedded PNGs.
"""

from __future__ import annotations

import html
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._version import __version__
from ..results import RESEARCH_USE_NOTICE

if TYPE_CHECKING:
    from .records import CohortRun

__all__ = ["write_report", "dose_summary", "stp_summary", "REPORT_KINDS"]

#: Structure kinds shown, in this order (twin prior keys; lesions pooled).
REPORT_KINDS = ("kidneys", "red_marrow", "parotid_glands", "submandibular_glands", "lacrimal_glands", "liver",
                "spleen", "lesion")


def _stats(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, float)
    q25, q50, q75 = np.percentile(v, [25, 50, 75])
    return {"n": float(v.size), "median": float(q50), "q25": float(q25), "q75": float(q75),
            "min": float(v.min()), "max": float(v.max())}


def _by_kind(rows: list[dict[str, Any]], column: str) -> dict[str, list[float]]:
    """Non-empty values of ``column`` per structure kind, in :data:`REPORT_KINDS` order."""
    out: dict[str, list[float]] = {}
    for kind in REPORT_KINDS:
        vals = [r[column] for r in rows if r["structure_kind"] == kind and r.get(column) is not None]
        if vals:
            out[kind] = vals
    return out


def dose_summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per structure kind: statistics of ``dose_per_activity_Gy_per_GBq`` over patients and cycles."""
    return {k: _stats(v) for k, v in _by_kind(rows, "dose_per_activity_Gy_per_GBq").items()}


def stp_summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per structure kind: statistics of the single-time-point relative error, and the share beyond ±10 %."""
    return {k: {**_stats(v), "beyond_10_percent": float(np.mean(np.abs(np.asarray(v)) > 0.10))}
            for k, v in _by_kind(rows, "stp_relative_error").items()}


def _dose_figure(rows: list[dict[str, Any]]) -> str:
    from matplotlib.figure import Figure

    from ..report.figures import figure_png, png_data_uri

    by_kind = {k: [x for x in v if x > 0] for k, v in _by_kind(rows, "dose_per_activity_Gy_per_GBq").items()}
    kinds = [k for k, v in by_kind.items() if v]  # positive values only: the axis is logarithmic
    if not kinds:
        return ""
    data = [by_kind[k] for k in kinds]
    fig = Figure(figsize=(7.5, 3.2))
    ax = fig.add_subplot()
    ax.boxplot(data, showfliers=False)
    rng = np.random.default_rng(0)  # fixed jitter: the same table gives the same picture
    for i, d in enumerate(data, start=1):
        ax.plot(i + rng.uniform(-0.15, 0.15, len(d)), d, "o", ms=3, alpha=0.6, color="#0072B2")
    ax.set_xticks(range(1, len(kinds) + 1), [k.replace("_", " ") for k in kinds], rotation=20, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("absorbed dose per activity (Gy/GBq)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return f'<img alt="dose per GBq by structure" src="{png_data_uri(figure_png(fig))}">'


def _stp_figure(rows: list[dict[str, Any]]) -> str:
    from matplotlib.figure import Figure

    from ..report.figures import figure_png, png_data_uri

    vals = [100.0 * v for vs in _by_kind(rows, "stp_relative_error").values() for v in vs]
    if not vals:
        return ""
    fig = Figure(figsize=(5.0, 2.6))
    ax = fig.add_subplot()
    ax.hist(vals, bins=min(30, max(5, len(vals) // 3)), color="#D55E00", alpha=0.8)
    ax.axvspan(-10, 10, color="#009E73", alpha=0.15, label="±10 %")
    ax.set_xlabel("single-time-point TIA error vs full kinetics (%)")
    ax.set_ylabel("structures × cycles")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return f'<img alt="single-time-point error" src="{png_data_uri(figure_png(fig))}">'


def _table(summary: dict[str, dict[str, float]], scale: float, unit: str, extra: bool = False) -> str:
    head = (f"<tr><th>structure</th><th>n</th><th>median {unit}</th><th>IQR {unit}</th><th>range {unit}</th>"
            + ("<th>|error| &gt; 10 %</th>" if extra else "") + "</tr>")
    body = []
    for kind, s in summary.items():
        body.append(
            f"<tr><td>{html.escape(kind.replace('_', ' '))}</td><td>{int(s['n'])}</td>"
            f"<td>{scale * s['median']:.3g}</td><td>{scale * s['q25']:.3g} – {scale * s['q75']:.3g}</td>"
            f"<td>{scale * s['min']:.3g} – {scale * s['max']:.3g}</td>"
            + (f"<td>{100 * s['beyond_10_percent']:.0f} %</td>" if extra else "") + "</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def write_report(run: CohortRun, rows: list[dict[str, Any]]) -> Path:
    """Write ``cohort-report.html`` into ``run.out_dir``; returns its path."""
    failed = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(run.records[k].get('error')))}</td></tr>"
                     for k in run.failed)
    doses = dose_summary(rows)
    stp = stp_summary(rows)
    n_cycles = len({(r["patient"], r["cycle"]) for r in rows})
    cluster = html.escape(", ".join(f"{k} {v}" for k, v in run.cluster.items())) or "nothing computed in this run"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>TheraTwin cohort report</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:1em auto;color:#222}}
table{{border-collapse:collapse;margin:.5em 0}}td,th{{border:1px solid #bbb;padding:.2em .5em;font-size:.9em}}
.notice{{background:#fff3cd;padding:.4em;border:1px solid #e0c060}}img{{max-width:100%}}</style></head><body>
<h1>TheraTwin cohort report</h1>
<p class="notice">{html.escape(RESEARCH_USE_NOTICE)}</p>
<p>{len(run.records)} patients: <b>{len(run.done)} done</b>, <b>{len(run.failed)} failed</b>
({len(run.computed)} computed in this run). {n_cycles} patient-cycles in the table.
TheraTwin {html.escape(__version__)}; cluster: {cluster};
{datetime.now(timezone.utc).replace(microsecond=0).isoformat()}.</p>
<h2>Absorbed dose per administered activity</h2>
{_table(doses, 1.0, "Gy/GBq") if doses else "<p>No doses (the dosimetry stage did not run).</p>"}
{_dose_figure(rows)}
<h2>Single-time-point TIA vs full kinetics</h2>
<p>Hänscheid's TIA = A(t)·2t/ln 2 (J Nucl Med 2018;59:75) from the scan nearest to 96 h of every cycle with at
least three time points, relative to that cycle's fitted TIA.</p>
{_table(stp, 100.0, "%", extra=True) if stp else "<p>No cycle with both.</p>"}
{_stp_figure(rows)}
<h2>Failed patients</h2>
{f"<table><tr><th>patient</th><th>error</th></tr>{failed}</table>" if failed else "<p>None.</p>"}
<p>Files: cohort-table.parquet / .csv (one row per patient, cycle and structure), cohort-patients.csv, and each
patient's folder under patients/.</p>
</body></html>
"""
    path = run.out_dir / "cohort-report.html"
    path.write_text(page, encoding="utf-8")
    return path
