"""DICOM writing: RT Dose, SEG and TID 1500 SR read back by independent readers (pydicom, plastimatch,
highdicom, SimpleITK) with the values and geometry that went in."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_synth import make_results, make_study

import theratwin as tt
from theratwin.dicom.export import export_dicom
from theratwin.dicom.exportcontext import ExportContext
from theratwin.dicom.rtdose import DoseKind, DoseMapSpec, build_rtdose, dose_grid_scaling, rtdose_to_image
from theratwin.dicom.sr import TTWN, TTWN_CODES, read_sr_measurements
from theratwin.errors import InvalidInputError
from theratwin.pipeline.core import PipelineConfig, PipelineContext


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("export")
    study = make_study(out / "input", n_cycles=2)
    results = make_results(study)
    rep = export_dicom(results, out)
    return out, study, results, rep


def _pydicom_dose(ds: pydicom.Dataset) -> tuple[np.ndarray, np.ndarray, tuple[float, float], np.ndarray]:
    """Dose (Gy), IPP, (row, column) spacing and frame offsets straight from the pydicom dataset."""
    dose = ds.pixel_array.astype(np.float64) * float(ds.DoseGridScaling)
    return (dose, np.array([float(v) for v in ds.ImagePositionPatient]),
            (float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1])),
            np.array([float(v) for v in ds.GridFrameOffsetVector]))


def test_every_dose_map_becomes_one_rtdose(exported) -> None:
    out, study, results, rep = exported
    keys = {"cycle1/dose", "cycle1/bed", "cycle2/dose", "cycle2/bed", "cumulative/dose", "cumulative/bed"}
    assert len(rep.rtdose) == len(keys)
    seen = set()
    for rel in rep.rtdose:
        ds = pydicom.dcmread(out / rel)
        assert ds.SOPClassUID == pydicom.uid.RTDoseStorage and ds.Modality == "RTDOSE"
        assert ds.DoseUnits == "GY" and ds.BitsAllocated == 16 and ds.PixelRepresentation == 0
        assert "research use" in ds.SeriesDescription.lower()
        # the results belong to the reference CT's study and frame of reference
        assert ds.StudyInstanceUID == study.reference_ct_source.study_uid
        assert ds.FrameOfReferenceUID == study.reference_ct_source.frame_of_reference_uid
        assert ds.PatientID == study.patient.patient_id and ds.AccessionNumber == "ACC001"
        key = Path(rel).stem.removeprefix("rtdose_").replace("_", "/")
        seen.add(key)
        bed = key.endswith("bed")
        assert ds.DoseType == ("EFFECTIVE" if bed else "PHYSICAL")
        assert ("BED" in ds.SeriesDescription) == bed
        assert ds.DoseSummationType == ("MULTI_CYCLE" if key.startswith("cumulative") else "CYCLE")
        assert "ReferencedRTPlanSequence" not in ds
    assert seen == keys


def test_rtdose_pydicom_round_trip_within_scaling(exported) -> None:
    out, study, results, rep = exported
    for rel in rep.rtdose:
        ds = pydicom.dcmread(out / rel)
        key = Path(rel).stem.removeprefix("rtdose_").replace("_", "/")
        src = results.maps[key]
        dose, ipp, (row_sp, col_sp), offsets = _pydicom_dose(ds)
        scaling = float(ds.DoseGridScaling)
        assert dose.shape == src.array.shape
        assert np.max(np.abs(dose - src.array)) <= scaling / 2 * (1 + 1e-6)
        assert scaling <= src.array.max() / 65535 * (1 + 1e-6)  # the full 16-bit range is used
        np.testing.assert_allclose(ipp, src.origin_mm, atol=1e-6)
        assert (col_sp, row_sp) == pytest.approx(src.spacing_mm[:2])
        np.testing.assert_allclose(offsets, np.arange(src.shape[0]) * src.spacing_mm[2], atol=1e-6)
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("plastimatch") is None, reason="plastimatch not installed")
def test_rtdose_read_by_plastimatch(exported, tmp_path: Path) -> None:
    out, study, results, rep = exported
    for rel in rep.rtdose[:2] + rep.rtdose[-1:]:
        ds = pydicom.dcmread(out / rel)
        key = Path(rel).stem.removeprefix("rtdose_").replace("_", "/")
        src = results.maps[key]
        nrrd = tmp_path / f"{Path(rel).stem}.nrrd"
        proc = subprocess.run(["plastimatch", "convert", "--input", str(out / rel), "--output-dose-img", str(nrrd)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        img = sitk.ReadImage(str(nrrd))
        arr = sitk.GetArrayFromImage(img)
        assert arr.shape == src.array.shape
        np.testing.assert_allclose(img.GetOrigin(), src.origin_mm, atol=1e-3)
        np.testing.assert_allclose(img.GetSpacing(), src.spacing_mm, atol=1e-4)
        np.testing.assert_allclose(np.reshape(img.GetDirection(), (3, 3)), np.eye(3), atol=1e-6)
        # plastimatch stores float32: allow its rounding on top of the DoseGridScaling quantisation
        tol = float(ds.DoseGridScaling) / 2 + 1e-6 * src.array.max()
        assert np.max(np.abs(arr - src.array)) <= tol


def _spec(geometry: tt.Geometry, seed: int = 3) -> DoseMapSpec:
    rng = np.random.default_rng(seed)
    arr = (rng.random(geometry.shape) * 12.5).astype(np.float32)
    return DoseMapSpec("cycle1/dose", tt.ImageVolume.from_geometry(arr, geometry, "Gy"), DoseKind.CYCLE_DOSE, 1)


def _ctx(tmp_path: Path) -> ExportContext:
    return ExportContext.for_study(make_study(tmp_path / "in", n_cycles=1))


@pytest.mark.parametrize("direction", [
    np.eye(3),
    np.diag([1.0, 1.0, -1.0]),  # slices stored head-to-feet: must be written in increasing-offset order
    np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),  # sagittal-like frames
    np.array([[np.cos(0.3), -np.sin(0.3), 0], [np.sin(0.3), np.cos(0.3), 0], [0, 0, 1.0]]),  # oblique in-plane
])
def test_rtdose_geometry_round_trip_against_simpleitk(tmp_path: Path, direction: np.ndarray) -> None:
    geo = tt.Geometry((5, 7, 9), (2.0, 3.0, 4.0), (10.0, -20.0, 30.0), direction)
    spec = _spec(geo)
    ds = build_rtdose(spec, _ctx(tmp_path), series_number=9001)
    back = rtdose_to_image(ds)
    # compare physical positions of every voxel centre through SimpleITK, independent of index order
    src = spec.image.to_sitk()
    got = back.to_sitk()
    idx = np.array(np.unravel_index(np.arange(np.prod(geo.shape)), geo.shape)).T[:, ::-1]  # (x, y, z)
    pts = [src.TransformIndexToPhysicalPoint([int(i) for i in ijk]) for ijk in idx]
    for p, ijk in zip(pts[::17], idx[::17], strict=True):
        j = got.TransformPhysicalPointToIndex(p)
        assert abs(got.GetPixel(j) - src.GetPixel([int(v) for v in ijk])) <= float(ds.DoseGridScaling) / 2 + 1e-9


def test_dose_grid_scaling_convention() -> None:
    for vmax in (1e-3, 0.9, 7.123456789, 250.0, 1e4):
        s = dose_grid_scaling(vmax)
        assert vmax / s <= 65535
        assert vmax / s > 65535 * (1 - 1e-6)  # as fine as 16 bits allow
        assert len(f"{s:.8g}") <= 16 and float(f"{s:.8g}") == s  # exact as a DS string


def test_rtdose_refuses_bad_maps(tmp_path: Path) -> None:
    geo = tt.Geometry((3, 4, 5), (2.0, 2.0, 2.0))
    ctx = _ctx(tmp_path)
    bad = np.ones(geo.shape, np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        build_rtdose(DoseMapSpec("cycle1/dose", tt.ImageVolume.from_geometry(bad, geo, "Gy"), DoseKind.CYCLE_DOSE, 1),
                     ctx, series_number=1)
    neg = -np.ones(geo.shape, np.float32)
    with pytest.raises(InvalidInputError, match="negative"):
        build_rtdose(DoseMapSpec("cycle1/dose", tt.ImageVolume.from_geometry(neg, geo, "Gy"), DoseKind.CYCLE_DOSE, 1),
                     ctx, series_number=1)
    with pytest.raises(InvalidInputError, match="Gy"):
        build_rtdose(DoseMapSpec("cycle1/tia", tt.ImageVolume.from_geometry(bad * 0 + 1, geo, "Bq.h/mL"),
                                 DoseKind.CYCLE_DOSE, 1), ctx, series_number=1)


def test_rtdose_derivation_fits_its_vr_in_bytes(tmp_path: Path) -> None:
    """DerivationDescription (ST, 1024 bytes in the declared UTF-8): a long method text with non-ASCII letters is
    cut to 1024 bytes on a character boundary, not to 1024 characters."""
    geo = tt.Geometry((3, 4, 5), (2.0, 2.0, 2.0))
    spec = DoseMapSpec("cycle1/dose", tt.ImageVolume.from_geometry(np.ones(geo.shape, np.float32), geo, "Gy"),
                       DoseKind.CYCLE_DOSE, 1)
    ds = build_rtdose(spec, _ctx(tmp_path), series_number=1, derivation="Hänscheid " * 200)
    raw = ds.DerivationDescription.encode("utf-8")
    assert 1020 <= len(raw) <= 1024 and ds.DerivationDescription.startswith("Hänscheid")


def test_seg_round_trip_with_highdicom(exported) -> None:
    out, study, results, rep = exported
    seg = hd.seg.segread(out / rep.seg[0])
    used = ["kidneys", "lesion_bone_1"]  # "liver" has no results: it must not be in the SEG
    assert [seg.get_segment_description(i).SegmentLabel for i in (1, 2)] == used
    assert seg.number_of_segments == 2
    for i, name in enumerate(used, start=1):
        d = seg.get_segment_description(i)
        kind = study.segmentation.structure(name).kind
        t = d.SegmentedPropertyTypeCodeSequence[0]
        assert (t.CodeValue, t.CodingSchemeDesignator) == (kind.type.value, "SCT")
    ct_uids = list(study.reference_ct_source.sop_instance_uids)
    pix = seg.get_pixels_by_source_instance(source_sop_instance_uids=ct_uids, segment_numbers=[1, 2],
                                            ignore_spatial_locations=False)
    for i, name in enumerate(used):
        np.testing.assert_array_equal(pix[..., i].astype(bool), study.segmentation.masks[name])
    assert seg.StudyInstanceUID == study.reference_ct_source.study_uid
    assert seg.FrameOfReferenceUID == study.reference_ct_source.frame_of_reference_uid


def test_seg_carries_each_structure_colour(exported) -> None:
    """RecommendedDisplayCIELabValue (0062,000D) of every segment is the structure's colour: read back as sRGB by
    highdicom's own conversion, to within one step of 8-bit rounding."""
    out, study, results, rep = exported
    seg = hd.seg.segread(out / rep.seg[0])
    for i, name in enumerate(["kidneys", "lesion_bone_1"], start=1):
        value = seg.get_segment_description(i).RecommendedDisplayCIELabValue
        rgb = hd.color.CIELabColor.from_dicom_value([int(v) for v in value]).to_rgb()
        assert np.max(np.abs(np.subtract(rgb, study.segmentation.structure(name).color_rgb))) <= 1, name


