"""Tests of theratwin.report: numbers against results.json, figures, PDF, Encapsulated PDF (dciodvfy), and the
pipeline stage. The rich synthetic results below stand in for the demo patient where the demo is not needed
(the demo-based checks are in test_report_render.py)."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import shutil
import subprocess
from datetime import datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

import theratwin as tt
from theratwin.pipeline.core import PipelineConfig, PipelineContext, PipelineState
from theratwin.report import ReportConfig, format_number, write_report
from theratwin.report.figures import model_curve
from theratwin.report.format import NumberStyle
from theratwin.results import RESEARCH_USE_NOTICE

LU177_HALF_LIFE_H = 6.647 * 24.0  # ICRP-107: 6.647 d (used only to build synthetic curves)


# ----------------------------------------------------------------------------------------------------------
# synthetic rich results (study with two cycles, maps, masks, TAC, DVH, limits, twin, warnings, methods)
# ----------------------------------------------------------------------------------------------------------

def _blob(shape: tuple[int, int, int], centre: tuple[float, float, float], radius: tuple[float, float, float]
          ) -> np.ndarray:
    z, y, x = np.indices(shape, dtype=float)
    return (((z - centre[0]) / radius[0]) ** 2 + ((y - centre[1]) / radius[1]) ** 2
            + ((x - centre[2]) / radius[2]) ** 2) <= 1.0


def biexp_uptake_MBq(t_h: np.ndarray, a0: float, lam_c: float, lam_u: float) -> np.ndarray:
    return a0 * (np.exp(-lam_c * t_h) - np.exp(-lam_u * t_h))


def build_rich_results() -> tuple[tt.Results, dict[str, np.ndarray]]:
    geom = tt.Geometry(shape=(24, 30, 36), spacing_mm=(4.8, 4.8, 4.8), origin_mm=(-86.4, -72.0, -57.6))
    shape = geom.shape
    masks_bool = {
        "body": _blob(shape, (12, 15, 18), (11.5, 13.5, 16.5)),
        "kidneys": _blob(shape, (12, 18, 10), (3, 3, 2.5)) | _blob(shape, (12, 18, 26), (3, 3, 2.5)),
        "liver": _blob(shape, (15, 13, 12), (4, 5, 6)),
        "lesion_1": _blob(shape, (7, 12, 21), (2, 2, 2)),
    }
    lam_phys = math.log(2) / LU177_HALF_LIFE_H
    kinetics = {  # A0 per unit administered GBq (MBq), effective and uptake rates (1/h)
        "kidneys": (28.0, lam_phys + 0.02, 0.9),
        "liver": (40.0, lam_phys + 0.012, 0.5),
        "lesion_1": (9.0, lam_phys + 0.002, 0.3),
    }
    structures = [tt.Structure("body", 1), tt.Structure("kidneys", 2, color_rgb=(185, 102, 83)),
                  tt.Structure("liver", 3, color_rgb=(221, 130, 101)), tt.Structure("lesion_1", 4)]
    seg = tt.Segmentation(geom, structures, {k: v.copy() for k, v in masks_bool.items()})
    start1 = datetime(2026, 3, 2, 9, 15, 0)
    start2 = start1 + timedelta(weeks=6)
    cycles = []
    times = {1: [4.1, 23.8, 47.5, 167.9], 2: [95.6]}
    for n, start, act in ((1, start1, 7400.0), (2, start2, 7380.5)):
        tps = []
        for h in times[n]:
            arr = np.zeros(shape, np.float32)
            arr[masks_bool["body"]] = 20.0 * math.exp(-lam_phys * h)
            for s, (a0, lc, lu) in kinetics.items():
                conc = float(biexp_uptake_MBq(np.array(h), a0 * act / 1000.0, lc, lu)) * 1e6 / (
                    masks_bool[s].sum() * geom.voxel_volume_mL)
                arr[masks_bool[s]] = conc
            img = tt.ImageVolume.from_geometry(arr, geom, "Bq/mL")
            tps.append(tt.TimePoint(img, start + timedelta(hours=h), 1200.0))
        cycles.append(tt.Cycle(n, tt.Administration("PSMA-617", "Lu-177", act, start), tps))
    study = tt.Study(tt.Patient("TT-REPORT-1", "Doe^Jane", sex="F"), cycles, seg,
                     study_uid="1.2.826.0.1.3680043.8.498.1234567890123456789",
                     description="Lu-177 PSMA dosimetry")
    res = tt.Results.for_study(study)
    rng = np.random.default_rng(7)
    dose_maps = {}
    for n in (1, 2):
        cr = res.cycles[n]
        act = cr.administered_MBq
        dose = np.zeros(shape, np.float32)
        for s, (a0, lc, lu) in kinetics.items():
            sr = cr.structure(s)
            t = np.array(times[n])
            a = biexp_uptake_MBq(t, a0 * act / 1000.0, lc, lu)
            sr.time_h = t.tolist()
            sr.activity_MBq = a.tolist()
            sr.activity_sd_MBq = (0.05 * a).tolist()
            sr.tia_MBq_h = float(a0 * act / 1000.0 * (1 / lc - 1 / lu))
            sr.tia_sd_MBq_h = 0.061 * sr.tia_MBq_h
            sr.kinetic_model = "biexp_uptake"
            sr.tia_method = "fit:biexp_uptake" if n == 1 else "twin"
            sr.kinetic_params = {"A0_MBq": a0 * act / 1000.0, "lambda_eff_per_h": lc,
                                 "lambda_bio_per_h": lc - lam_phys, "lambda_uptake_per_h": lu}
            sr.effective_half_life_h = math.log(2) / lc
            sr.model_weights = {"biexp_uptake": 0.8123, "mono_exp": 0.1877} if n == 1 else None
            sr.fit_quality = {"r_squared": 0.99712, "chi2": 1.234} if n == 1 else None
            sr.volume_mL = float(masks_bool[s].sum() * geom.voxel_volume_mL)
            mean = sr.tia_MBq_h * 0.00055 * (1.0 if s != "lesion_1" else 6.0)
            vox = mean * (1.0 + 0.12 * rng.standard_normal(int(masks_bool[s].sum())))
            dose[masks_bool[s]] = vox
            sr.mean_dose_Gy = float(vox.mean())
            sr.mean_dose_sd_Gy = 0.1 * sr.mean_dose_Gy
            d_sorted = np.sort(vox)
            grid = np.linspace(0.0, float(d_sorted[-1]) * 1.02, 200)
            sr.dvh = {"dose_Gy": grid.tolist(),
                      "volume_fraction": (1.0 - np.searchsorted(d_sorted, grid, side="left") / d_sorted.size).tolist()}
            sr.dvh_metrics = {"Dmax_Gy": float(d_sorted[-1]), "D2_Gy": float(np.percentile(vox, 98)),
                              "D98_Gy": float(np.percentile(vox, 2)), "D50_Gy": float(np.median(vox))}
            sr.bed_Gy = sr.mean_dose_Gy * 1.07
            sr.eqd2_Gy = sr.bed_Gy / (1 + 2 / 2.6)
            prev = res.cycles[1].structures[s] if n == 2 else None
            sr.cumulative_dose_Gy = sr.mean_dose_Gy + (prev.mean_dose_Gy if prev else 0.0)
            sr.cumulative_bed_Gy = sr.bed_Gy + (prev.bed_Gy if prev else 0.0)
            sr.cumulative_eqd2_Gy = sr.eqd2_Gy + (prev.eqd2_Gy if prev else 0.0)
            if s == "kidneys":
                sr.limit = {"quantity": "BED", "value_Gy": 40, "reference": "Bodei et al. 2008, EJNMMI 35:1847"}
            if n == 2:
                sr.estimated_by_twin = {"tia_MBq_h": sr.tia_MBq_h, "sd": sr.tia_sd_MBq_h,
                                        "low": 0.9 * sr.tia_MBq_h, "high": 1.1 * sr.tia_MBq_h}
        res.maps[f"cycle{n}/dose"] = tt.ImageVolume.from_geometry(dose, geom, "Gy")
        dose_maps[n] = dose
    res.maps["cumulative/dose"] = tt.ImageVolume.from_geometry(dose_maps[1] + dose_maps[2], geom, "Gy")
    res.maps["cycle2/tia"] = tt.ImageVolume.from_geometry(dose_maps[2] * 95.0, geom, "Bq.h/mL")
    # the twin's output, made by a real twin on the synthetic curves and stored as the twin stage stores it
    twin = tt.twin.PatientTwin("Lu-177", "PSMA-617", seed=5)
    for n, cr in res.cycles.items():
        for s, sr in cr.structures.items():
            if sr.time_h:
                twin.observe(n, s, sr.time_h, sr.activity_MBq, cr.administered_MBq, mass_g=sr.volume_mL)
    limits = {"liver": {"quantity": "dose", "value_Gy": 30.0}}
    res.twin = tt.twin.TwinResults(
        prediction=twin.predict(3, 7400.0, n_draws=2000), model=twin.summary(), conflicts=twin.conflicts,
        plan=twin.plan_treatment(3, limits=limits, n_draws=2000),
        recommendation=twin.recommend_activity(3, limits, n_draws=2000),
        forecast=twin.forecast(3, 7400.0, n_draws=2000))
    res.warn("kinetics", "lesion_1: bi-exponential fit has R² 0.81; trapezoidal model kept for comparison.",
             structure="lesion_1", cycle=1)
    res.warn("registration", "Residual misalignment 6.2 mm at time point 4 exceeds 4.8 mm.", cycle=1)
    res.record_method("kinetics", "NUKFIT-style AICc model selection", {"models": ["mono_exp", "biexp_uptake"],
                      "calibration_sd_fraction": 0.05}, ["Kletting et al. 2013, Med Phys 40:102504"])
    res.record_method("dosimetry", "dose voxel kernel", {"voxel_mm": [4.8, 4.8, 4.8], "kernel_radius": 10},
                      ["Lanconelli et al. 2012, Phys Med Biol 57:517"])
    masks = {k: v.astype(np.float32) for k, v in masks_bool.items()}
    return res, masks


# ----------------------------------------------------------------------------------------------------------
# parsing helpers
# ----------------------------------------------------------------------------------------------------------

class _Collector(HTMLParser):
    """Collects elements carrying data-path (with their text), img sources, table cells and hrefs."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[dict[str, Any]] = []
        self.annotated: list[tuple[dict[str, str], str]] = []
        self.cells: list[tuple[str, bool]] = []  # (text, contains an annotated element)
        self.images: list[dict[str, str]] = []
        self.urls: list[str] = []
        self.text: list[str] = []
        self.keys: list[str] = []  # JSON paths of keys shown as headers

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "data-key-path" in a:
            self.keys.append(a["data-key-path"])
        if tag == "img":
            self.images.append(a)
        for k in ("src", "href"):
            if k in a:
                self.urls.append(a[k])
        if tag in ("img", "meta", "link", "br", "hr", "input"):
            return
        self.stack.append({"tag": tag, "attrs": a, "text": [], "annotated": "data-path" in a or "data-key-path" in a})

    def handle_endtag(self, tag: str) -> None:
        while self.stack:
            el = self.stack.pop()
            text = "".join(el["text"])
            if self.stack:
                self.stack[-1]["text"].append(text)
                self.stack[-1]["annotated"] = self.stack[-1]["annotated"] or el["annotated"]
            if "data-path" in el["attrs"]:
                self.annotated.append((el["attrs"], text))
            if el["tag"] in ("td", "th"):
                self.cells.append((text.strip(), el["annotated"]))
            if el["tag"] == tag:
                break

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self.stack:
            self.stack[-1]["text"].append(data)


