"""The README's main job: the demo patient through every stage, checked against its ground truth.

Uses the session fixture ``demo_run`` (conftest.py), i.e. exactly what ``theratwin demo --out DIR`` runs.
Mean doses are checked against references the pipeline does not compute: the true TIA times the closed-form sphere
S-value per part, plus the truth's cross-fire (lesions, glands); the organ self-S-value (kidneys, liver); the
demo's independent fine-grid truth (red marrow, body, spleen; ``theratwin.demo.truth``). TIAs (partial-volume
corrected by the kinetics stage) are checked against the true TIA.
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
    assert s.mean_dose_Gy == pytest.approx(truth["mean_dose_Gy"], rel=0.05)
    # the map's own value, kept beside it, is what the resolution leaves: 15 % low for the kidneys
    assert s.mean_dose_as_imaged_Gy < 0.9 * truth["mean_dose_Gy"]


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


# Mean doses against physics references (the acceptance, measured on the demo before setting them):
# - lesions and glands: true TIA x sphere S-value of each part (closed form) + the truth's cross-fire; within 10 %
#   for structures >= 4 mL, 20 % for 1-4 mL;
# - kidneys and liver: true TIA x organ self-S-value, within 7 %;
# - red marrow, body and spleen: the independent fine-grid truth, within 5 %.
# Cycle 1 (four scans) is checked as is. Cycle 2 has one scan at ~50 h: its TIAs come from the prior-informed
# single-time-point method, whose error (measured: lesion_bone_1 +16 %, red marrow -16 %, with the 50 h activities
# within 2.5 %) belongs to the kinetics; there the references take the reported TIA in place of the true one (the
# self-dose part of the truth scaled by reported / true TIA), which checks the dosimetry given the TIA.
SPHERE_MODEL = {"parotid_glands", "submandibular_glands", "lacrimal_glands"}
ORGAN_S = {"kidneys", "liver"}
FINE_TRUTH = {"red_marrow", "body", "spleen"}


def _reference_Gy(name: str, t: dict, tia_MBq_h: float) -> tuple[float, float]:
    """(reference mean dose in Gy, bound) for structure ``name`` of the truth ``t`` with the TIA ``tia_MBq_h``."""
    from theratwin.dosimetry import organ_self_s_value, sphere_s_value

    scale = tia_MBq_h / t["tia_MBq_h"]
    if name.startswith("lesion_") or name in SPHERE_MODEL:
        parts = t.get("parts", 1)
        self_Gy = (tia_MBq_h / parts) * 3600.0 * sphere_s_value("Lu-177", t["mass_g"] / parts) / 1000.0
        return self_Gy + t["cross_dose_Gy"], (0.10 if t["volume_mL"] >= 4.0 else 0.20)
    if name in ORGAN_S:
        return tia_MBq_h * 3600.0 * organ_self_s_value("Lu-177", t["mass_g"]) / 1000.0, 0.07
    if "self_dose_Gy" in t:
        return t["self_dose_Gy"] * scale + t["cross_dose_Gy"], 0.05
    return t["mean_dose_Gy"] * scale, 0.05


@pytest.mark.parametrize("cycle", [1, 2])
def test_mean_doses_match_physics_references(demo_run, cycle: int) -> None:
    truth = _truth_structures(demo_run.truth, cycle)
    ratios, bounds = {}, {}
    for name, t in truth.items():
        if name not in ORGAN_S | FINE_TRUTH | SPHERE_MODEL and not name.startswith("lesion_"):
            continue
        s = demo_run.results.cycles[cycle].structures[name]
        # against the true TIA in both cycles: cycle 2's single scan goes through the kinetics too (issue 13)
        tia = t["tia_MBq_h"]
        ref, bounds[name] = _reference_Gy(name, t, tia)
        ratios[name] = round(s.mean_dose_Gy / ref, 3)
    assert len(ratios) == 14
    for name, r in ratios.items():
        assert abs(r - 1.0) <= bounds[name], (cycle, name, r, ratios)


def test_reported_masses_are_the_calibrated_ct_masses(demo_run) -> None:
    """The mass reported per structure (results, SR, FHIR; the organ S-value and the twin's per-gram priors use it) is
    the segmentation x the CT's calibrated density, checked against the generator's label masses (measured:
    structures of 10 mL or more -1.6 to +2.3 %; the 2 mL lacrimal glands +4.7 % and the lesions -5.5 to +1.4 %, as
    the CT blur mixes a small structure's rim with the tissue around it). It was the kinetics stage's 1 + HU/1000
    line before: red marrow (spongiosa, 250 HU) +7.6 %, body -2.5 %."""
    from theratwin.dosimetry import organ_self_s_value

    for cycle in (1, 2):
        truth = _truth_structures(demo_run.truth, cycle)
        for name, t in truth.items():
            s = demo_run.results.cycles[cycle].structures[name]
            rel = 0.03 if t["volume_mL"] >= 10.0 else 0.07
            assert s.mass_g == pytest.approx(t["mass_g"], rel=rel), (cycle, name, s.mass_g, t["mass_g"])
        marrow = demo_run.results.cycles[cycle].structures["red_marrow"]
        assert marrow.organ_s_value_dose_Gy == pytest.approx(
            marrow.tia_MBq_h * 3600.0 * organ_self_s_value("Lu-177", marrow.mass_g) / 1000.0, rel=1e-9)


def test_small_structures_are_flagged_and_keep_their_dose_as_imaged(demo_run) -> None:
    """Below (2 x 11 mm)^3 = 10.6 mL per part: every lesion and the submandibular and lacrimal glands (6.5 and
    1 mL per gland) are flagged; the kidneys, liver and parotids are not; the as-imaged value is kept."""
    for cycle in (1, 2):
        structures = demo_run.results.cycles[cycle].structures
        for name, s in structures.items():
            expect = name.startswith("lesion_") or name in ("submandibular_glands", "lacrimal_glands")
            assert s.partial_volume["too_small"] == expect, (cycle, name, s.partial_volume)
            assert s.mean_dose_as_imaged_Gy is not None
    warned = {w.structure for w in demo_run.results.warnings if "treat them with caution" in w.message}
    assert {"lacrimal_glands", "lesion_bone_3"} <= warned


def test_reported_tia_is_compared_with_what_the_voxel_tia_map_holds(demo_run) -> None:
    """The dosimetry stage reads each structure's TIA off the voxel TIA map (geometric transfer matrix) and warns
    when the reported TIA differs by more than 10 %. Measured against the true TIA: structures above (2 x FWHM)^3
    within 4 % in both cycles, the flagged ones (1-10 mL per part) within 10 % (lacrimal glands, 1 mL per gland,
    -10 % in cycle 1; lesion_bone_2, 3 mL, -8 % in cycle 2); a warning exactly where reported and map differ."""
    for cycle in (1, 2):
        truth = _truth_structures(demo_run.truth, cycle)
        for name, s in demo_run.results.cycles[cycle].structures.items():
            if name in NOT_MEASURABLE or name == "body":
                continue
            got = s.partial_volume["tia_from_voxel_map_MBq_h"] / truth[name]["tia_MBq_h"]
            bound = 0.12 if s.partial_volume["too_small"] else 0.06
            assert got == pytest.approx(1.0, abs=bound), (cycle, name, got)
    warned = {(w.cycle, w.structure) for w in demo_run.results.warnings if "voxels' TIA map holds" in w.message}
    differing = {(cycle, name) for cycle in (1, 2) for name, s in demo_run.results.cycles[cycle].structures.items()
                 if s.partial_volume and s.partial_volume.get("tia_from_voxel_map_MBq_h")
                 and abs(s.tia_MBq_h / s.partial_volume["tia_from_voxel_map_MBq_h"] - 1) > 0.10}
    # a warning exactly where the two differ by more than 10 %; with the prior-informed single-time-point kinetics
    # (issue 13) cycle 2's red marrow and bone lesions agree with their voxels (they differed by up to 22 % before)
    assert warned == differing
    assert not {(2, "red_marrow"), (2, "lesion_bone_1")} & warned