@pytest.mark.parametrize(("rgb", "lab"), [
    # sRGB (D65) -> CIE L*a*b*, published values (Lindbloom's calculator; also the CSS Color 4 sample values)
    ((255, 0, 0), (53.24, 80.09, 67.20)),
    ((0, 0, 255), (32.30, 79.19, -107.86)),
    ((255, 255, 255), (100.0, 0.0, 0.0)),
    ((128, 128, 128), (53.59, 0.0, 0.0)),
])
def test_display_colour_is_scaled_cielab(rgb, lab) -> None:
    """The stored value is L* scaled 0..100 -> 0..0xFFFF and a*, b* -128..127 -> 0..0xFFFF (PS3.3 C.10.7.1.1),
    checked against published L*a*b* of sRGB colours rather than against highdicom's own conversion."""
    from theratwin.dicom.seg import display_color, rgb_from_display_color

    stored = np.array(display_color(rgb).value, dtype=float)
    expected = np.array([lab[0] * 0xFFFF / 100.0, (lab[1] + 128.0) * 0xFFFF / 255.0,
                         (lab[2] + 128.0) * 0xFFFF / 255.0])
    # 0.1 L*a*b* unit of tolerance: the published values are rounded to 0.01 and the white point to 4 digits
    assert np.all(np.abs(stored - expected) <= np.array([0xFFFF / 1000.0, 0xFFFF / 2550.0, 0xFFFF / 2550.0])), stored
    assert rgb_from_display_color(display_color(rgb).value) == rgb


