"""The demo patient's DICOM results (from the shared ``demo_run`` of ``theratwin demo``): valid, complete,
faithful to results, and pushed to a real Orthanc by STOW-RS and by C-STORE."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from servers.orthanc import Orthanc, orthanc_available
from test_dicom_write_validators import PIXELMED_JARS, pixelmed_validate

from theratwin.dicom.sr import TTWN
from theratwin.push import push_dicom_directory

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# (code value, scheme) -> StructureResult attribute or dvh_metrics key (written out here, independent of sr.py)
FIELDS = {
    ("118565006", "SCT"): "volume_mL", ("118538004", "SCT"): "mass_g", ("TTW0001", TTWN): "tia_MBq_h",
    ("TTW0003", TTWN): "effective_half_life_h", ("128533", "DCM"): "mean_dose_Gy",
    ("128531", "DCM"): "dvh:Dmax_Gy", ("TTW0006", TTWN): "dvh:D2_Gy", ("TTW0007", TTWN): "dvh:D98_Gy",
    ("TTW0004", TTWN): "bed_Gy", ("TTW0005", TTWN): "eqd2_Gy", ("TTW0008", TTWN): "cumulative_dose_Gy",
    ("TTW0009", TTWN): "cumulative_bed_Gy",
}


def _files(demo_run, kind: str) -> list[Path]:
    return [demo_run.out_dir / f for f in demo_run.results.outputs.get(kind, [])]


def test_demo_exports_every_map_structure_and_report(demo_run) -> None:
    res = demo_run.results
    maps = {k for k in res.maps if k.endswith(("/dose", "/bed"))}
    assert len(_files(demo_run, "rtdose")) == len(maps) >= 4
    assert len(_files(demo_run, "seg")) == 1
    assert [f.name for f in _files(demo_run, "sr")] == [*(f"sr_cycle{n}.dcm" for n in sorted(res.cycles)), "sr_predicted.dcm"]
    assert all(f.is_file() for f in _files(demo_run, "dicom"))
    seg = hd.seg.segread(_files(demo_run, "seg")[0])
    labels = {seg.get_segment_description(i).SegmentLabel for i in seg.segment_numbers}
    assert labels == set(res.structure_names())


@pytest.mark.skipif(shutil.which("dciodvfy") is None or shutil.which("dsrdump") is None, reason="validators missing")
def test_demo_objects_pass_dciodvfy_and_dsrdump(demo_run) -> None:
    report = demo_run.out_dir / demo_run.results.outputs["report_dicom"]
    for f in [*_files(demo_run, "rtdose"), *_files(demo_run, "seg"), *_files(demo_run, "sr"), report]:
        p = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True, timeout=300)
        errors = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.startswith("Error")]
        assert not errors, f"{f.name}: {errors[:5]}"
    for f in _files(demo_run, "sr"):
        p = subprocess.run(["dsrdump", str(f)], capture_output=True, text=True, timeout=300)
        assert p.returncode == 0 and not [ln for ln in p.stderr.splitlines() if ln.startswith(("E:", "F:"))]


def test_demo_objects_share_patient_study_and_equipment_with_the_report(demo_run) -> None:
    """Every writer (RT Dose, SEG, SR, Encapsulated PDF) files its object under the reference CT's patient and study
    with the same equipment and creation offset; the dose and SEG share the CT's frame of reference; the read
    reference CT is the source, not the writers' own code."""
    res = demo_run.results
    report = demo_run.out_dir / res.outputs["report_dicom"]
    objects = [pydicom.dcmread(f, stop_before_pixels=True)
               for f in [*_files(demo_run, "rtdose"), *_files(demo_run, "seg"), *_files(demo_run, "sr"), report]]
    ct = pydicom.dcmread(res.study.reference_ct_source.files[0], stop_before_pixels=True)
    shared = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
              "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName")
    for ds in objects:
        assert all(ds.get(kw) == ct.get(kw) for kw in shared), ds.SOPClassUID.name
        assert (ds.Manufacturer, ds.SoftwareVersions) == (objects[0].Manufacturer, objects[0].SoftwareVersions)
        assert ds.get("TimezoneOffsetFromUTC") == objects[0].get("TimezoneOffsetFromUTC")
    assert {str(ds.SOPClassUID) for ds in objects} >= {pydicom.uid.RTDoseStorage, pydicom.uid.SegmentationStorage,
                                                       pydicom.uid.EncapsulatedPDFStorage}
    assert len({ds.SOPInstanceUID for ds in objects}) == len(objects)
    frames = {ds.FrameOfReferenceUID for ds in objects if str(ds.SOPClassUID) in (pydicom.uid.RTDoseStorage,
                                                                                   pydicom.uid.SegmentationStorage)}
    assert frames == {ct.FrameOfReferenceUID}
    pdf = objects[-1]
    assert pdf.SeriesInstanceUID not in {ds.SeriesInstanceUID for ds in objects[:-1]} and pdf.SeriesNumber == 9901


