"""Kinetics on the built-in demo patient against its ground truth (demo-truth.json).

The demo SPECT is blurred with a Gaussian of ``RESOLUTION_FWHM_MM`` and carries Poisson noise and patient
motion, so the pipeline runs registration and kinetics with the partial-volume correction set to that
resolution and the counting statistics to the demo camera's sensitivity (the demo-specific settings, as
``theratwin demo`` uses them). Acceptance per structure: ``|TIA - truth| <= 3 SD + (1 - RC)
truth``, where RC is the structure's spill-out recovery coefficient: the correction removes spill-out but
not spill-in from hot neighbours, which can add up to about the same fraction (documented in
``theratwin.kinetics.tac``). The urinary bladder is excluded: its content peaks before the first scan
(T_eff 6 h) and its late samples are pure spill-in, which no time-point fit can represent (reported by a
chi-square warning instead).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("theratwin.demo")
pytest.importorskip("theratwin.dicom")

from theratwin.demo import RESOLUTION_FWHM_MM, SENSITIVITY_CPS_PER_MBQ, build_demo  # noqa: E402
from theratwin.dicom import read_study  # noqa: E402
from theratwin.pipeline import Pipeline, PipelineConfig  # noqa: E402

EXCLUDED = {"bladder"}


@pytest.fixture(scope="module")
def demo_run():
    demo = build_demo()
    study = read_study(demo.dicom_dir)
    p = Pipeline(PipelineConfig(stages=("registration", "kinetics"),
                                stage_options={"kinetics": {"system_fwhm_mm": RESOLUTION_FWHM_MM,
                                                            "counts_per_MBq_s": SENSITIVITY_CPS_PER_MBQ}}))
    res = p.run(study)
    return demo, study, res, p.last_context


def _truth(demo, cycle: int) -> dict:
    return next(c for c in demo.truth["cycles"] if c["cycle"] == cycle)["structures"]


@pytest.mark.parametrize("cycle", [1, 2])
def test_structure_tias_within_uncertainty_of_truth(demo_run, cycle: int) -> None:
    demo, _, res, _ = demo_run
    truth = _truth(demo, cycle)
    checked, failures = 0, []
    for name, sr in res.cycles[cycle].structures.items():
        if name in EXCLUDED or name not in truth:
            continue
        t = truth[name]["tia_MBq_h"]
        rc = sr.fit_quality["recovery_coefficient"]
        allowed = 3.0 * sr.tia_sd_MBq_h + (1.0 - rc) * t
        checked += 1
        if abs(sr.tia_MBq_h - t) > allowed:
            failures.append(f"{name}: {sr.tia_MBq_h:.0f} vs truth {t:.0f} MBq h (SD {sr.tia_sd_MBq_h:.0f}, RC {rc:.2f})")
    assert checked >= 10
    assert not failures, failures


def test_kidneys_within_two_sd_and_method_reported(demo_run) -> None:
    demo, _, res, _ = demo_run
    for cycle in (1, 2):
        sr = res.cycles[cycle].structures["kidneys"]
        t = _truth(demo, cycle)["kidneys"]["tia_MBq_h"]
        assert abs(sr.tia_MBq_h - t) <= 2.0 * sr.tia_sd_MBq_h, (sr.tia_MBq_h, t, sr.tia_sd_MBq_h)
    assert res.cycles[2].structures["kidneys"].tia_method == "stp:prior"
    assert res.cycles[1].structures["kidneys"].effective_half_life_h == pytest.approx(
        _truth(demo, 1)["kidneys"]["effective_half_life_h"], rel=0.15)


def test_registration_recovers_demo_motion(demo_run) -> None:
    demo, _, _, ctx = demo_run
    tps = next(c for c in demo.truth["cycles"] if c["cycle"] == 1)["time_points"]
    regs = ctx.state.registration[1]
    for tp, rr in zip(tps[1:], regs[1:], strict=True):
        rot = np.asarray(tp["misalignment"]["rotation_matrix"])
        trans = np.asarray(tp["misalignment"]["translation_mm"])
        # compare the maps on points spread over the torso (truth: p -> R p + t, LPS mm)
        pts = np.array([[x, y, z] for x in (-100.0, 0.0, 100.0) for y in (-80.0, 0.0, 80.0)
                        for z in (-150.0, 0.0, 150.0)])
        got = np.array([rr.transform.TransformPoint(tuple(p)) for p in pts])
        assert np.max(np.linalg.norm(got - (pts @ rot.T + trans), axis=1)) < 1.5
        assert rr.residual_mm < 3.0


def test_voxel_tia_map_total_matches_body_truth(demo_run) -> None:
    demo, study, res, ctx = demo_run
    tia = res.maps["cycle1/tia"]
    body = ctx.state.masks["body"]
    total_MBq_h = float((tia.array * body).sum()) * tia.voxel_volume_mL / 1e6
    truth = _truth(demo, 1)["body"]["tia_MBq_h"]
    # no partial-volume correction in the voxel map: a few % of the body's counts blur out of it
    assert total_MBq_h == pytest.approx(truth, rel=0.10)


def test_recorded_methods_match_what_was_done(demo_run) -> None:
    """Every structure's tia_method is the method of the estimate the stage kept (issue 13: never "AICc" when no
    selection happened), and the stage's method record counts exactly these."""
    from theratwin.kinetics import StpEstimate, TacFit

    _, _, res, ctx = demo_run
    counts: dict[str, int] = {}
    for n, cres in res.cycles.items():
        for name, sr in cres.structures.items():
            est = ctx.state.tac_fits[n][name]
            if isinstance(est, TacFit):
                assert sr.tia_method == est.method and sr.kinetic_model == est.model, (n, name)
                assert est.selection == "evidence" and est.method in ("evidence_average", f"evidence:{est.model}")
                assert sum(est.model_weights.values()) == pytest.approx(1.0)
                assert sr.tia_MBq_h == pytest.approx(est.tia_MBq_h)
            else:
                assert isinstance(est, StpEstimate) and est.method == "prior" and sr.tia_method == "stp:prior"
                assert sr.fit_quality["prior_rescale_factor"] == pytest.approx(est.rescale_factor)
            counts[sr.tia_method] = counts.get(sr.tia_method, 0) + 1
    record = next(m.method for m in res.methods if m.stage == "kinetics")
    first = record.split(";")[0]
    assert first == "Structure TIAs: " + ", ".join(f"{m} ({k})" for m, k in sorted(counts.items()))
    assert "AICc" not in record