# (code value, scheme) -> StructureResult attribute or dvh_metrics key; written out here, not taken from sr.py
EXPECTED_FIELDS = {
    ("118565006", "SCT"): "volume_mL",
    ("118538004", "SCT"): "mass_g",
    ("TTW0001", TTWN): "tia_MBq_h",
    ("TTW0002", TTWN): "residence_time_h",
    ("TTW0003", TTWN): "effective_half_life_h",
    ("128533", "DCM"): "mean_dose_Gy",
    ("128531", "DCM"): "dvh:Dmax_Gy",
    ("128532", "DCM"): "dvh:Dmin_Gy",
    ("128539", "DCM"): "dvh:D50_Gy",
    ("TTW0006", TTWN): "dvh:D2_Gy",
    ("TTW0007", TTWN): "dvh:D98_Gy",
    ("TTW0004", TTWN): "bed_Gy",
    ("TTW0005", TTWN): "eqd2_Gy",
    ("TTW0008", TTWN): "cumulative_dose_Gy",
    ("TTW0009", TTWN): "cumulative_bed_Gy",
    ("TTW0010", TTWN): "cumulative_eqd2_Gy",
    ("TTW0011", TTWN): "alpha_beta_Gy",
    ("130091", "DCM"): "repair_half_time_h",
    ("TTW0012", TTWN): "dose_per_activity_Gy_per_GBq",
    ("TTW0016", TTWN): "mean_dose_as_imaged_Gy",
}