@pytest.mark.skipif(not all(p.exists() for p in PIXELMED_JARS) or shutil.which("java") is None,
                    reason="pixelmed / java not installed")
def test_demo_srs_pass_pixelmed_tid1500(demo_run) -> None:
    for f in _files(demo_run, "sr"):  # ~1 min and ~8 GB of Java heap per document
        text = pixelmed_validate(f)
        assert "Found Root Template TID_1500 (MeasurementReport)" in text and "Root Template Validation Complete" in text
        assert not [ln for ln in text.splitlines() if "Error:" in ln], f"{f.name}: {text[-3000:]}"


def test_demo_rtdose_equals_the_maps(demo_run) -> None:
    res = demo_run.results
    for f in _files(demo_run, "rtdose"):
        ds = pydicom.dcmread(f)
        key = f.stem.removeprefix("rtdose_").replace("_", "/")
        src = res.maps[key]
        dose = ds.pixel_array.astype(np.float64) * float(ds.DoseGridScaling)
        assert np.max(np.abs(dose - np.clip(src.array, 0, None))) <= float(ds.DoseGridScaling) / 2 * (1 + 1e-6)
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], src.origin_mm, atol=1e-4)
        assert ds.FrameOfReferenceUID == res.study.reference_ct_source.frame_of_reference_uid


def test_demo_sr_has_every_result(demo_run) -> None:
    res = demo_run.results
    groups = {str(g.tracking_identifier): g for f in _files(demo_run, "sr")
              for g in hd.sr.srread(f).content.get_volumetric_roi_measurement_groups()}
    n_checked = 0
    for n, cyc in res.cycles.items():
        for name, s in cyc.structures.items():
            values = {(m.name.value, m.name.scheme_designator): float(m.value)
                      for m in groups[f"{name} cycle {n}"].get_measurements()}
            for code, attr in FIELDS.items():
                want = (s.dvh_metrics or {}).get(attr[4:]) if attr.startswith("dvh:") else getattr(s, attr)
                if want is None:
                    assert code not in values
                    continue
                assert values[code] == pytest.approx(want, rel=1e-9, abs=1e-12), (name, n, attr)
                n_checked += 1
    assert n_checked > 100
    pred = res.twin["prediction"]
    for name, q in pred["structures"].items():
        g = groups[f"{name} cycle {pred['cycle']} predicted"]
        vals = {m.name.value: float(m.value) for m in g.get_measurements()}
        assert vals["128533"] == pytest.approx(q["dose_Gy"]["mean"]) and vals["TTW0325"] == pytest.approx(q["dose_Gy"]["low"])


@pytest.mark.skipif(not orthanc_available(), reason="Orthanc not installed")
def test_demo_pushed_by_stow_and_cstore(demo_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = Orthanc(tmp_path / "orthanc")
    try:
        server.start()
        monkeypatch.setenv("THERATWIN_PACS_USER", server.user)
        monkeypatch.setenv("THERATWIN_PACS_PASSWORD", server.password)
        (tmp_path / "cfg.json").write_text("{}")
        monkeypatch.setenv("THERATWIN_CONFIG", str(tmp_path / "cfg.json"))
        study_uid = demo_run.results.study.reference_ct_source.study_uid
        expected = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f
                    for f in _files(demo_run, "dicom")}
        for url, name in ((server.dicomweb_url, "stow"), (server.dimse_url, "cstore")):
            work = tmp_path / name
            shutil.copytree(demo_run.out_dir / "dicom", work / "dicom")
            res = server.call(push_dicom_directory, work, url)
            assert res.ok, res.describe()
            # by QIDO-RS: every object of the study (the report PDF may belong to it too), each once
            found = server.qido_instances(study_uid)
            assert len(found) == len(set(found))
            in_study = {u for u, f in expected.items()
                        if pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID == study_uid}
            assert in_study <= set(found) and len(in_study) >= len(_files(demo_run, "rtdose")) + 2
            assert server.count_instances() == len(expected)
    finally:
        server.close()
