"""Push to and fetch from a real Orthanc (authentication on, DICOMweb plugin), by STOW-RS/QIDO-RS/WADO-RS and
C-STORE/C-FIND/C-GET; stop it in the middle of a push and show that nothing is lost and nothing is stored twice.

What Orthanc holds is checked through its own REST API and plain QIDO-RS requests (servers/orthanc.py), not
through TheraTwin's client.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from dicom_synth import make_results, make_study
from servers.orthanc import Orthanc, orthanc_available

from theratwin.dicom.export import export_dicom
from theratwin.dicom.outbox import Outbox
from theratwin.dicom.pacs import open_pacs
from theratwin.push import push_dicom_directory, push_directory

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not orthanc_available(), reason="Orthanc or its DICOMweb plugin not installed")]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory):
    server = Orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def creds_env(orthanc: Orthanc, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    monkeypatch.setenv("THERATWIN_PACS_USER", orthanc.user)
    monkeypatch.setenv("THERATWIN_PACS_PASSWORD", orthanc.password)
    monkeypatch.delenv("THERATWIN_PACS_TOKEN", raising=False)
    empty = tmp_path / "theratwin-config.json"  # no personal config file
    empty.write_text("{}")
    monkeypatch.setenv("THERATWIN_CONFIG", str(empty))
    return {"THERATWIN_PACS_USER": orthanc.user, "THERATWIN_PACS_PASSWORD": orthanc.password,
            "THERATWIN_CONFIG": str(empty)}


def _export(tmp: Path, n_cycles: int = 1):
    study = make_study(tmp / "input", n_cycles=n_cycles)
    out = tmp / "out"
    rep = export_dicom(make_results(study), out)
    sops = {str(pydicom.dcmread(out / f, stop_before_pixels=True).SOPInstanceUID) for f in rep.all_files}
    return study, out, sops


def test_orthanc_is_up_fast_and_requires_authentication(orthanc: Orthanc) -> None:
    print(f"Orthanc start-up: {orthanc.startup_s:.3f} s")
    assert orthanc.startup_s is not None and orthanc.startup_s < 3.0
    r = orthanc.call(requests.get, f"{orthanc.dicomweb_url}/studies", timeout=5)
    assert r.status_code == 401


def test_stow_push_found_by_qido_and_second_push_stores_nothing(orthanc: Orthanc, creds_env, tmp_path: Path) -> None:
    study, out, sops = _export(tmp_path, n_cycles=2)
    before = orthanc.count_instances()
    res = orthanc.call(push_dicom_directory, out, orthanc.dicomweb_url)
    assert res.ok, res.describe()
    assert set(res.sent) == sops and len(sops) == 10  # 6 RT Dose, SEG, 3 SR
    assert set(orthanc.qido_instances(study.reference_ct_source.study_uid)) == sops
    assert orthanc.count_instances() - before == len(sops)
    # pushing the same folder again sends nothing and stores nothing
    again = orthanc.call(push_dicom_directory, out, orthanc.dicomweb_url)
    assert again.ok and again.sent == [] and again.already_sent == len(sops)
    assert orthanc.count_instances() - before == len(sops)
    # a re-export gets new UIDs: stored next to the first one, nothing overwritten
    rep2 = export_dicom(make_results(study), out)
    sops2 = {str(pydicom.dcmread(out / f, stop_before_pixels=True).SOPInstanceUID) for f in rep2.all_files}
    third = orthanc.call(push_dicom_directory, out, orthanc.dicomweb_url)
    assert third.ok and set(third.sent) == sops2 and not sops & sops2
    assert set(orthanc.qido_instances(study.reference_ct_source.study_uid)) == sops | sops2


def test_cstore_push_found_by_qido_and_cfind(orthanc: Orthanc, creds_env, tmp_path: Path) -> None:
    study, out, sops = _export(tmp_path)
    before = orthanc.count_instances()
    res = orthanc.call(push_dicom_directory, out, orthanc.dimse_url)
    assert res.ok, res.describe()
    assert set(res.sent) == sops
    study_uid = study.reference_ct_source.study_uid
    assert set(orthanc.qido_instances(study_uid)) == sops
    assert orthanc.count_instances() - before == len(sops)

    def cfind() -> list[str]:
        with open_pacs(orthanc.dimse_url) as c:
            return c.instance_uids(study_uid)

    assert sorted(orthanc.call(cfind)) == sorted(sops)
    again = orthanc.call(push_dicom_directory, out, orthanc.dimse_url)
    assert again.ok and again.sent == [] and orthanc.count_instances() - before == len(sops)


@pytest.mark.parametrize("kind", ["dicomweb", "dimse"])
def test_fetch_input_study_by_wado_and_cget(orthanc: Orthanc, creds_env, tmp_path: Path, kind: str) -> None:
    study = make_study(tmp_path / "input", n_cycles=1, patient_id=f"TT-FETCH-{kind}")
    upload = tmp_path / "upload"
    (upload / "dicom").mkdir(parents=True)
    for f in study.reference_ct_source.files:
        (upload / "dicom" / Path(f).name).write_bytes(Path(f).read_bytes())
    assert orthanc.call(push_dicom_directory, upload, orthanc.dicomweb_url).ok
    url = orthanc.dicomweb_url if kind == "dicomweb" else orthanc.dimse_url

    def fetch() -> tuple[list[dict[str, str]], list[Path]]:
        with open_pacs(url) as c:
            found = c.find_studies(patient_id=study.patient.patient_id)
            return found, c.fetch_study(found[0]["StudyInstanceUID"], tmp_path / "fetched")

    found, files = orthanc.call(fetch)
    assert [s["StudyInstanceUID"] for s in found] == [study.reference_ct_source.study_uid]
    got = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p) for p in files)}
    assert set(got) == set(study.reference_ct_source.sop_instance_uids)
    for f in study.reference_ct_source.files:
        orig = pydicom.dcmread(f)
        np.testing.assert_array_equal(got[str(orig.SOPInstanceUID)].pixel_array, orig.pixel_array)


def test_orthanc_stopped_mid_push_loses_nothing(orthanc: Orthanc, creds_env, tmp_path: Path) -> None:
    study, out, sops = _export(tmp_path, n_cycles=2)
    study_uid = study.reference_ct_source.study_uid
    before = orthanc.count_instances()
    calls = []

    def stop_after_first(fraction: float, message: str) -> None:
        calls.append(message)
        if len(calls) == 1:
            orthanc.stop()  # the PACS goes away after the first instance

    try:
        res = orthanc.call(push_dicom_directory, out, orthanc.dicomweb_url, progress=stop_after_first)
    finally:
        orthanc.start()
    assert not res.ok and len(res.sent) == 1 and res.pending == len(sops) - 1
    assert "NOT sent" in res.describe() and "outbox" in res.describe()
    pending = Outbox(out / "outbox").pending("pacs")
    assert {p.key for p in pending} == sops - set(res.sent)
    assert all((out / "outbox" / "pacs" / p.file).is_file() for p in pending)
    assert set(orthanc.qido_instances(study_uid)) == set(res.sent)
    # the CLI completes it, run in Orthanc's network namespace like any client
    env = {**os.environ, **creds_env}
    proc = orthanc.run([sys.executable, "-m", "theratwin", "push", str(out), "--pacs", orthanc.dicomweb_url],
                       env=env, cwd=str(REPO))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(sops) - 1} sent, 1 already there" in proc.stdout
    assert sorted(orthanc.qido_instances(study_uid)) == sorted(sops)  # all there, each once
    assert orthanc.count_instances() - before == len(sops)
    assert Outbox(out / "outbox").pending("pacs") == []
    proc = orthanc.run([sys.executable, "-m", "theratwin", "push", str(out), "--pacs", orthanc.dicomweb_url],
                       env=env, cwd=str(REPO))
    assert proc.returncode == 0 and f"0 sent, {len(sops)} already there" in proc.stdout


def test_password_never_in_logs_or_outputs(orthanc: Orthanc, creds_env, tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    study, out, sops = _export(tmp_path)
    secrets = [orthanc.password, base64.b64encode(f"{orthanc.user}:{orthanc.password}".encode()).decode()]
    env = {**os.environ, **creds_env}
    # wrong password first: refused, nothing lost, no secret printed
    bad = {**env, "THERATWIN_PACS_PASSWORD": "wrong-" + orthanc.password}
    cmd = [sys.executable, "-m", "theratwin", "-v", "push", str(out), "--pacs", orthanc.dicomweb_url]
    p1 = orthanc.run(cmd, env=bad, cwd=str(REPO))
    assert p1.returncode != 0 and "authentication refused" in p1.stdout
    p2 = orthanc.run(cmd, env=env, cwd=str(REPO))
    assert p2.returncode == 0, p2.stdout + p2.stderr
    with caplog.at_level(logging.DEBUG):
        res = orthanc.call(push_directory, out, pacs_url=orthanc.dicomweb_url)
    assert res.ok
    texts = [p1.stdout, p1.stderr, p2.stdout, p2.stderr, caplog.text, res.describe()]
    texts += [p.read_bytes().decode("latin-1") for p in out.rglob("*") if p.is_file()]
    for s in secrets + ["wrong-" + orthanc.password]:
        assert not any(s in t for t in texts)


@pytest.mark.parametrize("kind", ["dicomweb", "dimse"])
def test_rejected_instance_stays_in_outbox_until_fixed(orthanc: Orthanc, creds_env, tmp_path: Path, kind: str) -> None:
    study, out, sops = _export(tmp_path)
    victim = out / "dicom" / "rtdose_cycle1_bed.dcm"
    ds = pydicom.dcmread(victim)
    original_description = ds.SeriesDescription
    ds.SeriesDescription = f"{Orthanc.REJECT_MARKER} {original_description}"[:64]
    ds.save_as(victim, enforce_file_format=True)
    url = orthanc.dicomweb_url if kind == "dicomweb" else orthanc.dimse_url
    res = orthanc.call(push_dicom_directory, out, url)
    assert not res.ok and list(res.failed) == [str(ds.SOPInstanceUID)] and res.not_tried == []
    assert set(res.sent) == sops - {str(ds.SOPInstanceUID)}  # the others went through
    assert set(orthanc.qido_instances(study.reference_ct_source.study_uid)) == set(res.sent)
    assert [p.key for p in Outbox(out / "outbox").pending("pacs")] == [str(ds.SOPInstanceUID)]
    # the object is corrected in place (same SOP Instance UID): the next push sends the new content
    ds.SeriesDescription = original_description
    ds.save_as(victim, enforce_file_format=True)
    res2 = orthanc.call(push_dicom_directory, out, url)
    assert res2.ok and res2.sent == [str(ds.SOPInstanceUID)]
    assert set(orthanc.qido_instances(study.reference_ct_source.study_uid)) == sops


def test_pipeline_stage_pushes_when_configured(orthanc: Orthanc, creds_env, tmp_path: Path) -> None:
    from theratwin.dicom.stage import DicomExportStage
    from theratwin.pipeline.core import PipelineConfig, PipelineContext

    study = make_study(tmp_path / "input", n_cycles=1)
    results = make_results(study)
    ctx = PipelineContext(study, results, PipelineConfig(pacs_url=orthanc.dimse_url), tmp_path / "out")
    orthanc.call(DicomExportStage().run, ctx)
    sops = {str(pydicom.dcmread(tmp_path / "out" / f, stop_before_pixels=True).SOPInstanceUID)
            for f in results.outputs["dicom"]}
    assert f"{len(sops)} sent" in results.outputs["pacs_push"] and len(sops) == 7  # 4 RT Dose, SEG, 2 SR
    assert not [w for w in results.warnings if w.severity == "error"]
    assert set(orthanc.qido_instances(study.reference_ct_source.study_uid)) == sops


def test_push_directory_reports_each_destination(orthanc: Orthanc, creds_env, tmp_path: Path) -> None:
    """PACS and FHIR parts are independent: a FHIR server that is down does not stop the PACS push."""
    study, out, sops = _export(tmp_path)
    (out / "fhir-bundle.json").write_text('{"resourceType": "Bundle", "type": "transaction", "entry": []}')
    dead_fhir = "http://127.0.0.1:9/fhir"  # discard port: nothing listens in the namespace
    rep = orthanc.call(push_directory, out, pacs_url=orthanc.dicomweb_url, fhir_url=dead_fhir)
    assert not rep.ok and len(rep.parts) == 2
    pacs, fhir = rep.parts
    assert pacs.ok and set(pacs.sent) == sops and not fhir.ok
    lines = rep.describe().splitlines()
    assert lines[0].startswith("PACS") and f"{len(sops)} sent" in lines[0] and len(lines) >= 2


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_dicom_tls_is_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DICOM over TLS (dimse+tls://): an untrusted certificate stops the push (items kept); with the PACS's CA
    configured the same push goes through."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    server = Orthanc(tmp_path / "orthanc-tls", extra_config={
        "DicomTlsEnabled": True, "DicomTlsCertificate": str(cert), "DicomTlsPrivateKey": str(key),
        "DicomTlsTrustedCertificates": str(cert), "DicomTlsRemoteCertificateRequired": False})
    try:
        server.start()
        (tmp_path / "cfg.json").write_text("{}")
        monkeypatch.setenv("THERATWIN_CONFIG", str(tmp_path / "cfg.json"))
        monkeypatch.delenv("THERATWIN_PACS_CA_BUNDLE", raising=False)
        study, out, sops = _export(tmp_path / "x")
        assert server.dimse_url.startswith("dimse+tls://")
        refused = server.call(push_dicom_directory, out, server.dimse_url)
        assert not refused.ok and refused.sent == [] and refused.pending == len(sops)
        assert server.count_instances() == 0
        monkeypatch.setenv("THERATWIN_PACS_CA_BUNDLE", str(cert))
        accepted = server.call(push_dicom_directory, out, server.dimse_url)
        assert accepted.ok and set(accepted.sent) == sops
        assert server.count_instances() == len(sops)
    finally:
        server.close()


def test_two_concurrent_pushes_send_each_object_once(orthanc: Orthanc, creds_env, tmp_path: Path) -> None:
    """Two `theratwin push` of one folder started together, to Orthanc and the FHIR server: the second waits for
    the first (one push per folder) and then finds everything delivered."""
    from test_fhir_support import FhirTestServer, make_results

    from theratwin.fhir import build_bundle, bundle_to_json

    out = tmp_path / "out"
    res = make_results(out, patient_id="TT-FHIR-1")
    (out / "fhir-bundle.json").write_text(bundle_to_json(build_bundle(res, out_dir=out)))
    sops = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in (out / "dicom").glob("*.dcm")}
    before = orthanc.count_instances()
    with FhirTestServer(prefix=tuple(orthanc._prefix())) as fhir:
        env = {**os.environ, **creds_env}
        cmd = [*orthanc._prefix(), sys.executable, "-m", "theratwin", "push", str(out), "--pacs", orthanc.dicomweb_url,
               "--fhir", fhir.url, "--wait", "60"]
        procs = [subprocess.Popen(cmd, env=env, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        outs = [p.communicate(timeout=120) for p in procs]
        fhir_counts = orthanc.call(lambda: requests.get(f"{fhir.url}/Observation", params={"_summary": "count"},
                                                        timeout=10).json()["total"])
    for p, (stdout, stderr) in zip(procs, outs, strict=True):
        assert p.returncode == 0, stdout + stderr
    text = "\n".join(o for o, _ in outs)
    print(text)
    sent = sorted(int(line.split(": ", 1)[1].split(" sent")[0]) for line in text.splitlines() if line.startswith("PACS"))
    assert sent == [0, len(sops)]  # each object sent once, by one of the two
    assert text.count("already there") == 2 and f"0 sent, {len(sops)} already there" in text
    assert text.count(" stored (") == 1 and text.count("delivered before; not sent again") == 1
    assert orthanc.count_instances() - before == len(sops)
    expected_obs = sum(1 for e in json.loads((out / "fhir-bundle.json").read_text())["entry"]
                       if e["resource"]["resourceType"] == "Observation")
    assert fhir_counts == expected_obs