def test_sr_read_back_with_highdicom_has_every_measurement(exported) -> None:
    out, study, results, rep = exported
    # one SR document per cycle and one for the predictions, in one series
    assert rep.sr == ["dicom/sr_cycle1.dcm", "dicom/sr_cycle2.dcm", "dicom/sr_predicted.dcm"]
    docs = [hd.sr.srread(out / f) for f in rep.sr]
    assert len({d.SeriesInstanceUID for d in docs}) == 1 and [int(d.InstanceNumber) for d in docs] == [1, 2, 3]
    groups = [g for d in docs for g in d.content.get_volumetric_roi_measurement_groups()]
    by_label = {str(g.tracking_identifier): g for g in groups}
    assert len(by_label) == len(groups)  # every group once
    seg = pydicom.dcmread(out / rep.seg[0])
    seg_numbers = {"kidneys": 1, "lesion_bone_1": 2}
    for n, cyc in results.cycles.items():
        for name, s in cyc.structures.items():
            g = by_label[f"{name} cycle {n}"]
            ref = g.referenced_segment
            assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID
            assert ref.referenced_segment_numbers == [seg_numbers[name]]
            values = {(m.name.value, m.name.scheme_designator): (float(m.value), m.unit.value)
                      for m in g.get_measurements()}
            for code, attr in EXPECTED_FIELDS.items():
                want = s.dvh_metrics[attr[4:]] if attr.startswith("dvh:") else getattr(s, attr)
                assert values[code][0] == pytest.approx(want, rel=1e-9), (name, n, attr)
            assert values[("113507", "DCM")] == (pytest.approx(cyc.administered_MBq), "MBq")
            assert values[("128533", "DCM")][1] == "Gy" and values[("TTW0001", TTWN)][1] == "MBq.h"
            assert values[("118565006", "SCT")][1] == "ml"
            assert values[("TTW0311", TTWN)][0] == pytest.approx(s.tia_sd_MBq_h)
            # a structure below the resolution limit carries the qualitative evaluation "Below resolution limit"
            evals = {(e.name.value, e.value.value) for e in g.get_qualitative_evaluations()}
            assert (("TTW0017", "373066001") in evals) == bool(s.partial_volume["too_small"]), (name, n)
    # predictions: separate groups, every measurement marked with the "predicted" method
    pred = [g for g in groups if str(g.tracking_identifier).endswith("predicted")]
    assert {str(g.tracking_identifier) for g in pred} == {"kidneys cycle 3 predicted", "lesion_bone_1 cycle 3 predicted"}
    kid = next(g for g in pred if str(g.tracking_identifier).startswith("kidneys"))
    ms = kid.get_measurements()
    assert all(m.method is not None and m.method.value == TTWN_CODES["predicted"][0] for m in ms)
    vals = {m.name.value: float(m.value) for m in ms}
    assert vals["128533"] == pytest.approx(3.4) and vals["TTW0325"] == pytest.approx(2.8)
    assert vals["TTW0329"] == pytest.approx(4.1) and vals["TTW0001"] == pytest.approx(16000.0)
    # the observed groups are never marked as predicted
    for g in groups:
        if not str(g.tracking_identifier).endswith("predicted"):
            assert all(m.method is None or m.method.value != TTWN_CODES["predicted"][0] for m in g.get_measurements())
    # TheraTwin's own reader sees the same
    mine = [m for f in rep.sr for m in read_sr_measurements(pydicom.dcmread(out / f))]
    assert sum(m.predicted for m in mine) == 4 and len({m.group for m in mine}) == 8
    # twin estimates of a sparsely imaged cycle: their own group, marked as estimated by the twin
    est_code = TTWN_CODES["twin_estimate"][0]
    est = by_label["kidneys cycle 2 twin estimate"]
    ev = {m.name.value: (float(m.value), m.method.value) for m in est.get_measurements()}
    want = results.cycles[2].structures["kidneys"].estimated_by_twin
    assert ev["TTW0001"] == (pytest.approx(want["tia_MBq_h"]), est_code)
    assert ev["TTW0311"][0] == pytest.approx(want["sd"]) and ev["TTW0315"][0] == pytest.approx(want["low"])
    assert ev["TTW0319"][0] == pytest.approx(want["high"])
    # cycle 2's own TIA came from the twin (tia_method "twin"): marked too; cycle 1's fitted TIA is not
    for n, marked in ((1, False), (2, True)):
        tia = next(m for m in by_label[f"kidneys cycle {n}"].get_measurements() if m.name.value == "TTW0001")
        assert (tia.method is not None and tia.method.value == est_code) == marked


