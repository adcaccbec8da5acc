"""The same prediction in every export: the demo's SR, FHIR bundle and report show identical twin numbers.

Each export is read back the way its receiver reads it -- the SR with highdicom (measurement groups by tracking
identifier, concepts by code), the FHIR bundle as JSON (predicted Observations by identifier, components by code),
the report as the HTML a reader sees (the text of each number) -- and nothing here goes through
``theratwin.twin.TwinResults``. For every predicted structure and quantity the central value and the 90 %
interval must agree across the three (the report to its printed precision), as must the plan's activities. An
export that read another key (the median for the mean, the 5th percentile of another quantity, a stale plan)
fails here.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import highdicom as hd
import pytest

from theratwin.dicom.sr import TTWN

pytestmark = pytest.mark.slow

#: twin quantity -> (SR concept (value, scheme), SR companion digit i of TTW03<i>5 / TTW03<i>9, FHIR code).
#: Written out here from the SR and FHIR documentation, independent of the writers' tables.
QUANTITIES = {
    "tia_MBq_h": (("TTW0001", TTWN), 1, "predicted-time-integrated-activity"),
    "dose_Gy": (("128533", "DCM"), 2, "predicted-absorbed-dose"),
    "bed_Gy": (("TTW0004", TTWN), 3, "predicted-biologically-effective-dose"),
    "cumulative_dose_Gy": (("TTW0008", TTWN), 5, "predicted-cumulative-absorbed-dose"),
    "cumulative_bed_Gy": (("TTW0009", TTWN), 6, "predicted-cumulative-biologically-effective-dose"),
    "cumulative_eqd2_Gy": (("TTW0010", TTWN), 7, "predicted-cumulative-equieffective-dose-2gy"),
}
_NUMBER = re.compile(r"[-+]?\d+(?:\.(\d+))?(?:e[-+]?\d+)?")


def _sr_predictions(out_dir: Path, files: list[str]) -> tuple[dict[tuple[int, str], dict[str, tuple]], dict]:
    """{(cycle, structure): {quantity: (mean, low, high)}} and the plan groups' values from the SR documents."""
    preds: dict[tuple[int, str], dict[str, tuple]] = {}
    plan: dict[str, dict[str, float]] = {}
    for f in files:
        for g in hd.sr.srread(out_dir / f).content.get_volumetric_roi_measurement_groups():
            tid = str(g.tracking_identifier)
            vals = {(m.name.value, m.name.scheme_designator): float(m.value) for m in g.get_measurements()}
            if tid.endswith(" end of plan predicted"):
                plan[tid] = {"total_MBq": vals[("TTW0110", TTWN)], "n_cycles": vals[("TTW0111", TTWN)]}
                continue
            m = re.fullmatch(r"(.+) cycle (\d+) predicted", tid)
            if m is None:
                continue
            per = preds.setdefault((int(m.group(2)), m.group(1)), {})
            for q, (code, i, _) in QUANTITIES.items():
                if code in vals:
                    per[q] = (vals[code], vals[(f"TTW03{i}5", TTWN)], vals[(f"TTW03{i}9", TTWN)])
    return preds, plan


def _fhir_predictions(bundle: dict[str, Any]) -> tuple[dict[tuple[int, str], dict[str, tuple]], dict[int, float]]:
    """{(cycle, structure): {quantity: (mean, low, high)}} of the predicted Observations; {cycle: MBq} of the
    CarePlan's planned activities."""
    codes = {fhir: q for q, (_, _, fhir) in QUANTITIES.items()}
    preds: dict[tuple[int, str], dict[str, tuple]] = {}
    activities: dict[int, float] = {}
    for entry in bundle["entry"]:
        r = entry["resource"]
        if r["resourceType"] == "CarePlan":
            for a in r.get("activity", []):
                cycle = int(re.search(r"cycle (\d+)", a["detail"]["code"]["text"]).group(1))
                activities[cycle] = a["detail"]["quantity"]["value"]
        if r["resourceType"] != "Observation" or r["status"] != "preliminary":
            continue
        m = re.search(r"/predicted/cycle(\d+)/(.+)$", r["identifier"][0]["value"])
        if m is None:
            continue
        per = preds.setdefault((int(m.group(1)), m.group(2)), {})
        comps = r["component"]
        for k, c in enumerate(comps):
            q = codes.get(c["code"]["coding"][0]["code"])
            if q is None:
                continue
            rng = comps[k + 1]["valueRange"]  # the interval follows its value
            per[q] = (c["valueQuantity"]["value"], rng["low"]["value"], rng["high"]["value"])
    return preds, activities


