"""The Export module's Logic headless against real servers: Orthanc (authentication on, DICOMweb) receives the
RT Dose, SR and SEG of the demo patient, the validating FHIR test server its bundle. The endpoints live in the
application settings and the password in the environment, and neither reaches the saved scene."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import pydicom
import pytest
from modules import ROOT, loadModuleFile

sys.path.insert(0, str(ROOT / "Testing" / "python"))
from servers.orthanc import Orthanc, orthanc_available  # noqa: E402

import TheraTwinLib as L  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    server = Orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.mark.skipif(not orthanc_available(), reason="Orthanc or its DICOMweb plugin not installed")
def test_export_pushes_to_orthanc_and_keeps_secrets_out_of_the_scene(orthanc, demo_scene, demo_run, tmp_path,
                                                                     monkeypatch) -> None:
    monkeypatch.setenv("THERATWIN_PACS_USER", orthanc.user)
    monkeypatch.setenv("THERATWIN_PACS_PASSWORD", orthanc.password)
    monkeypatch.delenv("THERATWIN_PACS_TOKEN", raising=False)
    config = tmp_path / "theratwin-config.json"  # no personal configuration file
    config.write_text("{}")
    monkeypatch.setenv("THERATWIN_CONFIG", str(config))
    export = loadModuleFile("TheraTwinExport")
    logic = export.TheraTwinExportLogic(settings=export._MemorySettings())
    logic.saveEndpointSettings(orthanc.dicomweb_url, "")
    nodes = demo_scene["nodes"]
    out = tmp_path / "out"
    before = orthanc.count_instances()
    outputs = orthanc.call(logic.process, nodes.allTimePoints(), nodes.segmentation, out, writeFhir=False,
                           writeReport=False, pushToPacs=True)
    files = outputs["files"]
    assert {"rtdose", "sr", "seg"} <= set(files)
    sent = {str(pydicom.dcmread(out / f, stop_before_pixels=True).SOPInstanceUID) for f in files["dicom"]}
    study_uid = demo_run.study.study_uid
    # Orthanc's own QIDO-RS (not TheraTwin's client) finds every object under the demo patient's study
    assert sent <= set(orthanc.qido_instances(study_uid))
    assert orthanc.count_instances() - before == len(sent)
    assert not [w for w in outputs["run"].results.warnings if w.stage == "dicom_export" and w.severity == "error"]
    # the scene holds neither the password nor the endpoint
    bundle = L.saveSceneToBundle(demo_scene["scene"], tmp_path / "scene.mrb")
    with zipfile.ZipFile(bundle) as archive:
        content = b"".join(archive.read(name) for name in archive.namelist())
    assert orthanc.password.encode() not in content
    assert orthanc.dicomweb_url.encode() not in content
    assert orthanc.password not in Path(out / "results.json").read_text()


def test_export_pushes_the_fhir_bundle(demo_scene, demo_run, tmp_path, monkeypatch) -> None:
    """The FHIR bundle of the demo patient reaches the validating FHIR test server (Medplum engine): every
    resource of the written bundle is stored, under the demo PatientID."""
    import json
    from collections import Counter

    import requests

    support = pytest.importorskip("test_fhir_support", reason="Testing/python/test_fhir_support.py not found")
    if not (ROOT / "Testing" / "fhir_server" / "node_modules").is_dir():
        pytest.skip("FHIR test server not installed (scripts/bootstrap.sh runs npm ci)")
    monkeypatch.setenv("THERATWIN_CONFIG", str(tmp_path / "none.json"))
    (tmp_path / "none.json").write_text("{}")
    export = loadModuleFile("TheraTwinExport")
    logic = export.TheraTwinExportLogic(settings=export._MemorySettings())
    nodes = demo_scene["nodes"]
    with support.FhirTestServer() as server:
        logic.saveEndpointSettings("", server.url)
        outputs = logic.process(nodes.allTimePoints(), nodes.segmentation, tmp_path / "out", writeDicom=False,
                                writeReport=False, pushToFhir=True)
        assert not [w.message for w in outputs["run"].results.warnings if w.stage == "fhir_export"]
        bundle = json.loads((tmp_path / "out" / "fhir-bundle.json").read_text())
        sent = Counter(e["resource"]["resourceType"] for e in bundle["entry"])
        stored = Counter()
        for kind in sent:
            r = requests.get(f"{server.url}/{kind}", params={"_summary": "count"}, timeout=10)
            r.raise_for_status()
            stored[kind] = r.json()["total"]
        assert stored == sent
        patient = requests.get(f"{server.url}/Patient", timeout=10).json()["entry"][0]["resource"]
        assert demo_run.study.patient.patient_id in json.dumps(patient["identifier"])
