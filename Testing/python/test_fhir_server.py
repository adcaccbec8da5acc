"""Integration tests against a real FHIR engine: Medplum's router and validator in Testing/fhir_server.

Each test starts its own server on 127.0.0.1 with a free port and stops it.
"""

from __future__ import annotations

import copy
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from test_fhir_support import FhirTestServer, assert_stored_as_sent, free_port, make_results, self_signed_cert

from theratwin.errors import PushError
from theratwin.fhir import (
    FhirAuth,
    FhirClient,
    FhirPushError,
    SmartBackendAuth,
    build_bundle,
    bundle_to_json,
    fhir_outbox,
    public_jwk,
    push_bundle,
    push_output_dir,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def fhir_server() -> Any:
    with FhirTestServer() as srv:
        yield srv

TYPES = ("Patient", "ImagingStudy", "MedicationAdministration", "Observation", "DiagnosticReport",
         "RiskAssessment", "CarePlan", "Device", "Provenance")


def client(url: str, **kw: Any) -> FhirClient:
    kw.setdefault("auth", FhirAuth())
    return FhirClient(url, retries=kw.pop("retries", 2), backoff_s=kw.pop("backoff_s", 0.05), **kw)


def counts(c: FhirClient) -> Counter:
    return Counter({t: c.count(t) for t in TYPES})


def expected_counts(bundle: dict) -> Counter:
    return Counter(e["resource"]["resourceType"] for e in bundle["entry"])


def _write_out_dir(tmp_path: Path, patient_id: str = "TT-FHIR-1") -> tuple[Path, dict]:
    out = tmp_path / "out"
    res = make_results(out, patient_id=patient_id)
    bundle = build_bundle(res, out_dir=out)
    (out / "fhir-bundle.json").write_text(bundle_to_json(bundle))
    return out, bundle


def test_push_stores_every_resource_equal_in_meaning(tmp_path: Path, fhir_server: FhirTestServer):
    _, bundle = _write_out_dir(tmp_path)
    c = client(fhir_server.url)
    resp = c.transaction(bundle)
    statuses = [e["response"]["status"] for e in resp["entry"]]
    assert all(s.startswith("201") for s in statuses), statuses
    assert_stored_as_sent(c, bundle, resp)
    assert counts(c) == expected_counts(bundle)


def test_stored_resources_reference_each_other(tmp_path: Path, fhir_server: FhirTestServer):
    _, bundle = _write_out_dir(tmp_path)
    c = client(fhir_server.url)
    push_bundle(bundle, c)
    patient = c.search("Patient", {"identifier": "TT-FHIR-1"})
    assert len(patient) == 1
    pref = f"Patient/{patient[0]['id']}"
    img = c.search("ImagingStudy", {"subject": pref})
    assert len(img) == 2
    irefs = {f"ImagingStudy/{i['id']}" for i in img}
    obs = c.search("Observation", {"subject": pref})
    assert len(obs) == expected_counts(bundle)["Observation"]
    mas = {f"MedicationAdministration/{m['id']}": m for m in c.search("MedicationAdministration", {"subject": pref})}
    assert len(mas) == 2
    for o in obs:
        assert o["subject"]["reference"] == pref
        assert {d["reference"] for d in o["derivedFrom"]} <= irefs and o["derivedFrom"]
        if o["status"] == "final":
            ma = mas[o["partOf"][0]["reference"]]  # the administration of the same cycle
            cycle = int(o["code"]["text"].rsplit(" ", 1)[1])
            assert ma["category"]["text"].endswith(f"cycle {cycle}")
    reports = c.search("DiagnosticReport", {"subject": pref})
    assert len(reports) == 1
    assert {r["reference"] for r in reports[0]["result"]} == {f"Observation/{o['id']}" for o in obs}
    assert {r["reference"] for r in reports[0]["imagingStudy"]} == irefs
    devices = c.search("Device")
    prov = c.search("Provenance")[0]
    assert prov["agent"][0]["who"]["reference"] == f"Device/{devices[0]['id']}"
    targets = {t["reference"] for t in prov["target"]}
    assert {f"Observation/{o['id']}" for o in obs} <= targets
    for ra in c.search("RiskAssessment", {"subject": pref}):
        assert f"DiagnosticReport/{reports[0]['id']}" in {b["reference"] for b in ra["basis"]}
    cp = c.search("CarePlan", {"subject": pref})
    assert len(cp) == 1 and cp[0]["activity"][0]["detail"]["quantity"]["code"] == "MBq"


def test_second_push_creates_nothing(tmp_path: Path, fhir_server: FhirTestServer):
    out, bundle = _write_out_dir(tmp_path)
    c = client(fhir_server.url)
    first = push_output_dir(out, fhir_server.url, client=c)
    assert first.ok and first.sent[0][1].n_created == len(bundle["entry"])
    before = counts(c)
    assert before == expected_counts(bundle)
    # the same bundle sent again (as after a lost answer): the server resolves every conditional create
    again = push_bundle(bundle, c)
    assert again.n_created == 0 and again.n_existing == len(bundle["entry"])
    assert counts(c) == before
    # and a bundle rebuilt from the same results is the same bundle: nothing new either
    rebuilt = build_bundle(make_results(tmp_path / "out"), out_dir=tmp_path / "out")
    assert push_bundle(rebuilt, c).n_created == 0
    assert counts(c) == before
    # `theratwin push` of the same directory: the outbox knows it was delivered
    second = push_output_dir(out, fhir_server.url, client=c)
    assert second.ok and second.sent == [] and len(second.already_sent) == 1
    assert "delivered before" in second.describe()
    assert counts(c) == before


def test_new_analysis_adds_results_but_not_the_patient(tmp_path: Path, fhir_server: FhirTestServer):
    from datetime import timedelta

    out, bundle = _write_out_dir(tmp_path)
    c = client(fhir_server.url)
    push_bundle(bundle, c)
    res2 = make_results(tmp_path / "out2")
    res2.created += timedelta(days=1)  # the same patient analysed again the next day
    b2 = build_bundle(res2, out_dir=tmp_path / "out2")
    s = push_bundle(b2, c)
    facts = ("Patient", "ImagingStudy", "MedicationAdministration", "Device")
    assert all(s.created.get(t, 0) == 0 for t in facts)  # the same patient, studies, administrations, software
    n = counts(c)
    assert all(n[t] == expected_counts(bundle)[t] for t in facts)
    assert n["Observation"] == 2 * expected_counts(bundle)["Observation"]  # a new set of results
    assert n["Provenance"] == 2 and n["DiagnosticReport"] == 2


def test_endpoint_accepted_and_linked(tmp_path: Path, fhir_server: FhirTestServer):
    from theratwin.fhir import BundleOptions

    res = make_results(tmp_path)
    bundle = build_bundle(res, out_dir=tmp_path, options=BundleOptions(dicomweb_url="http://pacs.example/dicom-web"))
    c = client(fhir_server.url)
    push_bundle(bundle, c)
    ep = c.search("Endpoint")
    assert len(ep) == 1
    for img in c.search("ImagingStudy"):
        assert img["endpoint"] == [{"reference": f"Endpoint/{ep[0]['id']}"}]


def test_existing_patient_is_reused(tmp_path: Path, fhir_server: FhirTestServer):
    _, bundle = _write_out_dir(tmp_path)
    c = client(fhir_server.url)
    pat = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    existing = c.request("POST", "Patient", json_body={"resourceType": "Patient", "identifier": pat["identifier"],
                                                       "name": [{"family": "Registered-in-EHR"}]})
    push_bundle(bundle, c)
    patients = c.search("Patient")
    assert [p["id"] for p in patients] == [existing["id"]]
    assert patients[0]["name"][0]["family"] == "Registered-in-EHR"  # the EHR's record is not overwritten
    for o in c.search("Observation"):
        assert o["subject"]["reference"] == f"Patient/{existing['id']}"


def test_invalid_resource_reported_and_nothing_stored(tmp_path: Path, fhir_server: FhirTestServer):
    out, bundle = _write_out_dir(tmp_path)
    bad = copy.deepcopy(bundle)
    # the last Observation gets a malformed quantity: every earlier entry would be valid on its own
    obs = [e for e in bad["entry"] if e["resource"]["resourceType"] == "Observation"][-1]["resource"]
    obs["component"][0]["valueQuantity"]["value"] = "3.7 Gy"
    c = client(fhir_server.url)
    with pytest.raises(FhirPushError) as err:
        push_bundle(bad, c)
    e = err.value
    assert e.status == 400 and not e.retriable
    assert e.outcome["resourceType"] == "OperationOutcome"
    issue = e.outcome["issue"][0]
    assert issue["severity"] == "error"
    assert any("Observation.component" in x for x in issue["expression"])
    assert issue["details"]["text"] in str(e)  # the server's own words reach the user
    assert sum(counts(c).values()) == 0  # all-or-nothing: nothing from that bundle is stored
    # through push_output_dir: reported, kept in the outbox, not lost
    (out / "fhir-bundle.json").write_text(bundle_to_json(bad))
    report = push_output_dir(out, fhir_server.url, client=c)
    assert not report.ok and "HTTP 400" in report.describe()
    assert len(fhir_outbox(out).pending("fhir")) == 1
    assert sum(counts(c).values()) == 0


def test_server_dies_after_commit_then_repush_completes(tmp_path: Path):
    """The server stores the transaction and dies before answering: the client cannot know, keeps the bundle
    in the outbox; after the restart the re-push finds everything there and creates nothing twice."""
    out, bundle = _write_out_dir(tmp_path)
    data = tmp_path / "store.json"
    port = free_port()
    srv = FhirTestServer("--crash-after-commit", "1", data=data, port=port).start()
    try:
        report = push_output_dir(out, srv.url, client=client(srv.url, retries=1))
        assert srv.wait_exit() == 3
    finally:
        srv.stop()
    assert not report.ok
    assert len(fhir_outbox(out).pending("fhir")) == 1
    with FhirTestServer(data=data, port=port) as srv2:
        c = client(srv2.url)
        assert counts(c) == expected_counts(bundle)  # it had been stored before the crash
        again = push_output_dir(out, srv2.url, client=c)
        assert again.ok, again.describe()
        assert again.sent[0][1].n_created == 0  # every conditional create found its resource
        assert fhir_outbox(out).pending("fhir") == []
        assert counts(c) == expected_counts(bundle)  # nothing twice


def test_server_down_during_pipeline_push_loses_nothing(tmp_path: Path):
    from theratwin.fhir.stage import FhirExportStage
    from theratwin.pipeline.core import PipelineConfig, PipelineContext

    out = tmp_path / "out"
    res = make_results(out)
    port = free_port()  # nothing listens there yet
    url = f"http://127.0.0.1:{port}"
    cfg = PipelineConfig(fhir_url=url, stage_options={"fhir_export": {"push_retries": 1, "push_backoff_s": 0.05}})
    ctx = PipelineContext(res.study, res, cfg, out)
    FhirExportStage().run(ctx)
    assert any(w.stage == "fhir_export" and w.severity == "error" for w in res.warnings)
    assert res.outputs["fhir_outbox"] == "outbox/fhir"
    assert len(fhir_outbox(out).pending("fhir")) == 1
    bundle = json.loads((out / "fhir-bundle.json").read_text())
    with FhirTestServer(port=port) as srv:
        report = push_output_dir(out, srv.url, client=client(srv.url))
        assert report.ok and report.outbox_left == 0
        assert counts(client(srv.url)) == expected_counts(bundle)


def test_retries_on_503(tmp_path: Path):
    _, bundle = _write_out_dir(tmp_path)
    with FhirTestServer("--fail-first", "2", "--fail-status", "503") as srv:
        c = client(srv.url, retries=3)
        s = push_bundle(bundle, c)
        assert s.n_created == len(bundle["entry"])
    with FhirTestServer("--fail-first", "5", "--fail-status", "429") as srv:
        c = client(srv.url, retries=1)
        with pytest.raises(FhirPushError) as err:
            push_bundle(bundle, c)
        assert err.value.status == 429 and err.value.retriable


def test_bearer_token_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    out, bundle = _write_out_dir(tmp_path)
    secret = "s3cret-token-value-for-test"
    with FhirTestServer(env={"FHIR_TEST_SERVER_TOKEN": secret}) as srv:
        monkeypatch.delenv("THERATWIN_FHIR_TOKEN", raising=False)
        with pytest.raises(FhirPushError, match="HTTP 401"):
            push_bundle(bundle, FhirClient(srv.url, retries=0))
        monkeypatch.setenv("THERATWIN_FHIR_TOKEN", secret)
        c = FhirClient(srv.url, retries=0)
        assert secret not in repr(c) and secret not in repr(c.auth)
        report = push_output_dir(out, srv.url)
        assert report.ok and secret not in report.describe()
    # the credential is written nowhere in the output directory
    for p in out.rglob("*"):
        if p.is_file():
            assert secret.encode() not in p.read_bytes(), p


def test_basic_auth_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _, bundle = _write_out_dir(tmp_path)
    with FhirTestServer(env={"FHIR_TEST_SERVER_BASIC": "physicist:pa55word"}) as srv:
        monkeypatch.setenv("THERATWIN_FHIR_USER", "physicist")
        monkeypatch.setenv("THERATWIN_FHIR_PASSWORD", "wrong")
        with pytest.raises(FhirPushError, match="HTTP 401"):
            push_bundle(bundle, FhirClient(srv.url, retries=0))
        monkeypatch.setenv("THERATWIN_FHIR_PASSWORD", "pa55word")
        c = FhirClient(srv.url, retries=0)
        assert "pa55word" not in repr(c.auth)
        assert push_bundle(bundle, c).n_created == len(bundle["entry"])


def test_tls_is_verified_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _, bundle = _write_out_dir(tmp_path)
    cert, key = self_signed_cert(tmp_path)
    monkeypatch.delenv("THERATWIN_FHIR_CA_BUNDLE", raising=False)
    with FhirTestServer("--tls-cert", str(cert), "--tls-key", str(key)) as srv:
        assert srv.url.startswith("https://")
        with pytest.raises(FhirPushError, match="TLS verification") as err:
            push_bundle(bundle, client(srv.url))
        assert not err.value.retriable
        assert sum(counts(client(srv.url, verify=str(cert))).values()) == 0
        monkeypatch.setenv("THERATWIN_FHIR_CA_BUNDLE", str(cert))  # the site's CA: now trusted
        s = push_bundle(bundle, FhirClient(srv.url, auth=FhirAuth(), retries=0))
        assert s.n_created == len(bundle["entry"])


def test_codesystem_is_accepted_by_the_server(fhir_server: FhirTestServer):
    from theratwin.fhir import load_published_codesystem

    c = client(fhir_server.url)
    cs = load_published_codesystem()
    stored = c.request("PUT", f"CodeSystem/{cs['id']}", json_body=cs)
    assert stored["url"] == cs["url"] and len(stored["concept"]) == len(cs["concept"])
    assert c.search("CodeSystem", {"url": cs["url"]})[0]["id"] == cs["id"]


def test_smart_backend_services(tmp_path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    def pem() -> bytes:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    good, wrong = pem(), pem()
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [public_jwk(good, kid="k1")]}))
    _, bundle = _write_out_dir(tmp_path)
    with FhirTestServer("--smart-jwks", str(jwks)) as srv:
        token_url = srv.url + "/auth/token"
        with pytest.raises(FhirPushError, match="HTTP 401"):
            push_bundle(bundle, client(srv.url))
        # the server verifies the RS384 signature with node:crypto against the registered public key
        bad = FhirClient(srv.url, auth=FhirAuth(smart=SmartBackendAuth(token_url, "theratwin", wrong, "k1")),
                         retries=0)
        with pytest.raises(PushError, match="refused the client assertion.*bad signature"):
            push_bundle(bundle, bad)
        ok = FhirClient(srv.url, auth=FhirAuth(smart=SmartBackendAuth(token_url, "theratwin", good, "k1")),
                        retries=0)
        s = push_bundle(bundle, ok)
        assert s.n_created == len(bundle["entry"])
        # token endpoint discovered from .well-known/smart-configuration
        key = tmp_path / "client.pem"
        key.write_bytes(good)
        auth = FhirAuth.from_env({"THERATWIN_FHIR_CLIENT_ID": "theratwin", "THERATWIN_FHIR_PRIVATE_KEY": str(key),
                                  "THERATWIN_FHIR_KID": "k1"})
        discovered = FhirClient(srv.url, auth=auth, retries=0)
        assert push_bundle(bundle, discovered).n_created == 0
        assert auth.smart is not None and auth.smart.token_url == token_url