def _report_numbers(text: str) -> dict[tuple[str, ...], str]:
    """{data-path: text shown} of every annotated number of the report."""
    out = {}
    for m in re.finditer(r'<(?:td|span)[^>]*?data-path="([^"]*)"[^>]*>([^<]*)<', text):
        out[tuple(str(p) for p in json.loads(html.unescape(m.group(1))))] = html.unescape(m.group(2)).strip()
    return out


def _shown(text: str) -> list[tuple[float, float]]:
    """(value, half of the last printed digit) of each number in a report cell such as ``4.40 [3.31–5.67]``."""
    out = []
    for m in _NUMBER.finditer(text.replace("–", " ").replace(",", "")):
        s = m.group(0)
        if "e" in s:
            mant = s.split("e")[0]
            digits = len(mant.split(".")[1]) if "." in mant else 0
            out.append((float(s), 0.5 * 10.0 ** (int(s.split("e")[1]) - digits)))
        else:
            out.append((float(s), 0.5 * 10.0 ** -len(m.group(1) or "")))
    return out


def test_sr_fhir_and_report_show_the_same_prediction(demo_run) -> None:
    out, res = demo_run.out_dir, demo_run.results
    sr, sr_plan = _sr_predictions(out, [f for f in res.outputs["sr"] if "predicted" in f])
    fhir, fhir_activities = _fhir_predictions(json.loads((out / "fhir-bundle.json").read_text(encoding="utf-8")))
    report = _report_numbers((out / "report.html").read_text(encoding="utf-8"))

    assert sr and set(sr) == set(fhir), "the SR and FHIR predict different structures or cycles"
    n = 0
    for (cycle, name), per in sorted(sr.items()):
        assert set(per) == set(fhir[(cycle, name)]) == set(QUANTITIES), (cycle, name)
        for q, (mean, low, high) in per.items():
            # SR and FHIR carry full precision: equal to rounding in the DICOM DS / JSON encoding
            assert fhir[(cycle, name)][q] == pytest.approx((mean, low, high), rel=1e-12), (cycle, name, q)
            assert low < mean < high, (cycle, name, q)
            # the report: the same three numbers to its printed precision
            cell = report[("twin", "prediction", "structures", name, q, "mean")]
            shown = _shown(cell)
            assert len(shown) == 3, (name, q, cell)
            for (value, half_digit), want in zip(shown, (mean, low, high), strict=True):
                assert abs(value - want) <= half_digit * (1 + 1e-9), (name, q, cell, want)
            n += 1
    assert n >= 6 * len(res.structure_names()) - 6  # every structure's six quantities (a structure may lack one)

    # the plan's activities: per cycle in FHIR and the report, their sum and count in every SR plan group
    assert fhir_activities, "no planned activity in the CarePlan"
    for cycle, mbq in fhir_activities.items():
        (value, half_digit), = _shown(report[("twin", "plan", "activities_MBq", str(cycle))])
        assert abs(value - mbq) <= half_digit * (1 + 1e-9), (cycle, mbq)
    (total, half_digit), = _shown(report[("twin", "plan", "total_planned_MBq")])
    assert abs(total - sum(fhir_activities.values())) <= half_digit * (1 + 1e-9)
    assert sr_plan, "no end-of-plan group in the SR"
    for tid, values in sr_plan.items():
        assert values["total_MBq"] == pytest.approx(sum(fhir_activities.values()), rel=1e-12), tid
        assert values["n_cycles"] == len(fhir_activities), tid
        assert tid.endswith(f"cycle {max(fhir_activities)} end of plan predicted")
