"""PACS plumbing without a PACS: URLs, credentials, the outbox, TLS verification and the auth headers on the wire."""

from __future__ import annotations

import http.server
import json
import logging
import shutil
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
from dicom_synth import make_study

from theratwin.dicom.outbox import Outbox, PermanentFailure, StopDelivery
from theratwin.dicom.pacs import PacsCredentials, PacsEndpoint, PacsSettings, load_pacs_config, open_pacs
from theratwin.errors import ConfigurationError
from theratwin.push import push_dicom_directory

SECRET = "s3cr3t-Pa55"  # noqa: S105 - test value


# -- URLs ----------------------------------------------------------------------------------------------------------

def test_parse_dicomweb_and_dimse_urls() -> None:
    e = PacsEndpoint.parse("https://pacs.example.org:8443/dicom-web/")
    assert (e.kind, e.host, e.port, e.tls, e.url) == ("dicomweb", "pacs.example.org", 8443, True,
                                                      "https://pacs.example.org:8443/dicom-web")
    d = PacsEndpoint.parse("dimse://ORTHANC@10.0.0.5:104")
    assert (d.kind, d.ae_title, d.host, d.port, d.tls) == ("dimse", "ORTHANC", "10.0.0.5", 104, False)
    assert PacsEndpoint.parse("dimse+tls://PACS@h:2762").tls
    for bad in ("ftp://x/y", "dimse://h:104", "dimse://WAYTOOLONGAETITLE17@h:104", "dimse://AE@h"):
        with pytest.raises(ConfigurationError):
            PacsEndpoint.parse(bad)


def test_credentials_in_url_are_refused_without_echoing_them() -> None:
    with pytest.raises(ConfigurationError) as info:
        PacsEndpoint.parse(f"http://admin:{SECRET}@pacs:8042/dicom-web")
    assert SECRET not in str(info.value) and "THERATWIN_PACS_USER" in str(info.value)


def test_credentials_from_environment_and_config_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"pacs": {"user": "fileuser", "password": "filepw", "verify_tls": True,
                                        "calling_ae_title": "TTW2", "timeout_s": 5}}))
    creds, settings = load_pacs_config({"THERATWIN_CONFIG": str(cfg)})
    assert (creds.user, creds.password, creds.token) == ("fileuser", "filepw", "")
    assert settings == PacsSettings(verify_tls=True, ca_bundle=None, timeout_s=5.0, calling_ae_title="TTW2",
                                    max_attempts=3, retry_wait_ms=200)
    creds, _ = load_pacs_config({"THERATWIN_CONFIG": str(cfg), "THERATWIN_PACS_PASSWORD": SECRET,
                                 "THERATWIN_PACS_TOKEN": "T0K-xyz"})
    assert creds.password == SECRET and creds.token == "T0K-xyz"  # the environment wins
    assert SECRET not in repr(creds) and "T0K-xyz" not in str(creds)
    with pytest.raises(ConfigurationError):
        load_pacs_config({"THERATWIN_CONFIG": str(tmp_path / "missing.json")})
    cfg.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        load_pacs_config({"THERATWIN_CONFIG": str(cfg)})
    assert "chmod 600" in caplog.text and "filepw" not in caplog.text
    cfg.write_text(json.dumps({"pacs": {"verify_tls": "no"}}))
    with pytest.raises(ConfigurationError):
        load_pacs_config({"THERATWIN_CONFIG": str(cfg)})


# -- outbox ----------------------------------------------------------------------------------------------------------

def _files(tmp_path: Path, n: int) -> list[Path]:
    out = []
    for i in range(n):
        p = tmp_path / f"item{i}.bin"
        p.write_bytes(bytes([i]) * 100)
        out.append(p)
    return out