def test_sr_declares_private_scheme_and_method(exported) -> None:
    out, study, results, rep = exported
    texts: list[str] = []

    def walk(d: pydicom.Dataset) -> None:
        for item in d.get("ContentSequence", []):
            if "TextValue" in item:
                texts.append(str(item.TextValue))
            walk(item)

    for f in rep.sr:
        ds = pydicom.dcmread(out / f)
        schemes = {i.CodingSchemeDesignator: i for i in ds.CodingSchemeIdentificationSequence}
        assert schemes[TTWN].CodingSchemeName == "TheraTwin private codes"
        assert ds.SoftwareVersions == tt.__version__
        walk(ds)
    for m in results.methods:  # every method recorded in results.methods is named in the SR
        assert any(m.method.split(";")[0][:160] in t for t in texts), m.method
    assert "TheraTwin kinetics" in texts and tt.__version__ in texts  # Algorithm Name / Version


def test_reexport_makes_new_uids_and_series_numbers(exported, tmp_path: Path) -> None:
    out, study, results, rep = exported
    work = tmp_path / "out"
    shutil.copytree(out / "dicom", work / "dicom")
    first = {pydicom.dcmread(p).SOPInstanceUID: int(pydicom.dcmread(p).SeriesNumber)
             for p in (work / "dicom").glob("*.dcm")}
    rep2 = export_dicom(results, work)
    heads = [pydicom.dcmread(work / r, stop_before_pixels=True) for r in rep2.all_files]
    second = {h.SOPInstanceUID: int(h.SeriesNumber) for h in heads}
    assert not set(first) & set(second)
    assert not set(first.values()) & set(second.values())
    assert min(second.values()) > max(first.values())
    series = {h.SeriesInstanceUID: int(h.SeriesNumber) for h in heads}
    assert len(set(series.values())) == len(series)  # one number per series within an export


