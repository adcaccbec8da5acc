"""The README's main job: the demo patient through every stage, checked against its ground truth.

Uses the session fixture ``demo_run`` (conftest.py), i.e. exactly what ``theratwin demo --out DIR`` runs.
Tolerances are the physics of the demo, not of the code: the SPECT resolution (11 mm FWHM) takes activity out of
small structures, so voxel-based doses are compared with the truth's ``mean_dose_as_imaged_Gy`` (the same dose
physics on the noiseless, resolution-limited activity), and TIAs (partial-volume corrected by the kinetics stage)
with the true TIA.
"""

from __future__ import annotations

import json
import math

import pydicom
import pytest

pytestmark = pytest.mark.slow

# Structures whose kinetics the scans cannot capture to 5 %: the bladder content (T_eff 6 h, uptake 1 h) holds
# about 27 % of its TIA before the first scan at 4 h, whose rise no scan sees (see test_bladder_tia_...).
NOT_MEASURABLE = {"bladder"}
ORGANS = ("kidneys", "liver", "parotid_glands")


def _truth_structures(truth: dict, cycle: int) -> dict:
    return next(c for c in truth["cycles"] if c["cycle"] == cycle)["structures"]


def test_every_output_is_written(demo_run) -> None:
    out = demo_run.out_dir
    for name in ("results.json", "demo-truth.json", "fhir-bundle.json", "report.html", "report.pdf",
                 "twin-state.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    modalities = sorted(pydicom.dcmread(p, stop_before_pixels=True).Modality for p in (out / "dicom").glob("*.dcm"))
    assert modalities.count("RTDOSE") >= 4  # two cycles' dose, cumulative dose and BED at least
    assert {"SEG", "SR", "DOC"} <= set(modalities)
    assert json.loads((out / "fhir-bundle.json").read_text())["type"] == "transaction"


def test_results_json_is_complete(demo_run) -> None:
    data = json.loads((demo_run.out_dir / "results.json").read_text())
    assert "RESEARCH USE" in data["notice"]
    assert set(data["cycles"]) == {"1", "2"}
    stages = data["extras"]["completed_stages"]
    assert stages == ["registration", "kinetics", "dosimetry", "radiobiology", "twin", "report", "dicom_export",
                      "fhir_export"]
    for cycle in data["cycles"].values():
        for name, s in cycle["structures"].items():
            for field in ("tia_MBq_h", "tia_sd_MBq_h", "mean_dose_Gy", "bed_Gy", "eqd2_Gy", "cumulative_bed_Gy"):
                assert field in s, (cycle["cycle"], name, field)
    twin = data["twin"]
    assert twin and "RESEARCH USE" in json.dumps(twin).upper()


def test_times_since_injection_match_truth_to_the_second(demo_run) -> None:
    for c in demo_run.truth["cycles"]:
        measured = demo_run.results.cycles[c["cycle"]].time_points_h
        expected = [tp["time_h"] for tp in c["time_points"]]
        assert measured == pytest.approx(expected, abs=1.0 / 3600)


@pytest.mark.parametrize("cycle", [1, 2])
def test_organ_tias_agree_with_truth_within_uncertainty(demo_run, cycle: int) -> None:
    truth = _truth_structures(demo_run.truth, cycle)
    for name in ORGANS:
        s = demo_run.results.cycles[cycle].structures[name]
        err = abs(s.tia_MBq_h - truth[name]["tia_MBq_h"])
        assert err <= 2.0 * s.tia_sd_MBq_h, (name, s.tia_MBq_h, truth[name]["tia_MBq_h"], s.tia_sd_MBq_h)


def test_bladder_tia_follows_its_fast_clearance(demo_run) -> None:
    """The bladder content clears with T_eff 6 h and leaves a small slow tail (spill-in) at 168 h; with 1/SD²
    weights the mono-exponential fit has a second, wrong minimum on that tail (it once gave 0.14 x the true
    TIA). Integrated from t = 0 without the 1 h uptake, the right one overestimates by at most ~15 %."""
    truth = _truth_structures(demo_run.truth, 1)["bladder"]
    s = demo_run.results.cycles[1].structures["bladder"]
    assert 0.95 <= s.tia_MBq_h / truth["tia_MBq_h"] <= 1.25, (s.tia_MBq_h, truth["tia_MBq_h"])
    # the selected model may separate the content's clearance from the spill-in tail (a fast + slow fit, whose
    # effective_half_life_h is the terminal, spill-in phase): the phase that holds the TIA clears with ~6 h
    p = s.kinetic_params
    phases = [(p.get("A0_MBq", p.get("A1_MBq", 1.0)), p["lambda_eff_per_h"])]
    if "lambda_fast_per_h" in p:
        phases.append((p["A2_MBq"], p["lambda_fast_per_h"]))
    _, lam = max(phases, key=lambda ph: ph[0] / ph[1])
    assert math.log(2) / lam == pytest.approx(6.0, rel=0.25)


def test_kidney_dose_is_in_the_published_range_and_close_to_truth(demo_run) -> None:
    truth = _truth_structures(demo_run.truth, 1)["kidneys"]
    s = demo_run.results.cycles[1].structures["kidneys"]
    # 177Lu-PSMA-617 kidney dose 0.4-0.8 Gy/GBq (e.g. Kratochwil 2016 JNM 57:1170; Violet 2019 JNM 60:517)
    assert 0.4 <= s.dose_per_activity_Gy_per_GBq <= 0.8
    assert s.mean_dose_Gy == pytest.approx(truth["mean_dose_as_imaged_Gy"], rel=0.05)


def test_cumulative_bed_adds_up_over_cycles(demo_run) -> None:
    r = demo_run.results
    for name in r.structure_names():
        c1, c2 = r.cycles[1].structures[name], r.cycles[2].structures[name]
        assert c2.cumulative_bed_Gy == pytest.approx(c1.bed_Gy + c2.bed_Gy, rel=1e-6)
        assert c2.cumulative_dose_Gy == pytest.approx(c1.mean_dose_Gy + c2.mean_dose_Gy, rel=1e-6)


def test_demo_truth_dose_is_in_range(demo_run) -> None:
    kid = _truth_structures(demo_run.truth, 1)["kidneys"]
    assert 0.4 <= kid["mean_dose_Gy_per_GBq"] <= 0.8
    for name, s in _truth_structures(demo_run.truth, 1).items():
        if name not in NOT_MEASURABLE:
            # the resolution can only lower a small hot structure's dose, never raise it by much
            assert s["mean_dose_as_imaged_Gy"] <= 1.15 * s["mean_dose_Gy"], name


# Voxel doses against the resolution-limited truth (mean_dose_as_imaged_Gy). The kinetics stage integrates every
# voxel with the hybrid model (first scan + Poisson-weighted exponential tail, fit_voxels(model="hybrid")); the
# registration stage resamples later scans onto the reference grid with cubic B-splines. Bounds:
# - cycle 1, organs, body and red marrow: 5 % (the hybrid model's own error on the demo's noiseless as-imaged
#   curves is <= 2.5 % for every structure but the bladder, see the fit_voxels docstring and test_kinetics_voxels);
# - cycle 1, small structures (submandibular and lacrimal glands, lesions of 1-10 mL): 7 %. Resampling after a
#   simulated patient shift of a few mm still moves a few % of the activity out of them (trilinear interpolation
#   took 5-17 %, measured on the noiseless demo images; cubic B-splines about a third of that);
# - cycle 2 (one scan at ~50 h; each voxel keeps its cycle-1 curve shape, rescaled to the scan): 7 % for every
#   structure. The demo changes half-lives by 4 % SD and amplitudes by 5 % SD per compartment between cycles
#   (INTER_OCCASION_SD), which one scan cannot see: with the exact as-imaged curves, keeping the cycle-1 shape is
#   off by up to 1 % for organs and 3.4-4.9 % for three lesions (measured on the demo truth).
SMALL = {"submandibular_glands", "lacrimal_glands"}


def _is_small(name: str) -> bool:
    return name in SMALL or name.startswith("lesion_")


@pytest.mark.parametrize("cycle", [1, 2])
def test_voxel_dose_matches_the_resolution_limited_truth(demo_run, cycle: int) -> None:
    truth = _truth_structures(demo_run.truth, cycle)
    bounds = {1: (0.05, 0.05, 0.07), 2: (0.07, 0.07, 0.07)}[cycle]  # organs, body/red marrow, small
    ratios = {}
    for name, t in truth.items():
        if name in NOT_MEASURABLE:
            continue
        ratios[name] = demo_run.results.cycles[cycle].structures[name].mean_dose_Gy / t["mean_dose_as_imaged_Gy"]
    for name, r in ratios.items():
        bound = bounds[2] if _is_small(name) else bounds[1] if name in ("body", "red_marrow") else bounds[0]
        assert abs(r - 1.0) <= bound, (cycle, name, round(r, 3), ratios)
        if _is_small(name):
            assert r <= 1.06, (cycle, name, round(r, 3))  # resampling loses activity, it cannot add much