def test_cycle2_body_tia_within_10_percent(demo_run) -> None:
    """The body's cycle-1 curve (blood, urine and tissue: a fast and a slow phase) is fitted well now and its
    single-time-point cycle 2 is rescaled to the nearest cycle-1 sample: within 10 % of the truth (was -21 %)."""
    demo, _, res, _ = demo_run
    sr = res.cycles[2].structures["body"]
    assert sr.tia_MBq_h == pytest.approx(_truth(demo, 2)["body"]["tia_MBq_h"], rel=0.10)
    assert res.cycles[1].structures["body"].fit_quality["chi2_reduced"] < 3.0


@pytest.mark.parametrize(("cycle", "rel"), [(1, 0.05), (2, 0.08)])
def test_spill_in_dominated_structures_match_truth(demo_run, cycle: int, rel: float) -> None:
    """Red marrow (L1-L5 spongiosa inside a cortex rim, cooler than the soft tissue around it) and spleen (next to
    the left kidney) take much of their measured counts from their neighbours. The shell GTM removes that spill-in:
    measured cycle 1 -0.7 % and +0.2 %, cycle 2 +3.9 % and +0.3 % of the generator's TIA. The spill-out-only
    ``"mask"`` recovery (the default before the shell GTM) gives +82 % and +30 % on the same images (the "+74 %
    marrow, +31 % spleen" of earlier notes); no correction +12 % and +7 %."""
    demo, _, res, _ = demo_run
    truth = _truth(demo, cycle)
    for name in ("red_marrow", "spleen"):
        sr = res.cycles[cycle].structures[name]
        assert sr.tia_MBq_h == pytest.approx(truth[name]["tia_MBq_h"], rel=rel), (name, sr.tia_MBq_h)
        # the spill-in was subtracted: the corrected activity is below the measured one (RC reported > 1)
        assert sr.fit_quality["recovery_coefficient"] > 1.0, name
