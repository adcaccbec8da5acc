"""Pushes against misbehaving servers on loopback: one that answers 503, one that trickles a byte now and then,
one that never answers. Each push ends within its configured limits with one clear line, and the outbox keeps
every item with its attempt count (DICOMweb, DIMSE and FHIR)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dicom_synth import make_study
from servers.misbehaving import FakeServer

from theratwin.dicom.outbox import Outbox
from theratwin.dicom.pacs import PacsCredentials, PacsSettings, open_pacs
from theratwin.fhir import FhirAuth, FhirClient, push_output_dir
from theratwin.push import push_dicom_directory


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[FakeServer]:
    srv = FakeServer(request.param)
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three DICOM objects of one patient in an output folder's dicom/ (no manifest: an older folder)."""
    root = tmp_path_factory.mktemp("net")
    study = make_study(root / "in", n_cycles=1)
    (root / "out" / "dicom").mkdir(parents=True)
    for f in study.reference_ct_source.files[:3]:
        shutil.copy(f, root / "out" / "dicom")
    (root / "out" / "fhir-bundle.json").write_text(json.dumps(
        {"resourceType": "Bundle", "type": "transaction", "entry": []}))
    return root / "out"


def _fresh(export_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(export_dir, out)
    return out


LIMITS = PacsSettings(connect_timeout_s=1.0, timeout_s=1.0, total_timeout_s=2.5, max_attempts=3, retry_wait_ms=100)


@pytest.mark.parametrize("server", ["503", "trickle", "silent"], indirect=True)
def test_dicomweb_push_ends_within_its_limits(server: FakeServer, export_dir: Path, tmp_path: Path) -> None:
    out = _fresh(export_dir, tmp_path)
    url = f"http://127.0.0.1:{server.port}/dicom-web"
    t0 = time.perf_counter()
    res = push_dicom_directory(out, url, client=open_pacs(url, credentials=PacsCredentials(token="t"),
                                                          settings=LIMITS))
    seconds = time.perf_counter() - t0
    text = res.describe()
    print(f"{server.mode}: {seconds:.2f} s, {server.requests} request(s): {text}")
    assert seconds <= LIMITS.total_timeout_s + 1.0
    assert not res.ok and res.pending == 3 and len(text.splitlines()) == 1 and "RetryError" not in text
    if server.mode == "503":
        assert server.requests == LIMITS.max_attempts  # bounded: three tries, then the outbox keeps it
        assert "HTTP 503 (Service Unavailable), 3 time(s)" in text and "overloaded" in text
    elif server.mode == "trickle":
        assert "total time limit" in text and seconds >= LIMITS.total_timeout_s - 0.2
    else:
        assert "no answer in time" in text or "total time limit" in text
    items = {i.key: i for i in Outbox(out / "outbox").pending("pacs")}
    assert len(items) == 3 and sorted(i.attempts for i in items.values()) == [0, 0, 1]
    assert all(out.joinpath("outbox", "pacs", i.file).is_file() for i in items.values())
    assert next(i for i in items.values() if i.attempts).last_error in text


@pytest.mark.parametrize("server", ["503", "trickle", "silent"], indirect=True)
def test_fhir_push_ends_within_its_limits(server: FakeServer, export_dir: Path, tmp_path: Path) -> None:
    out = _fresh(export_dir, tmp_path)
    url = f"http://127.0.0.1:{server.port}/fhir"
    client = FhirClient(url, auth=FhirAuth(), timeout_s=1.0, connect_timeout_s=1.0, total_timeout_s=2.5, retries=2,
                        backoff_s=0.1)
    t0 = time.perf_counter()
    rep = push_output_dir(out, url, client=client)
    seconds = time.perf_counter() - t0
    text = rep.describe()
    print(f"{server.mode}: {seconds:.2f} s, {server.requests} request(s): {text}")
    assert seconds <= 2.5 + 1.0 and not rep.ok and "Traceback" not in text
    if server.mode == "503":
        assert server.requests == 3 and "HTTP 503 after 3 tries" in text
    elif server.mode == "trickle":
        assert "total time limit" in text
    else:
        assert "no answer in time" in text or "total time limit" in text
    [item] = Outbox(out / "outbox").pending("fhir")
    assert item.attempts == 1 and out.joinpath("outbox", "fhir", item.file).is_file()


@pytest.mark.parametrize("server", ["silent"], indirect=True)
def test_dimse_push_to_a_silent_pacs_ends_within_its_limits(server: FakeServer, export_dir: Path,
                                                            tmp_path: Path) -> None:
    out = _fresh(export_dir, tmp_path)
    url = f"dimse://SILENT@127.0.0.1:{server.port}"
    t0 = time.perf_counter()
    res = push_dicom_directory(out, url, client=open_pacs(url, credentials=PacsCredentials(), settings=LIMITS))
    seconds = time.perf_counter() - t0
    print(f"DIMSE silent: {seconds:.2f} s: {res.describe()}")
    assert seconds <= LIMITS.total_timeout_s + 1.0 and not res.ok and res.pending == 3
    assert "association not established: no answer within 1 s" in res.describe()
    assert sorted(i.attempts for i in Outbox(out / "outbox").pending("pacs")) == [0, 0, 1]


@pytest.mark.parametrize("server", ["503"], indirect=True)
def test_cli_push_to_an_overloaded_pacs_is_one_line_per_destination(server: FakeServer, export_dir: Path,
                                                                    tmp_path: Path) -> None:
    out = _fresh(export_dir, tmp_path)
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"pacs": {"retry_wait_ms": 100}}))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("THERATWIN_")}, "THERATWIN_CONFIG": str(cfg),
           "THERATWIN_PACS_TOKEN": "t", "THERATWIN_PACS_TOTAL_TIMEOUT_S": "5", "THERATWIN_PACS_MAX_ATTEMPTS": "2",
           "THERATWIN_FHIR_TOTAL_TIMEOUT_S": "2", "THERATWIN_FHIR_RETRIES": "1", "THERATWIN_FHIR_BACKOFF_S": "0.1"}
    base = f"http://127.0.0.1:{server.port}"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "theratwin", "push", str(out), "--pacs", f"{base}/dicom-web",
                           "--fhir", f"{base}/fhir"], capture_output=True, text=True, timeout=60, env=env)
    seconds = time.perf_counter() - t0
    print(f"CLI: {seconds:.2f} s\n{proc.stdout}{proc.stderr}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "RetryError" not in proc.stdout + proc.stderr
    pacs, fhir = proc.stdout.strip().splitlines()[:2]
    assert pacs.startswith("PACS") and "HTTP 503 (Service Unavailable), 2 time(s)" in pacs and "NOT sent" in pacs
    assert fhir.startswith("FHIR") and "HTTP 503 after 2 tries" in fhir and "kept in the outbox" in fhir
    assert server.requests == 4  # two tries per destination
    assert len(Outbox(out / "outbox").pending("pacs")) == 3 and len(Outbox(out / "outbox").pending("fhir")) == 1
