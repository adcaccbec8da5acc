"""The built-in demo patient: kinetics, anatomy, imaging physics, truth, DICOM validity, determinism, cache."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import integrate, ndimage

from theratwin import nuclides
from theratwin.demo import CYCLE1_KINETICS, DEMO_SCHEMA_VERSION, DemoOptions, build_demo, simulate
from theratwin.demo.build import SENSITIVITY_CPS_PER_MBQ, generator_fingerprint
from theratwin.demo.phantom import TISSUES

SEED = 7


@pytest.fixture(scope="module")
def sim_static():
    """Fast grid, no noise, no blur, no motion: the generator's exact arrays."""
    return simulate(SEED, DemoOptions(fast=True, noise=False, blur=False, misalign=False))


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "demo-cache"


class TestKinetics:
    def test_analytic_tia_matches_numerical_integral(self) -> None:
        for name, kin in CYCLE1_KINETICS.items():
            numeric, _ = integrate.quad(lambda t, k=kin: float(k.activity_MBq(t, 7400.0)), 0, np.inf, limit=500)
            assert kin.tia_MBq_h(7400.0) == pytest.approx(numeric, rel=1e-6), name

    def test_curves_start_at_zero_and_are_positive(self) -> None:
        t = np.linspace(0, 2000, 400)
        for name, kin in CYCLE1_KINETICS.items():
            a = kin.activity_MBq(t, 7400.0)
            assert a[0] == 0.0, name
            assert np.all(a[1:] > 0), name

    def test_effective_half_lives_shorter_than_physical(self) -> None:
        t_phys = nuclides.get("Lu-177").half_life_h
        for kin in CYCLE1_KINETICS.values():
            assert all(0 < c.effective_half_life_h < t_phys for c in kin.components)

    def test_total_uptake_is_a_fraction_of_the_administered_activity(self) -> None:
        # sum of all compartments at any time can never exceed the administered activity
        t = np.linspace(0, 400, 801)
        total = sum(k.activity_MBq(t, 1.0) for k in CYCLE1_KINETICS.values())
        assert total.max() < 1.0


class TestAnatomy:
    def test_structure_volumes_match_analytic_shapes(self, sim_static) -> None:
        truth = sim_static.truth["cycles"][0]["structures"]
        # spheres and ellipsoids painted after everything else they could overlap: 4/3 pi abc
        def ell(r):
            return 4.0 / 3.0 * math.pi * r[0] * r[1] * r[2] / 1000.0

        kid = next(t for t in TISSUES if t.name == "kidneys")
        assert truth["kidneys"]["volume_mL"] == pytest.approx(sum(ell(s.radii) for s in kid.shapes), rel=0.03)
        node = next(t for t in TISSUES if t.name == "lesion_node_3")
        assert truth["lesion_node_3"]["volume_mL"] == pytest.approx(ell(node.shapes[0].radii), rel=0.08)
        assert truth["liver"]["mass_g"] == pytest.approx(truth["liver"]["volume_mL"] * 1.06, rel=1e-6)

    def test_at_least_four_lesions_of_both_kinds_and_sizes(self, sim_static) -> None:
        s = sim_static.truth["cycles"][0]["structures"]
        bone = [k for k in s if k.startswith("lesion_bone")]
        node = [k for k in s if k.startswith("lesion_node")]
        assert len(bone) >= 2 and len(node) >= 2 and len(bone) + len(node) >= 4
        vols = sorted(s[k]["volume_mL"] for k in bone + node)
        assert vols[-1] > 4 * vols[0]

    def test_ct_numbers(self, sim_static) -> None:
        ct = sim_static.cycles[0].time_points[0].ct_hu
        masks = sim_static.seg_masks
        assert np.median(ct[masks["liver"]]) == 55
        assert np.median(ct[masks["red_marrow"]]) == 250
        assert np.median(ct[~masks["body"]]) == -1000
        assert set(np.unique(ct)) >= {-800, -100, 40, 700}


