"""The web page's view of the twin (``theratwin_web.plan.twin_plan``) on the demo's real twin output: every value
shown is the one results.json holds (the function only selects and labels; it runs without the web extra)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "Web"))

from theratwin_web.plan import STATUS_TEXT, twin_plan  # noqa: E402

from theratwin.results import to_jsonable  # noqa: E402


def test_plan_without_twin() -> None:
    assert twin_plan(None) == {"available": False,
                               "message": "The twin stage has not run (run the pipeline through 'twin')."}


@pytest.mark.slow
def test_plan_shows_the_recommendation_of_results_json(demo_run) -> None:
    twin = to_jsonable(demo_run.results.twin)
    rec = twin["recommendation"]
    plan = twin_plan(twin)
    assert plan["available"] and plan["activity_MBq"] == rec["administered_MBq"]
    assert plan["binding"] == rec["limiting_structure"] and plan["status_text"] == STATUS_TEXT[rec["status"]]
    organs = {o["structure"]: o for o in plan["organs"]}
    assert set(organs) == set(rec["limits"])
    assert [o["structure"] for o in plan["organs"] if o["binding"]] == [rec["limiting_structure"]]
    kidneys = organs["kidneys"]
    assert kidneys["limit_Gy"] == rec["limits"]["kidneys"]["value_Gy"]
    assert kidneys["at_confidence_Gy"] == rec["predicted_at_limit_quantile_Gy"]["kidneys"]
    for part in ("mean", "low", "high"):
        assert kidneys["predicted_cumulative_Gy"][part] == rec["predicted_cumulative"]["kidneys"][part]
    assert {row["structure"] for row in plan["lesions"]} == set(rec["lesion_dose_Gy"])
    assert plan["response"]["mean"] == rec["responder_probability"]["mean"]
    assert {p["structure"] for p in plan["prediction"]} == set(twin["prediction"]["structures"])
    # the protocol-aware plan of the remaining cycles, as the twin wrote it
    tp = twin["plan"]
    shown = plan["treatment"]
    assert shown["headline"] == tp["headline"] and shown["binding_constraint"] == tp["binding_constraint"]
    assert shown["probability_within_limits"] == tp["probability_within_limits"]
    assert {str(a["cycle"]): a["activity_MBq"] for a in shown["activities"]} == tp["activities_MBq"]