def test_stage_records_outputs_and_keeps_other_dicom(tmp_path: Path) -> None:
    study = make_study(tmp_path / "in", n_cycles=1)
    results = make_results(study)
    (tmp_path / "out" / "dicom").mkdir(parents=True)
    # a DICOM object an earlier stage placed there (the report's Encapsulated PDF in a real run)
    shutil.copy(study.reference_ct_source.files[0], tmp_path / "out" / "dicom" / "report_pdf.dcm")
    from theratwin.dicom.stage import DicomExportStage

    ctx = PipelineContext(study, results, PipelineConfig(stages=("dicom_export",)), tmp_path / "out")
    DicomExportStage().run(ctx)
    files = results.outputs["dicom"]
    assert "dicom/report_pdf.dcm" in files
    assert {"dicom/rtdose_cycle1_dose.dcm", "dicom/seg_structures.dcm", "dicom/sr_cycle1.dcm"} <= set(files)
    assert all((tmp_path / "out" / f).is_file() for f in files)
    assert any(m.stage == "dicom_export" for m in results.methods)


def test_without_ct_files_seg_and_sr_are_skipped_with_a_warning(small_study: tt.Study, tmp_path: Path) -> None:
    res = tt.Results.for_study(small_study)
    res.cycles[1].structure("kidneys").mean_dose_Gy = 2.0
    g = small_study.cycles[0].time_points[0].image.geometry
    res.maps["cycle1/dose"] = tt.ImageVolume.from_geometry(np.full(g.shape, 2.0, np.float32), g, "Gy")
    rep = export_dicom(res, tmp_path)
    assert rep.rtdose == ["dicom/rtdose_cycle1_dose.dcm"] and not rep.seg and not rep.sr
    assert any("no SEG" in w for w in rep.warnings)
    ds = pydicom.dcmread(tmp_path / rep.rtdose[0])
    assert ds.PatientID == small_study.patient.patient_id
    assert float(ds.DoseGridScaling) * ds.pixel_array.max() == pytest.approx(2.0, abs=float(ds.DoseGridScaling))


def test_ct_files_that_do_not_match_the_reference_ct_skip_seg_with_a_warning(tmp_path: Path) -> None:
    study = make_study(tmp_path / "in", n_cycles=1)
    results = make_results(study)
    # one CT slice missing: a SEG could not reference every slice it covers
    study.reference_ct_source = type(study.reference_ct_source)(
        **{**study.reference_ct_source.__dict__, "files": study.reference_ct_source.files[1:]})
    rep = export_dicom(results, tmp_path / "out")
    assert len(rep.rtdose) == 4 and not rep.seg and not rep.sr
    assert any("slices" in w and "SEG" in w for w in rep.warnings)


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("plastimatch") is None, reason="plastimatch not installed")
def test_plastimatch_reads_a_map_stored_head_to_feet(tmp_path: Path) -> None:
    """A map whose slice axis points to the feet is stored in increasing-offset order: plastimatch, which
    stacks frames in file order, must put every value at the same patient position."""
    geo = tt.Geometry((5, 6, 7), (3.0, 2.5, 4.0), (10.0, -20.0, 30.0), np.diag([1.0, 1.0, -1.0]))
    spec = _spec(geo, seed=11)
    ds = build_rtdose(spec, _ctx(tmp_path), series_number=9001)
    ds.save_as(tmp_path / "flip.dcm", enforce_file_format=True)
    nrrd = tmp_path / "flip.nrrd"
    proc = subprocess.run(["plastimatch", "convert", "--input", str(tmp_path / "flip.dcm"), "--output-dose-img",
                           str(nrrd)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    img = sitk.ReadImage(str(nrrd))
    src = spec.image.to_sitk()
    tol = float(ds.DoseGridScaling) / 2 + 1e-5
    for ijk in np.ndindex(*geo.shape[::-1]):  # (x, y, z) indices of the source map
        p = src.TransformIndexToPhysicalPoint([int(v) for v in ijk])
        j = img.TransformPhysicalPointToIndex(p)
        assert abs(img.GetPixel(j) - src.GetPixel([int(v) for v in ijk])) <= tol
