"""The twin on the demo patient, as the therapy team sees it (issue 15's demo checks).

The demo's marrow is an L1–L5 surrogate (~90 g): against the whole-marrow (1170 g) prior it is a prior–data
conflict, against the per-gram prior at its own mass it is not. The twin's cycle-2 TIAs agree with the
kinetics stage's own single-time-point estimates (a different method on the same scan) within 2 SD, and the
plan stays within the protocol and names what binds it. The assertions are on properties (conflict or not,
agreement within the stated uncertainty, bounds), not on today's numbers: the kinetics and dosimetry stages
will keep improving the demo's measured TIAs and doses.
"""

from __future__ import annotations

import math

import pytest

from theratwin.twin import PatientTwin
from theratwin.twin.stage import _error_components


def _twin_from_results(results, *, with_mass: bool) -> PatientTwin:
    """A twin fed as the twin stage feeds it, optionally without the structures' masses (the old behaviour:
    every prior at its reference mass)."""
    first = results.cycles[min(results.cycles)]
    twin = PatientTwin(first.nuclide, first.radiopharmaceutical)
    for n, cr in sorted(results.cycles.items()):
        for s, sr in cr.structures.items():
            if not sr.time_h:
                continue
            random_sd, correlated = _error_components(sr)
            twin.observe(n, s, sr.time_h, sr.activity_MBq, cr.administered_MBq, activity_sd_MBq=random_sd,
                         correlated_rel_sd=correlated, mass_g=sr.mass_g if with_mass else None)
    return twin


def _marrow(results) -> str:
    return next(s for s in results.cycles[1].structures if "marrow" in s)


def test_marrow_conflict_is_detected_at_the_wrong_mass_and_gone_at_its_own(demo_run) -> None:
    res = demo_run.results
    marrow = _marrow(res)
    before = _twin_from_results(res, with_mass=False)
    hit = [c for c in before.conflicts if c.structure == marrow and c.level == "population"]
    assert [c.parameter for c in hit] == ["uptake"] and hit[0].z_sd < -3.0, [c.message for c in before.conflicts]
    # the stage (per-gram prior at the observed mass) finds none for the marrow
    after = res.twin["conflicts"]
    assert not [c for c in after if c["structure"] == marrow and c["level"] == "population"], after
    summary = res.twin["model"]["structures"][marrow]
    assert summary["prior_mass_g"] == pytest.approx(res.cycles[1].structures[marrow].mass_g)
    # every conflict the stage found is a warning of the run
    messages = {w.message for w in res.warnings if w.stage == "twin"}
    assert all(c["message"] in messages for c in after)


def test_cycle2_twin_tia_within_two_sd_of_the_measured_value(demo_run) -> None:
    res = demo_run.results
    estimates = res.twin["estimates"]["2"]
    assert set(estimates) == {s for s, sr in res.cycles[2].structures.items() if sr.time_h}
    for s, e in estimates.items():
        measured = res.cycles[2].structures[s]
        # the distance in the joint SD (what the stage reports) and in the measurement's own SD
        assert abs(e["difference_z"]) <= 2.0, (s, e)
        assert abs(e["mean_MBq_h"] - measured.tia_MBq_h) <= 2.0 * measured.tia_sd_MBq_h, (s, e, measured.tia_MBq_h)
        joint = math.hypot(measured.tia_sd_MBq_h, e["sd_MBq_h"])
        assert e["difference_z"] == pytest.approx((e["mean_MBq_h"] - measured.tia_MBq_h) / joint)


def test_plan_stays_within_the_protocol_and_names_what_binds(demo_run) -> None:
    res = demo_run.results
    plan = res.twin["plan"]
    proto = plan["protocol"]
    given = len(plan["cycles_given"])
    assert given == len(res.cycles) and plan["next_cycle"] == given + 1
    acts = plan["activities_MBq"]
    assert len(acts) <= proto["max_cycles"] - given
    assert all(proto["min_activity_MBq"] <= a <= proto["max_activity_MBq"] for a in acts.values())
    assert plan["binding_constraint"] == "the protocol" or plan["binding_constraint"] in plan["organs"]
    if acts:
        assert plan["probability_within_limits"] >= plan["confidence"]
    # the organs at risk the plan guards are those with a limit in the dosimetry results
    limited = {s for s, sr in res.cycles[2].structures.items() if sr.limit}
    assert set(plan["organs"]) == limited
    # the single-cycle recommendation never exceeds the protocol's maximum
    assert res.twin["recommendation"]["administered_MBq"] <= proto["max_activity_MBq"]
