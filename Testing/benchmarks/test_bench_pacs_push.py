"""Benchmark: push of one patient's DICOM results (demo-sized) to Orthanc on loopback.

Budget (docs/testing.md, "Benchmarks"): one patient to Orthanc + FHIR server in <= 2 s; the FHIR benchmark keeps its part under
1.5 s, so the DICOM part is asserted here at <= 2 s on its own (the two run against separate servers).
Baseline measured in the same run: the same number of bytes sent as ONE plain STOW-RS request (dicomweb-client,
same server, a second export with new UIDs), without the outbox, per-instance requests or the QIDO-RS
confirmation of each instance; the printed ratio is what that bookkeeping costs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from dicom_synth import make_results, make_study  # noqa: E402
from servers.orthanc import Orthanc, orthanc_available  # noqa: E402

import theratwin as tt  # noqa: E402
from theratwin.dicom.export import export_dicom  # noqa: E402
from theratwin.push import push_dicom_directory  # noqa: E402

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not orthanc_available(), reason="Orthanc not installed")]

DEMO_DOSE_SHAPE = (112, 128, 128)  # the demo patient's SPECT grid: 6 RT Dose objects of ~3.7 MB each


def _demo_sized(tmp: Path) -> tuple[Path, int]:
    study = make_study(tmp / "input", n_cycles=2)
    res = make_results(study)
    g = tt.Geometry(DEMO_DOSE_SHAPE, (4.8, 4.8, 4.8), (-300.0, -300.0, -260.0))
    rng = np.random.default_rng(1)
    for key in list(res.maps):
        if key.endswith(("dose", "bed")):
            res.maps[key] = tt.ImageVolume.from_geometry(rng.random(DEMO_DOSE_SHAPE, np.float32) * 8, g, "Gy")
    out = tmp / "out"
    rep = export_dicom(res, out)
    return out, sum((out / f).stat().st_size for f in rep.all_files)


def test_bench_pacs_push(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = Orthanc(tmp_path / "orthanc")
    try:
        server.start()
        monkeypatch.setenv("THERATWIN_PACS_USER", server.user)
        monkeypatch.setenv("THERATWIN_PACS_PASSWORD", server.password)
        cfg = tmp_path / "cfg.json"
        cfg.write_text("{}")
        monkeypatch.setenv("THERATWIN_CONFIG", str(cfg))
        out, nbytes = _demo_sized(tmp_path / "a")
        base_dir, _ = _demo_sized(tmp_path / "b")

        def baseline() -> float:
            from dicomweb_client.api import DICOMwebClient

            s = requests.Session()
            s.auth = (server.user, server.password)
            client = DICOMwebClient(server.dicomweb_url, session=s)
            datasets = [pydicom.dcmread(p) for p in sorted((base_dir / "dicom").glob("*.dcm"))]
            t0 = time.perf_counter()
            client.store_instances(datasets)
            return time.perf_counter() - t0

        def push() -> tuple[float, object]:
            t0 = time.perf_counter()
            r = push_dicom_directory(out, server.dicomweb_url)
            return time.perf_counter() - t0, r

        base_s = server.call(baseline)
        push_s, res = server.call(push)
        repush_s, again = server.call(push)
    finally:
        server.close()
    assert res.ok and again.ok and again.sent == []
    print(f"\nPACS push of one patient ({len(res.sent)} objects, {nbytes / 1e6:.1f} MB) by STOW-RS with outbox and "
          f"QIDO-RS confirmation: {push_s * 1e3:.0f} ms; re-push (nothing to send) {repush_s * 1e3:.0f} ms; "
          f"baseline one plain STOW-RS request {base_s * 1e3:.0f} ms; ratio {push_s / base_s:.2f}x")
    assert push_s <= 2.0