def test_outbox_add_is_idempotent_and_atomic(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox")
    files = _files(tmp_path, 3)
    for _ in range(2):
        for i, f in enumerate(files):
            box.add("pacs", f, key=f"k{i}", destination="d1")
    assert len(box.pending("pacs", "d1")) == 3
    pending_dir = tmp_path / "outbox" / "pacs" / "pending"
    assert len(list(pending_dir.iterdir())) == 3  # no temporary files left behind
    assert not list((tmp_path / "outbox" / "pacs").glob(".*.tmp"))
    # the same key for another destination is another item
    box.add("pacs", files[0], key="k0", destination="d2")
    assert len(box.pending("pacs")) == 4


def test_outbox_delivery_keeps_what_failed_until_a_later_delivery(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox")
    for i, f in enumerate(_files(tmp_path, 5)):
        box.add("fhir", f, key=f"k{i}", destination="srv")
    received: list[bytes] = []

    def flaky(path: Path, item) -> None:
        if item.key == "k1":
            raise PermanentFailure("rejected: bad instance")
        if item.key == "k3":
            raise StopDelivery("server went away")
        received.append(path.read_bytes())

    rep = box.deliver("fhir", "srv", flaky)
    assert rep.sent == ["k0", "k2"] and set(rep.failed) == {"k1", "k3"} and rep.not_tried == ["k4"]
    assert rep.pending == 3 and not rep.ok
    pend = {i.key: i for i in box.pending("fhir", "srv")}
    assert set(pend) == {"k1", "k3", "k4"}
    assert pend["k1"].attempts == 1 and "rejected" in pend["k1"].last_error
    assert all(box.path("fhir", i).exists() for i in pend.values())
    # re-adding what was delivered is a no-op, then everything goes through
    box.add("fhir", tmp_path / "item0.bin", key="k0", destination="srv")
    rep2 = box.deliver("fhir", "srv", lambda path, item: received.append(path.read_bytes()))
    assert sorted(rep2.sent) == ["k1", "k3", "k4"] and rep2.ok
    assert sorted(received) == sorted(bytes([i]) * 100 for i in range(5))  # each exactly once
    assert box.pending("fhir") == [] and not list((tmp_path / "outbox" / "fhir" / "pending").iterdir())
    assert box.summary() == {"fhir": {"pending": 0, "sent": 5}}


def test_outbox_requeues_changed_content(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox")
    f = _files(tmp_path, 1)[0]
    box.add("pacs", f, key="k", destination="d")
    box.deliver("pacs", "d", lambda p, i: None)
    assert box.add("pacs", f, key="k", destination="d").status == "sent"
    f.write_bytes(b"changed")
    assert box.add("pacs", f, key="k", destination="d").status == "pending"


# -- on the wire: TLS verification and auth headers against local HTTP(S) endpoints ------------------------------

class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        type(self).seen.append(dict(self.headers))
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(401)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


def _serve(server: http.server.HTTPServer) -> threading.Thread:
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    return t


@pytest.fixture
def export_dir(tmp_path: Path) -> Path:
    study = make_study(tmp_path / "in", n_cycles=1)
    (tmp_path / "out" / "dicom").mkdir(parents=True)
    for f in study.reference_ct_source.files[:3]:
        shutil.copy(f, tmp_path / "out" / "dicom")
    return tmp_path / "out"


@pytest.mark.parametrize("creds,expected", [
    (PacsCredentials(token="tok-123"), "Bearer tok-123"),
    (PacsCredentials(user="u", password=SECRET), "Basic "),
])
def test_auth_header_sent_and_refusal_keeps_items(export_dir: Path, creds: PacsCredentials, expected: str) -> None:
    _Recorder.seen = []
    server = http.server.HTTPServer(("127.0.0.1", 0), _Recorder)
    _serve(server)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
        client = open_pacs(url, credentials=creds, settings=PacsSettings(timeout_s=5))
        res = push_dicom_directory(export_dir, url, client=client)
    finally:
        server.shutdown()
        server.server_close()
    assert _Recorder.seen and _Recorder.seen[0]["Authorization"].startswith(expected)
    assert len(_Recorder.seen) == 1  # a 401 stops the push: the other instances are not tried
    assert not res.ok and res.pending == 3 and "authentication refused" in res.describe()
    assert SECRET not in res.describe()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_tls_certificates_are_verified_by_default(export_dir: Path, tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    _Recorder.seen = []
    server = http.server.HTTPServer(("127.0.0.1", 0), _Recorder)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    _serve(server)
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}/dicom-web"
        res = push_dicom_directory(export_dir, url, client=open_pacs(
            url, credentials=PacsCredentials(token="t"), settings=PacsSettings(timeout_s=5)))
    finally:
        server.shutdown()
        server.server_close()
    # the self-signed certificate is refused before any request is sent, and nothing is lost
    assert _Recorder.seen == []
    # one line naming the certificate problem and the setting that fixes it
    assert not res.ok and res.pending == 3
    assert "TLS verification" in res.describe() and "self-signed certificate" in res.describe()
    assert "THERATWIN_PACS_CA_BUNDLE" in res.describe()
    assert len(Outbox(export_dir / "outbox").pending("pacs")) == 3
