"""The report in a real browser: headless Chromium (Debian ``chromium``) lays it out without errors and every
plot is visible and not blank in a screenshot; the demo patient's report when the demo is available."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_report import build_rich_results

from theratwin.report import write_report

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

# Measures, after load, where each figure image is and whether it decoded; collects load/script errors.
_PROBE_HEAD = """<script>
window.__ttErrors = [];
window.addEventListener('error', function (e) {
  var t = e.target || {};
  window.__ttErrors.push((t.tagName || 'script') + ': ' + (e.message || t.src || t.href || 'error').slice(0, 120));
}, true);
window.addEventListener('load', function () {
  var figs = [];
  document.querySelectorAll('figure.plot img').forEach(function (img) {
    var r = img.getBoundingClientRect();
    figs.push({figure: img.closest('figure').dataset.figure, structure: img.closest('figure').dataset.structure || null,
               x: r.left + window.scrollX, y: r.top + window.scrollY, w: r.width, h: r.height,
               decoded: img.complete && img.naturalWidth > 0, naturalWidth: img.naturalWidth});
  });
  var pre = document.createElement('pre');
  pre.id = 'tt-probe';
  pre.textContent = JSON.stringify({figures: figs, errors: window.__ttErrors,
                                    height: document.documentElement.scrollHeight,
                                    width: document.documentElement.scrollWidth});
  document.body.appendChild(pre);
});
</script>"""


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed; scripts/bootstrap.sh installs it")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--hide-scrollbars", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


def _read_png(path: Path) -> np.ndarray:
    from matplotlib.image import imread

    return np.asarray(imread(str(path)))[..., :3]


def render_and_check(report_html: Path, tmp: Path, *, screenshot: Path | None = None,
                     first_screen: Path | None = None) -> dict[str, Any]:
    """Load the report in Chromium, measure the figures, take a screenshot and check every plot region."""
    probe = tmp / "probe.html"
    html = report_html.read_text(encoding="utf-8")
    probe.write_text(html.replace("<head>", "<head>" + _PROBE_HEAD, 1), encoding="utf-8")
    dom = _chromium(["--virtual-time-budget=10000", "--window-size=1280,4000", "--dump-dom", probe.as_uri()],
                    tmp / "profile1")
    assert dom.returncode == 0, dom.stderr[-2000:]
    m = re.search(r'<pre id="tt-probe">(.*?)</pre>', dom.stdout, re.S)
    assert m, "the page did not finish loading in Chromium"
    info = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<")
                      .replace("&gt;", ">"))
    assert info["errors"] == [], info["errors"]
    assert info["width"] <= 1280, "the report scrolls horizontally at 1280 px"
    figures = info["figures"]
    assert figures and all(f["decoded"] for f in figures), figures
    height = int(min(info["height"], 16000))
    shot = screenshot or tmp / "shot.png"
    proc = _chromium([f"--screenshot={shot}", f"--window-size=1280,{height}", probe.as_uri()], tmp / "profile2")
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    img = _read_png(shot)
    assert img.shape[1] == 1280
    for f in figures:
        x0, y0 = int(round(f["x"])), int(round(f["y"]))
        x1, y1 = int(round(f["x"] + f["w"])), int(round(f["y"] + f["h"]))
        assert f["w"] > 200 and f["h"] > 150, f
        if y1 > img.shape[0]:
            continue
        region = img[y0:y1, x0:x1]
        non_white = float(np.mean(np.any(region < 0.85, axis=-1)))
        assert non_white > 0.02, (f, non_white)  # axes, curves or image pixels drawn
        assert float(region.std()) > 0.05, f
        # not one flat colour either: many distinct colours (curves, fills, colour maps, text)
        q = np.round(region.reshape(-1, 3) * 15).astype(int)
        assert len({tuple(v) for v in q[:: max(1, q.shape[0] // 20000)]}) > 8, f
    # outside the figures the page has text (not a blank page with images only)
    mask = np.ones(img.shape[:2], bool)
    for f in figures:
        mask[int(f["y"]):int(f["y"] + f["h"]), int(f["x"]):int(f["x"] + f["w"])] = False
    assert float(np.mean(np.any(img[mask] < 0.5, axis=-1))) > 0.005
    if first_screen is not None:
        from matplotlib.image import imsave

        first_screen.parent.mkdir(parents=True, exist_ok=True)
        imsave(first_screen, img[:900])
    return info


def test_synthetic_report_renders_in_chromium_with_visible_plots(tmp_path: Path) -> None:
    res, masks = build_rich_results()
    files = write_report(res, tmp_path / "out", masks=masks, activity=res.study.cycles[0].time_points[0].image,
                         config=None)
    info = render_and_check(files.html, tmp_path)
    kinds = [f["figure"] for f in info["figures"]]
    assert kinds.count("tac") == 3 and kinds.count("mip") == 1 and kinds.count("dvh") == 1
    # the projections sit below the per-structure curves, the DVH below the projections (document order)
    ys = {k: min(f["y"] for f in info["figures"] if f["figure"] == k) for k in set(kinds)}
    assert ys["tac"] < ys["mip"] < ys["dvh"]


def _demo_pipeline_available() -> str | None:
    """Why the demo pipeline cannot run in this installation (None when it can)."""
    import importlib

    try:
        demo = importlib.import_module("theratwin.demo")
        dicom = importlib.import_module("theratwin.dicom")
    except ImportError as exc:
        return f"theratwin.demo / theratwin.dicom not importable: {exc}"
    if not hasattr(demo, "build_demo") or not hasattr(dicom, "read_study"):
        return "theratwin.demo.build_demo or theratwin.dicom.read_study missing"
    from theratwin.pipeline.core import STAGES, load_builtin_stages

    load_builtin_stages()
    missing = [s for s in ("registration", "kinetics", "dosimetry", "radiobiology") if s not in STAGES]
    return f"pipeline stages not installed yet: {missing}" if missing else None


def chromium_pdf(report_html: Path, tmp: Path) -> Path:
    """The report printed to PDF by Chromium (A4 from the report's @page rule, no browser header/footer)."""
    pdf = tmp / "chromium.pdf"
    proc = _chromium(["--no-pdf-header-footer", f"--print-to-pdf={pdf}", report_html.as_uri()], tmp / "profile-pdf")
    assert proc.returncode == 0 and pdf.exists() and pdf.read_bytes().startswith(b"%PDF-"), proc.stderr[-2000:]
    return pdf


def test_synthetic_first_page_prints_in_chromium(tmp_path: Path) -> None:
    """Chromium's own print layout keeps the decision content on page 1 and nothing off the page."""
    from test_report import assert_first_page_and_margins

    res, masks = build_rich_results()
    files = write_report(res, tmp_path / "out", masks=masks, activity=res.study.cycles[0].time_points[0].image)
    res.write_json(tmp_path / "results.json")
    data = json.loads((tmp_path / "results.json").read_text())
    assert_first_page_and_margins(chromium_pdf(files.html, tmp_path), data)


@pytest.mark.slow
def test_demo_report_numbers_and_rendering(demo_run, tmp_path: Path) -> None:
    """The demo patient through the whole pipeline: report numbers equal results.json, the first page too, and
    the first page is the decision page in Chromium's print layout and in the PDF (WeasyPrint)."""
    reason = _demo_pipeline_available()
    if reason:
        pytest.skip(reason)
    from test_report import assert_first_page_and_margins, check_annotated, first_page, json_at, parse_report

    out = demo_run.out_dir
    assert demo_run.results.outputs["report_html"] == "report.html"
    data = json.loads((out / "results.json").read_text())
    html = (out / "report.html").read_text(encoding="utf-8")
    parsed = parse_report(html)
    n = sum(check_annotated(attrs, text, data) for attrs, text in parsed.annotated)
    assert n > 300
    for key_path in parsed.keys:  # headers that show JSON keys name keys that exist
        *parent, key = json.loads(key_path)
        assert key in json_at(data, parent)
    number = re.compile(r"^[-+]?\d+(\.\d+)?(e[-+]\d+)?$")
    assert not [t for t, annotated in parsed.cells if number.match(t) and not annotated]
    # the first page: every number from results.json, the plan and every organ of the plan on it
    page = parse_report(first_page(html))
    assert sum(check_annotated(attrs, text, data) for attrs, text in page.annotated) > 30
    shown = {tuple(json.loads(a["data-path"])) for a, _ in page.annotated}
    plan = data["twin"]["plan"]
    assert ("twin", "plan", "probability_within_limits") in shown
    for organ in plan["organs"]:
        assert ("twin", "plan", "organs", organ, "limit_Gy") in shown
    render_and_check(out / "report.html", tmp_path)
    assert_first_page_and_margins(out / "report.pdf", data)
    assert_first_page_and_margins(chromium_pdf(out / "report.html", tmp_path), data)
