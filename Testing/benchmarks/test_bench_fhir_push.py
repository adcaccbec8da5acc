"""Benchmark: push of one patient's FHIR bundle to the Medplum test server on loopback.

Budget (docs/testing.md, "Benchmarks"): a push of one patient to Orthanc + FHIR server on loopback in <= 2 s; this file measures
the FHIR part and asserts it stays under 1.5 s, leaving room for the DICOM part. Baseline measured in the same
run: one plain Patient create (a single validated resource, same server, same client), so the printed ratio
says how many single-resource round trips the whole transaction costs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from test_fhir_support import FhirTestServer, make_results  # noqa: E402

from theratwin.fhir import FhirAuth, FhirClient, build_bundle, push_bundle  # noqa: E402

pytestmark = pytest.mark.integration


def test_bench_fhir_push(tmp_path: Path) -> None:
    res = make_results(tmp_path)
    # the demo patient's size: 15 structures x 2 cycles (+ predictions), like `theratwin demo`
    for n in res.cycles:
        for i in range(12):
            sr = res.cycles[n].structure(f"lesion_node_{i + 1}")
            sr.mean_dose_Gy, sr.bed_Gy, sr.eqd2_Gy, sr.tia_MBq_h = 10.0 + i, 12.0 + i, 9.0 + i, 5000.0 + 100 * i
    bundle = build_bundle(res, out_dir=tmp_path)
    with FhirTestServer() as srv:
        c = FhirClient(srv.url, auth=FhirAuth(), retries=0)
        # warm-up (JIT, connection) with an unrelated resource
        c.request("POST", "Patient", json_body={"resourceType": "Patient", "gender": "unknown"})
        t0 = time.perf_counter()
        n_base = 20
        for i in range(n_base):
            c.request("POST", "Patient", json_body={"resourceType": "Patient",
                                                     "identifier": [{"system": "urn:bench", "value": str(i)}]})
        base_s = (time.perf_counter() - t0) / n_base
        t0 = time.perf_counter()
        summary = push_bundle(bundle, c)
        push_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = push_bundle(bundle, c)
        repush_s = time.perf_counter() - t0
    n = len(bundle["entry"])
    assert summary.n_created == n and again.n_existing == n
    print(f"\nFHIR push of one patient ({n} resources, {len(str(bundle)) / 1e3:.0f} kB): {push_s * 1e3:.0f} ms; "
          f"re-push (all existing) {repush_s * 1e3:.0f} ms; baseline single Patient create {base_s * 1e3:.1f} ms; "
          f"ratio push/baseline {push_s / base_s:.1f}x")
    assert push_s <= 1.5