def parse_report(html: str) -> _Collector:
    p = _Collector()
    p.feed(html)
    p.close()
    return p


def decimals_shown(text: str) -> float:
    """Half a unit of the last digit shown in a number's text (its display resolution)."""
    m = re.fullmatch(r"-?(\d+)(?:\.(\d+))?(?:e([+-]\d+))?", text)
    assert m, f"not a plain number: {text!r}"
    dec = len(m.group(2) or "")
    exp = int(m.group(3) or 0)
    return 0.5 * 10.0 ** (exp - dec)


def json_at(data: Any, path: list[Any]) -> Any:
    for k in path:
        data = data[k]
    return data


def _check_number(path: list[Any], text: str, value: Any) -> None:
    assert isinstance(value, (int, float)) and not isinstance(value, bool), (path, value)
    if isinstance(value, int):  # counts, cycle numbers, integer limits: shown exactly
        assert text == str(value), (path, text, value)
        return
    tol = decimals_shown(text)
    assert abs(float(text) - value) <= tol * (1 + 1e-9), (path, text, value)
    # and the precision is not absurdly coarse: at least 2 significant digits
    assert tol <= 0.05 * abs(value) + 1e-12 or value == 0, (path, text, value)


def check_annotated(attrs: dict[str, str], text: str, data: dict[str, Any]) -> int:
    """Check one annotated element of the report against results.json; return how many numbers it shows."""
    path = json.loads(attrs["data-path"])
    value = json_at(data, path)
    kind = attrs.get("data-kind")
    if attrs.get("data-structure"):
        assert attrs["data-structure"] in path, (path, attrs)
    if attrs.get("data-cycle"):
        assert attrs["data-cycle"] in [str(p) for p in path], (path, attrs)
    if kind == "datetime":
        assert text.replace(" ", "T") == value
        return 0
    if kind == "interval":
        m = re.fullmatch(r"(\S+) \[(\S+)–(\S+)\]", text)
        assert m, (path, text)
        low_path, high_path = json.loads(attrs["data-low-path"]), json.loads(attrs["data-high-path"])
        for shown, p in zip(m.groups(), (path, low_path, high_path), strict=True):
            _check_number(p, shown, json_at(data, p))
        return 3
    if isinstance(value, str):
        assert text == value, (path, text, value)
        return 0
    _check_number(path, text, value)
    return 1