class TestImaging:
    def test_activity_in_the_image_equals_the_kinetics(self, sim_static) -> None:
        cyc = sim_static.cycles[0]
        v_mL = sim_static.spect_geometry.voxel_volume_mL
        for tp in cyc.time_points:
            t_h = (tp.acquisition_start - cyc.administration_start).total_seconds() / 3600
            expected_MBq = sum(k.activity_MBq(t_h, 7400.0) for k in cyc.kinetics.values())
            assert tp.spect_Bq_per_mL.sum() * v_mL / 1e6 == pytest.approx(expected_MBq, rel=1e-4)

    def test_blur_conserves_activity_and_widens(self) -> None:
        sharp = simulate(SEED, DemoOptions(fast=True, noise=False, blur=False, misalign=False))
        blurred = simulate(SEED, DemoOptions(fast=True, noise=False, blur=True, misalign=False))
        a = sharp.cycles[0].time_points[1].spect_Bq_per_mL
        b = blurred.cycles[0].time_points[1].spect_Bq_per_mL
        assert b.sum() == pytest.approx(a.sum(), rel=0.01)
        assert b.max() < a.max()

    def test_poisson_noise_level(self) -> None:
        noisy = simulate(SEED, DemoOptions(fast=True, noise=True, blur=False, misalign=False))
        tp = noisy.cycles[0].time_points[1]
        liver = noisy.seg_masks["liver"]  # CT grid (4.8 mm) -> pick fully covered SPECT voxels (9.6 mm)
        z, y, x = liver.shape
        full = liver[: z // 2 * 2, :, :]
        # SPECT voxels whose 2x2x2 fine voxels lie in the CT crop and all in the liver
        off = (2 * noisy.spect_geometry.shape[2] - x) // 2
        blocks = full.reshape(z // 2, 2, y // 2, 2, x // 2, 2).all(axis=(1, 3, 5))
        sel = np.zeros(noisy.spect_geometry.shape, bool)
        sel[:, off // 2: off // 2 + y // 2, off // 2: off // 2 + x // 2] = blocks
        mean_true = tp.spect_noiseless_Bq_per_mL[sel]
        assert np.ptp(mean_true) < 1e-3 * mean_true.mean()  # uniform liver, no blur
        lam = math.log(2) / (nuclides.get("Lu-177").half_life_h * 3600)
        k = noisy.spect_geometry.voxel_volume_mL * 1e-6 * SENSITIVITY_CPS_PER_MBQ * \
            (1 - math.exp(-lam * tp.acquisition_duration_s)) / lam
        expected_cv = 1.0 / math.sqrt(mean_true.mean() * k)
        vals = tp.spect_Bq_per_mL[sel]
        assert vals.mean() == pytest.approx(mean_true.mean(), rel=4 * expected_cv / math.sqrt(vals.size))
        assert vals.std() / vals.mean() == pytest.approx(expected_cv, rel=0.15)

    def test_misalignment_moves_anatomy_rigidly(self) -> None:
        sim = simulate(SEED, DemoOptions(fast=True, noise=False, blur=False, misalign=True))
        ref = sim.cycles[0].time_points[0]
        assert np.allclose(ref.rotation, np.eye(3)) and not np.any(ref.translation_mm)
        geo = sim.ct_geometry

        def centroid(ct: np.ndarray) -> np.ndarray:
            lab, n = ndimage.label(ct == 600)  # sclerotic bone lesions only; take the largest one
            sizes = ndimage.sum(np.ones_like(lab), lab, index=range(1, n + 1))
            z, y, x = np.argwhere(lab == 1 + int(np.argmax(sizes))).mean(axis=0)
            return geo.index_to_lps(np.array([x, y, z]))

        c0 = centroid(ref.ct_hu)
        moved = 0
        for tp in sim.cycles[0].time_points[1:] + sim.cycles[1].time_points:
            expected = tp.rotation @ c0 + tp.translation_mm
            assert np.linalg.norm(centroid(tp.ct_hu) - expected) < 1.5  # mm, at 4.8 mm voxels
            shift = np.linalg.norm(expected - c0)
            assert shift < 25.0
            moved += shift > 1.0
        assert moved >= 3


class TestTruth:
    def test_kidney_dose_in_published_range(self, sim_static) -> None:
        for cyc in sim_static.truth["cycles"]:
            assert 0.4 <= cyc["structures"]["kidneys"]["mean_dose_Gy_per_GBq"] <= 0.8

    def test_tia_matches_trapezoid_of_activity(self, sim_static) -> None:
        cyc = sim_static.cycles[0]
        t = np.concatenate([np.linspace(0, 10, 2001), np.linspace(10, 5000, 20001)[1:]])
        total = sum(k.activity_MBq(t, 7400.0) for k in cyc.kinetics.values())
        tia = sum(s["tia_MBq_h"] for n, s in sim_static.truth["cycles"][0]["structures"].items()
                  if n != "body") + 0.0
        body = sim_static.truth["cycles"][0]["structures"]["body"]["tia_MBq_h"]
        # body contains every compartment (background + organs + lesions)
        assert body == pytest.approx(integrate.trapezoid(total, t), rel=1e-4)
        assert tia < body

    def test_cycles_differ_a_little(self, sim_static) -> None:
        c1, c2 = (c["structures"] for c in sim_static.truth["cycles"])
        ratios = [c2[n]["tia_MBq_h"] / c1[n]["tia_MBq_h"] for n in c1 if not n.startswith("lesion")]
        assert any(abs(r - 1) > 0.01 for r in ratios)
        assert all(0.75 < r < 1.3 for r in ratios)
        lesions = [c2[n]["tia_MBq_h"] / c1[n]["tia_MBq_h"] for n in c1 if n.startswith("lesion")]
        assert np.mean(lesions) < 0.95  # partial response

    def test_schedule(self, sim_static) -> None:
        tr = sim_static.truth
        c1, c2 = tr["cycles"]
        times = [tp["time_h"] for tp in c1["time_points"]]
        assert [round(t / 24) for t in times[1:]] == [1, 2, 7] and 3 < times[0] < 5
        assert len(c2["time_points"]) == 1 and 40 < c2["time_points"][0]["time_h"] < 60
        assert c1["administered_MBq"] == c2["administered_MBq"] == 7400.0
        gap_d = (np.datetime64(c2["administration_start"]) - np.datetime64(c1["administration_start"])) \
            / np.timedelta64(1, "D")
        assert 40 < gap_d < 44
        assert any(not t.endswith(":00") for t in [tp["acquisition_start"] for tp in c1["time_points"]])


class TestBuild:
    def test_truth_file_and_dicom_layout(self, demo_cache: Path) -> None:
        demo = build_demo(demo_cache, seed=SEED, fast=True, noise=False, blur=False)
        assert json.loads(demo.truth_path.read_text()) == demo.truth
        assert len(list(demo.dicom_dir.rglob("NM_SPECT.dcm"))) == 5
        assert len(list(demo.dicom_dir.rglob("SEG_*.dcm"))) == 1
        assert "mean_dose_Gy" in demo.truth["cycles"][0]["structures"]["kidneys"]

    def test_deterministic_for_a_seed(self, tmp_path: Path, demo_cache: Path) -> None:
        shared = build_demo(demo_cache, seed=SEED, fast=True, noise=False, blur=False)
        again = build_demo(tmp_path, seed=SEED, fast=True, noise=False, blur=False)
        ma = json.loads((shared.dicom_dir.parent / "demo-manifest.json").read_text())["files"]
        mb = json.loads((again.dicom_dir.parent / "demo-manifest.json").read_text())["files"]
        assert ma == mb  # byte-identical files
        # a different seed changes the noise, the schedule and the motion
        s3 = simulate(3, DemoOptions(fast=True))
        s3b = simulate(3, DemoOptions(fast=True))
        s4 = simulate(4, DemoOptions(fast=True))
        a, b, c = (s.cycles[0].time_points[1] for s in (s3, s3b, s4))
        assert np.array_equal(a.spect_Bq_per_mL, b.spect_Bq_per_mL) and np.array_equal(a.ct_hu, b.ct_hu)
        assert not np.array_equal(a.spect_Bq_per_mL, c.spect_Bq_per_mL)
        assert a.acquisition_start != c.acquisition_start
        assert not np.allclose(a.translation_mm, c.translation_mm)

    def test_cache_reused_and_repaired(self, tmp_path: Path) -> None:
        calls: list[str] = []
        a = build_demo(tmp_path, seed=5, fast=True, progress=lambda f, m: calls.append(m))
        assert any("writing" in m for m in calls)
        nm = next(a.dicom_dir.rglob("NM_SPECT.dcm"))
        mtime = nm.stat().st_mtime_ns
        calls.clear()
        b = build_demo(tmp_path, seed=5, fast=True, progress=lambda f, m: calls.append(m))
        assert b.dicom_dir == a.dicom_dir and nm.stat().st_mtime_ns == mtime
        assert calls == ["demo patient found in cache"]
        original = hashlib.sha256(nm.read_bytes()).hexdigest()
        nm.write_bytes(nm.read_bytes()[:-10])  # damage one file: the manifest no longer matches
        c = build_demo(tmp_path, seed=5, fast=True)
        assert c.dicom_dir == a.dicom_dir
        assert hashlib.sha256(nm.read_bytes()).hexdigest() == original

    def test_cache_rebuilt_when_the_generator_code_changes(self, tmp_path: Path) -> None:
        a = build_demo(tmp_path, seed=12, fast=True, noise=False, blur=False, misalign=False)
        manifest_path = a.dicom_dir.parent / "demo-manifest.json"
        manifest = json.loads(manifest_path.read_text())
        assert manifest["generator"] == generator_fingerprint()
        manifest["generator"] = "0" * 64  # as if built by other demo/dosimetry code
        manifest_path.write_text(json.dumps(manifest))
        calls: list[str] = []
        build_demo(tmp_path, seed=12, fast=True, noise=False, blur=False, misalign=False,
                   progress=lambda f, m: calls.append(m))
        assert "demo patient found in cache" not in calls
        assert json.loads(manifest_path.read_text())["generator"] == generator_fingerprint()

    def test_concurrent_builds_publish_one_complete_copy(self, tmp_path: Path) -> None:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda _: build_demo(tmp_path, seed=11, fast=True, noise=False, blur=False,
                                                         misalign=False), range(2)))
        assert results[0].dicom_dir == results[1].dicom_dir
        manifest = json.loads((results[0].dicom_dir.parent / "demo-manifest.json").read_text())["files"]
        for rel, digest in manifest.items():
            assert hashlib.sha256((results[0].dicom_dir.parent / rel).read_bytes()).hexdigest() == digest
        assert [p.name for p in tmp_path.iterdir()] == [results[0].dicom_dir.parent.name]  # no leftovers

    def test_default_cache_location_from_environment(self, demo_cache: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("THERATWIN_CACHE", str(demo_cache))
        d = build_demo(seed=SEED, fast=True, noise=False, blur=False)
        assert d.dicom_dir.parent == demo_cache / f"demo-v{DEMO_SCHEMA_VERSION}-seed{SEED}-fast-nonoise-noblur"


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
def test_dicom_objects_pass_dciodvfy(demo_cache: Path) -> None:
    demo = build_demo(demo_cache, seed=SEED, fast=True, noise=False, blur=False)
    files = [next(demo.dicom_dir.rglob("NM_SPECT.dcm")), next(demo.dicom_dir.rglob("CT_0001.dcm")),
             next(demo.dicom_dir.rglob("SEG_structures.dcm"))]
    for f in files:
        out = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True, timeout=60)
        errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], f"{f.name}: {errors}"


def test_seg_reads_back_with_highdicom(demo_cache: Path, sim_static) -> None:
    """The SEG is checked with an independent reader: highdicom maps it back onto the CT instances."""
    import highdicom as hd

    demo = build_demo(demo_cache, seed=SEED, fast=True, noise=False, blur=False)
    seg = hd.seg.segread(next(demo.dicom_dir.rglob("SEG_structures.dcm")))
    ct_files = sorted(next(demo.dicom_dir.glob("cycle1_tp1*/CT")).glob("*.dcm"))
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in ct_files]
    pixels = seg.get_pixels_by_source_instance(uids, assert_missing_frames_are_empty=True)
    labels = [seg.get_segment_description(n).segment_label for n in seg.get_segment_numbers()]
    assert labels == list(sim_static.seg_masks)
    # sim_static has no motion; the reference time point never moves, so its masks are the same
    for i, name in enumerate(labels):
        assert np.array_equal(pixels[..., i].astype(bool), sim_static.seg_masks[name]), name
    kid = seg.get_segment_description(labels.index("kidneys") + 1)
    assert kid.segmented_property_type.value == "64033007"  # SNOMED CT Kidney