def test_cli_push_completes_the_outbox(tmp_path: Path):
    """`theratwin push DIR --fhir URL`: fails cleanly while the server is down, completes once it is up."""
    import subprocess
    import sys

    out, bundle = _write_out_dir(tmp_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "theratwin", "push", str(out), "--fhir", url]
    env = {k: v for k, v in os.environ.items() if not k.startswith("THERATWIN_FHIR")}
    env.update(THERATWIN_FHIR_RETRIES="1", THERATWIN_FHIR_BACKOFF_S="0.05")
    down = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert down.returncode != 0
    assert "NOT stored, kept in the outbox" in down.stdout + down.stderr
    assert len(fhir_outbox(out).pending("fhir")) == 1
    with FhirTestServer(port=port) as srv:
        up = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"{len(bundle['entry'])} created" in up.stdout
        assert fhir_outbox(out).pending("fhir") == []
        assert counts(client(srv.url)) == expected_counts(bundle)


def test_pipeline_stage_pushes_when_a_url_is_configured(tmp_path: Path, fhir_server: FhirTestServer):
    from theratwin.fhir.stage import FhirExportStage
    from theratwin.pipeline.core import PipelineConfig, PipelineContext

    out = tmp_path / "out"
    res = make_results(out)
    ctx = PipelineContext(res.study, res, PipelineConfig(fhir_url=fhir_server.url), out)
    FhirExportStage().run(ctx)
    bundle = json.loads((out / "fhir-bundle.json").read_text())
    assert not [w for w in res.warnings if w.stage == "fhir_export"]
    assert f"{len(bundle['entry'])} created" in res.extras["fhir_push"]
    assert counts(client(fhir_server.url)) == expected_counts(bundle)