# ----------------------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    res, masks = build_rich_results()
    out = tmp_path_factory.mktemp("report")
    files = write_report(res, out, masks=masks, activity=res.study.cycles[0].time_points[0].image)
    res.write_json(out / "results.json")
    html = files.html.read_text(encoding="utf-8")
    return {"results": res, "masks": masks, "out": out, "files": files, "html": html,
            "json": json.loads((out / "results.json").read_text()), "parsed": parse_report(html)}


def assert_first_page_and_margins(pdf: Path, data: dict[str, Any]) -> None:
    """Page 1 of ``pdf`` holds the decision content and the appendix starts on page 2; no word of any page lies
    outside the page (``pdftotext -bbox``: word boxes in PDF points)."""
    def page_text(first: int, last: int) -> str:
        return subprocess.run(["pdftotext", "-f", str(first), "-l", str(last), "-layout", str(pdf), "-"],
                              capture_output=True, text=True, check=True).stdout

    p1 = page_text(1, 1)
    plan = data["twin"]["plan"]
    for text in ("Plan for the remaining cycles", "Organs at risk", "Lesions", "Warnings", plan["binding_constraint"]):
        assert text in p1, text
    for organ in plan["organs"]:
        assert organ in p1, organ
    for cycle, mbq in plan["activities_MBq"].items():
        assert format_number(mbq) in p1, (cycle, mbq)
    assert format_number(plan["probability_within_limits"], NumberStyle(2, 2, 4)) in p1
    assert "Appendix" not in p1 and "Appendix" in page_text(2, 2)
    box = subprocess.run(["pdftotext", "-bbox", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    pages = re.findall(r'<page width="([\d.]+)" height="([\d.]+)">(.*?)</page>', box, re.S)
    assert pages
    for i, (w, h, body) in enumerate(pages, start=1):
        for x0, y0, x1, y1, word in re.findall(
                r'<word xMin="([-\d.]+)" yMin="([-\d.]+)" xMax="([-\d.]+)" yMax="([-\d.]+)">([^<]*)</word>', body):
            assert float(x0) >= 0 and float(y0) >= 0, (i, word)
            assert float(x1) <= float(w) + 0.5 and float(y1) <= float(h) + 0.5, (i, word, x1, w)


# ----------------------------------------------------------------------------------------------------------
# tests
# ----------------------------------------------------------------------------------------------------------

class TestNumberFormat:
    def test_three_significant_digits(self) -> None:
        assert format_number(12.345) == "12.3"
        assert format_number(0.012345) == "0.0123"
        assert format_number(3.0) == "3.00"
        assert format_number(7400.0) == "7400"
        assert format_number(8123.4567) == "8123"
        assert format_number(123.45) == "123"
        assert format_number(7400) == "7400"

    def test_tiny_values_use_exponent_and_zero_is_plain(self) -> None:
        assert format_number(-0.00012345) == "-1.23e-04"
        assert format_number(0.0) == "0"
        assert format_number(-0.0004) == "-4.00e-04"
        assert format_number(float("nan")) == "–"

    def test_rounding_never_shows_negative_zero(self) -> None:
        assert format_number(-0.0011) == "-0.00110"
        assert not format_number(-1e-9).startswith("-0.0")  # scientific, sign kept honestly


class TestNumbersMatchResultsJson:
    def test_every_annotated_number_equals_json_at_displayed_precision(self, written: dict[str, Any]) -> None:
        n_numbers = sum(check_annotated(attrs, text, written["json"]) for attrs, text in written["parsed"].annotated)
        assert n_numbers > 100

    def test_key_quantities_are_shown(self, written: dict[str, Any]) -> None:
        paths = {tuple(json.loads(a["data-path"])) for a, _ in written["parsed"].annotated}
        for cyc in ("1", "2"):
            for s in ("kidneys", "liver", "lesion_1"):
                for f in (("tia_MBq_h",), ("mean_dose_Gy",), ("dvh_metrics", "Dmax_Gy"), ("dvh_metrics", "D2_Gy"),
                          ("dvh_metrics", "D98_Gy"), ("bed_Gy",), ("eqd2_Gy",), ("cumulative_bed_Gy",),
                          ("cumulative_eqd2_Gy",)):
                    assert ("cycles", cyc, "structures", s, *f) in paths, (cyc, s, f)
            assert ("cycles", cyc, "administered_MBq") in paths
            assert ("cycles", cyc, "structures", "kidneys", "limit", "value_Gy") in paths
        assert ("twin", "recommendation", "administered_MBq") in paths
        assert ("twin", "prediction", "structures", "kidneys", "dose_Gy", "mean") in paths
        assert ("twin", "forecast", "toxicity", "kidneys", "probability", "mean") in paths
        assert ("cycles", "1", "structures", "liver", "model_weights", "mono_exp") in paths
        assert ("cycles", "1", "structures", "liver", "fit_quality", "r_squared") in paths

    def test_no_unannotated_number_in_tables(self, written: dict[str, Any]) -> None:
        number = re.compile(r"^[-+]?\d+(\.\d+)?(e[-+]\d+)?$")
        bare = [t for t, annotated in written["parsed"].cells if number.match(t) and not annotated]
        assert bare == []

    def test_twin_intervals_are_shown_with_their_bounds(self, written: dict[str, Any]) -> None:
        paths = {tuple(json.loads(a[k])) for a, _ in written["parsed"].annotated
                 for k in ("data-path", "data-low-path", "data-high-path") if k in a}
        for end in ("mean", "low", "high"):
            assert ("twin", "recommendation", "predicted_cumulative", "kidneys", end) in paths
            assert ("twin", "recommendation", "lesion_dose_Gy", "lesion_1", end) in paths
            assert ("twin", "plan", "organs", "kidneys", "end_of_plan_Gy", end) in paths


def first_page(html: str) -> str:
    start = html.index('<section id="first-page"')
    return html[start:html.index('<div class="appendix"', start)]


class TestFirstPage:
    """What the physician decides on, on the first page, every number equal to results.json."""

    def test_first_page_numbers_equal_results_json(self, written: dict[str, Any]) -> None:
        page = parse_report(first_page(written["html"]))
        data = written["json"]
        n = sum(check_annotated(attrs, text, data) for attrs, text in page.annotated)
        paths = {tuple(json.loads(a[k])) for a, _ in page.annotated
                 for k in ("data-path", "data-low-path", "data-high-path") if k in a}
        plan = data["twin"]["plan"]
        must = [("cycles", c, "administered_MBq") for c in ("1", "2")]
        must += [("twin", "plan", "activities_MBq", c) for c in sorted(plan["activities_MBq"])[:1]]
        must += [("twin", "plan", "probability_within_limits"), ("twin", "plan", "confidence")]
        must += [("twin", "plan", "tumour_dose_Gy", end) for end in ("mean", "low", "high")]
        for organ in plan["organs"]:
            must += [("twin", "plan", "organs", organ, k) for k in ("limit_Gy", "quantile_at_confidence_Gy",
                                                                     "probability_over_limit")]
            must += [("twin", "plan", "organs", organ, "end_of_plan_Gy", e) for e in ("mean", "low", "high")]
        must += [("cycles", "2", "structures", "kidneys", "cumulative_bed_Gy")]  # delivered so far, measured
        must += [("cycles", "2", "structures", "lesion_1", k) for k in ("mean_dose_Gy", "cumulative_dose_Gy")]
        must += [("twin", "plan", "lesion_dose_Gy", "lesion_1", e) for e in ("mean", "low", "high")]
        missing = [m for m in must if m not in paths]
        assert not missing and n >= len(must), missing
        number = re.compile(r"^[-+]?\d+(\.\d+)?(e[-+]\d+)?$")
        assert [t for t, annotated in page.cells if number.match(t) and not annotated] == []

    def test_first_page_has_the_plan_the_limits_chart_and_the_warnings(self, written: dict[str, Any]) -> None:
        html = first_page(written["html"])
        text = " ".join(parse_report(html).text)
        plan = written["json"]["twin"]["plan"]
        assert "Plan for the remaining cycles" in text and "What binds the plan" in text
        assert plan["binding_constraint"] in text
        assert 'data-figure="limits"' in html
        for w in written["json"]["warnings"]:
            if w["severity"] in ("warning", "error"):
                assert w["message"] in text
        # the run notes and the methods are in the appendix, not here
        assert "Notes from the run" not in text and "Methods" not in text

    def test_limits_chart_is_drawn(self, written: dict[str, Any]) -> None:
        from matplotlib.image import imread

        page = parse_report(first_page(written["html"]))
        img = next(i for i in page.images if "limits" in i.get("alt", ""))
        arr = imread(io.BytesIO(base64.b64decode(img["src"].split(",", 1)[1])), format="png")[..., :3]
        assert float(arr.std()) > 0.05 and np.mean(np.any(arr < 0.9, axis=-1)) > 0.02

    def test_without_a_plan_the_measured_limits_are_shown(self, written: dict[str, Any]) -> None:
        from theratwin.report.html import render_html

        res = written["results"]
        saved = res.twin
        try:
            res.twin = None
            html = render_html(res, masks=written["masks"])
        finally:
            res.twin = saved
        page = first_page(html)
        assert "made no plan" in page and 'id="glance"' in page
        kid = written["json"]["cycles"]["2"]["structures"]["kidneys"]
        expected = "ABOVE LIMIT" if kid["cumulative_bed_Gy"] > kid["limit"]["value_Gy"] else "below limit"
        assert expected in page


class TestContent:
    def test_notice_warnings_methods_and_patient(self, written: dict[str, Any]) -> None:
        html = written["html"]
        text = " ".join(written["parsed"].text)
        assert html.count("RESEARCH USE ONLY") >= 2
        assert RESEARCH_USE_NOTICE.split(".")[0] in text
        for w in written["json"]["warnings"]:
            assert w["message"] in text
        assert "Kletting et al. 2013, Med Phys 40:102504" in text
        assert "TT-REPORT-1" in text and "Doe Jane" in text
        assert tt.__version__ in text
        assert "biexp_uptake" in text

    def test_self_contained(self, written: dict[str, Any]) -> None:
        urls = [u for u in written["parsed"].urls if not u.startswith("#")]  # in-page links load nothing
        assert urls and all(u.startswith("data:image/png;base64,") for u in urls), urls[:3]
        assert "http://" not in written["html"] and "https://" not in written["html"].replace(
            "https://jfly", "")

    def test_embedded_figures_are_present_and_not_blank(self, written: dict[str, Any]) -> None:
        from matplotlib.image import imread

        imgs = written["parsed"].images
        # the organ-limits chart of the first page, one TAC per structure with a curve (3), projections, DVH
        assert len(imgs) == 6
        for im in imgs:
            png = base64.b64decode(im["src"].split(",", 1)[1])
            arr = imread(io.BytesIO(png), format="png")[..., :3]
            assert arr.shape[0] > 150 and arr.shape[1] > 300
            non_white = np.mean(np.any(arr < 0.9, axis=-1))
            assert non_white > 0.02, im.get("alt")
            assert float(arr.std()) > 0.05, im.get("alt")

    def test_fitted_curve_re_evaluated_through_the_registry(self) -> None:
        pytest.importorskip("theratwin.kinetics.models")
        lam_phys = tt.nuclides.get("Lu-177").decay_constant_per_h
        a0, lc, lu = 210.0, lam_phys + 0.02, 0.9
        t_meas = np.array([4.0, 24.0, 48.0, 168.0])
        params = {"A0_MBq": a0, "lambda_eff_per_h": lc, "lambda_bio_per_h": lc - lam_phys,
                  "lambda_uptake_per_h": lu}
        tq = np.linspace(0, 200, 50)
        y = model_curve("biexp_uptake", params, tq, nuclide="Lu-177", measured_time_h=t_meas,
                        measured_activity_MBq=biexp_uptake_MBq(t_meas, a0, lc, lu))
        assert y is not None
        np.testing.assert_allclose(y, biexp_uptake_MBq(tq, a0, lc, lu), rtol=1e-5, atol=1e-9)
        # an unknown model or missing data gives no curve rather than a wrong one
        assert model_curve("no_such_model", params, tq, nuclide="Lu-177", measured_time_h=t_meas,
                           measured_activity_MBq=t_meas) is None
        assert model_curve("biexp_uptake", {"A0_MBq": 1.0}, tq, nuclide="Lu-177") is None


class TestProjectionOrientation:
    @pytest.mark.parametrize("signs", [(1, 1, 1), (-1, 1, 1), (1, -1, -1), (-1, -1, -1)])
    def test_display_axes_follow_patient_directions(self, signs: tuple[int, int, int]) -> None:
        """Whatever the sign of the direction cosines, the displayed columns run to patient left (+L), rows of
        the axial view to posterior (+P) and the coronal rows to superior (+S)."""
        from theratwin.report.figures import _display_flips, _oriented

        arr = np.zeros((5, 6, 7), np.float32)
        arr[1, 2, 1] = 1.0  # voxel a
        arr[3, 4, 5] = 2.0  # voxel b
        vol = tt.ImageVolume(arr, spacing_mm=(2.0, 2.0, 2.0), direction=np.diag(signs).astype(float), unit="Gy")
        lps = {v: vol.geometry.index_to_lps(np.array(idx[::-1], float))
               for v, idx in ((1.0, (1, 2, 1)), (2.0, (3, 4, 5)))}
        shown = _oriented(arr, _display_flips(vol))
        pos = {v: np.argwhere(shown == v)[0] for v in (1.0, 2.0)}  # (z, y, x) display indices
        for axis_zyx, axis_lps in ((2, 0), (1, 1), (0, 2)):
            assert (pos[2.0][axis_zyx] > pos[1.0][axis_zyx]) == (lps[2.0][axis_lps] > lps[1.0][axis_lps])


class TestPdf:
    def test_pdf_renders_every_page_with_embedded_fonts(self, written: dict[str, Any], tmp_path: Path) -> None:
        pdf = written["files"].pdf
        assert pdf is not None and pdf.read_bytes().startswith(b"%PDF-")
        info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout
        pages = int(re.search(r"Pages:\s+(\d+)", info).group(1))
        assert 2 <= pages <= 12
        subprocess.run(["pdftoppm", "-r", "20", "-gray", str(pdf), str(tmp_path / "p")], check=True,
                       capture_output=True, timeout=60)
        rendered = sorted(tmp_path.glob("p-*.pgm"))
        assert len(rendered) == pages
        for page in rendered:
            raw = page.read_bytes()
            # binary PGM: header of 3 whitespace-separated fields then the raster
            header = re.match(rb"P5\s+(\d+)\s+(\d+)\s+(\d+)\s", raw)
            w, h = int(header.group(1)), int(header.group(2))
            pix = np.frombuffer(raw[header.end():], np.uint8)[: w * h]
            assert np.mean(pix < 200) > 0.003, page.name  # every page has visible content
        fonts = subprocess.run(["pdffonts", str(pdf)], capture_output=True, text=True, check=True).stdout
        rows = [r.split() for r in fonts.splitlines()[2:] if r.strip()]
        assert rows and all("yes" in r for r in rows), fonts  # every font embedded (offline, from the system)
        text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True,
                              check=True).stdout
        assert "RESEARCH USE ONLY" in text
        assert "TT-REPORT-1" in text
        kid = written["json"]["cycles"]["1"]["structures"]["kidneys"]
        assert format_number(kid["mean_dose_Gy"]) in text

    def test_first_pdf_page_is_the_decision_page_and_nothing_is_cut_off(self, written: dict[str, Any]) -> None:
        assert_first_page_and_margins(written["files"].pdf, written["json"])


    def test_pdf_needs_no_system_font(self, written: dict[str, Any], tmp_path: Path) -> None:
        """With fontconfig configured to know no font at all, the PDF still gets the fonts bundled with
        matplotlib (WeasyPrint alone crashes or prints no text there)."""
        import os
        import sys

        conf = tmp_path / "no-fonts.conf"
        conf.write_text('<?xml version="1.0"?><!DOCTYPE fontconfig SYSTEM "fonts.dtd">'
                        f"<fontconfig><cachedir>{tmp_path / 'fc-cache'}</cachedir></fontconfig>")
        env = {**os.environ, "FONTCONFIG_FILE": str(conf)}
        listed = subprocess.run(["fc-list"], env=env, capture_output=True, text=True)
        assert listed.stdout.strip() == ""  # the configuration really has no font
        out = tmp_path / "r.pdf"
        code = ("import sys; from theratwin.report import html_to_pdf; "
                "html_to_pdf(open(sys.argv[1], encoding='utf-8').read(), sys.argv[2])")
        proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code, str(written["files"].html), str(out)],
                              env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        fonts = subprocess.run(["pdffonts", str(out)], capture_output=True, text=True, check=True).stdout
        rows = [r.split() for r in fonts.splitlines()[2:] if r.strip()]
        assert rows and all("DejaVu" in r[0] and "yes" in r for r in rows), fonts
        text = subprocess.run(["pdftotext", str(out), "-"], capture_output=True, text=True, check=True).stdout
        assert "RESEARCH USE ONLY" in text and "TT-REPORT-1" in text

    @pytest.mark.parametrize("url", ["http://127.0.0.1:9/x.png", "file:///etc/hostname"])
    def test_pdf_never_fetches_external_resources(self, url: str) -> None:
        from theratwin.report import html_to_pdf

        with pytest.raises(tt.InvalidInputError, match="external resource"):
            html_to_pdf(f'<html><body><img src="{url}"><p>x</p></body></html>')


class TestEncapsulatedPdf:
    def test_dciodvfy_has_no_errors(self, written: dict[str, Any]) -> None:
        dcm = written["files"].dicom
        assert dcm is not None and dcm.name == "report-pdf.dcm" and dcm.parent.name == "dicom"
        if shutil.which("dciodvfy") is None:
            pytest.fail("dciodvfy (dicom3tools) is not installed; scripts/bootstrap.sh installs it")
        proc = subprocess.run(["dciodvfy", str(dcm)], capture_output=True, text=True, timeout=60)
        out = proc.stdout + proc.stderr
        assert "Encapsulated" in out or "PDF" in out, out
        errors = [line for line in out.splitlines() if line.startswith("Error")]
        assert not errors, out

    def test_attributes_and_document_round_trip(self, written: dict[str, Any]) -> None:
        res = written["results"]
        ds = pydicom.dcmread(written["files"].dicom)
        assert ds.SOPClassUID == pydicom.uid.EncapsulatedPDFStorage
        assert ds.Modality == "DOC"
        assert ds.StudyInstanceUID == res.study.study_uid
        assert ds.PatientID == "TT-REPORT-1" and str(ds.PatientName) == "Doe^Jane"
        assert "research use" in ds.SeriesDescription.lower()
        assert ds.BurnedInAnnotation == "YES"
        assert ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
        assert ds.DocumentTitle
        code = ds.ConceptNameCodeSequence[0]
        assert (code.CodeValue, code.CodingSchemeDesignator) == ("49118-3", "LN")
        pdf = written["files"].pdf.read_bytes()
        assert ds.EncapsulatedDocumentLength == len(pdf)
        assert bytes(ds.EncapsulatedDocument[: len(pdf)]) == pdf
        assert ds.SeriesInstanceUID != ds.StudyInstanceUID


class TestStage:
    def test_stage_writes_files_and_records_outputs(self, tmp_path: Path) -> None:
        from theratwin.report.stage import ReportStage

        res, masks = build_rich_results()
        ctx = PipelineContext(res.study, res, PipelineConfig(stages=("report",)), tmp_path, None,
                              PipelineState(masks=masks))
        ReportStage().run(ctx)
        assert res.outputs["report_html"] == "report.html"
        assert res.outputs["report_pdf"] == "report.pdf"
        assert res.outputs["report_dicom"] == "dicom/report-pdf.dcm"
        for rel in res.outputs.values():
            assert (tmp_path / rel).stat().st_size > 1000

    def test_pipeline_with_bare_results_still_reports(self, small_study: tt.Study, tmp_path: Path) -> None:
        res = tt.pipeline.Pipeline(PipelineConfig(stages=("report",),
                                                  stage_options={"report": {"dicom": False}})).run(
            small_study, out_dir=tmp_path)
        assert res.outputs["report_html"] == "report.html" and "report_dicom" not in res.outputs
        html = (tmp_path / "report.html").read_text()
        assert "RESEARCH USE ONLY" in html and "did not run" in html
        assert (tmp_path / "report.pdf").read_bytes().startswith(b"%PDF-")

    def test_missing_pdf_library_leaves_the_html_and_a_warning(self, small_study: tt.Study, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
        import theratwin.report.writer as writer

        def no_pango(html: str, path: Any = None) -> bytes:
            raise OSError("cannot load library 'libpango-1.0-0'")

        monkeypatch.setattr(writer, "html_to_pdf", no_pango)
        res = tt.Results.for_study(small_study)
        files = write_report(res, tmp_path)
        assert files.html.exists() and files.pdf is None and files.dicom is None
        assert not (tmp_path / "report.pdf").exists()
        assert any(w.stage == "report" and "libpango" in w.message for w in res.warnings)

    def test_unknown_option_is_a_configuration_error(self, small_study: tt.Study, tmp_path: Path) -> None:
        cfg = PipelineConfig(stages=("report",), stage_options={"report": {"colour": "red"}})
        with pytest.raises(tt.ConfigurationError, match="report"):
            tt.pipeline.Pipeline(cfg).run(small_study, out_dir=tmp_path)

    def test_config_is_plain_data(self) -> None:
        from dataclasses import asdict

        assert json.loads(json.dumps(asdict(ReportConfig()))) == asdict(ReportConfig())
