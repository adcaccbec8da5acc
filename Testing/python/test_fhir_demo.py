"""The demo patient through the whole pipeline, its FHIR bundle pushed to the Medplum test server.

Uses the fast demo grid (9.6 mm) from the shared demo cache; the pipeline runs once for the module.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from test_fhir_support import FhirTestServer, assert_stored_as_sent

from theratwin.fhir import FhirAuth, FhirClient, push_bundle, push_output_dir, validate_bundle

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    from theratwin.demo import build_demo
    from theratwin.dicom import read_study
    from theratwin.pipeline import Pipeline

    demo = build_demo(fast=True)
    out = tmp_path_factory.mktemp("demo-fhir")
    results = Pipeline().run(read_study(demo.dicom_dir), out_dir=out)
    return results, out


def test_demo_bundle_is_written_and_valid(demo_run):
    results, out = demo_run
    assert results.outputs["fhir_bundle"] == "fhir-bundle.json"
    bundle = json.loads((out / "fhir-bundle.json").read_text())
    validate_bundle(bundle)
    types = Counter(e["resource"]["resourceType"] for e in bundle["entry"])
    assert types["Patient"] == 1 and types["DiagnosticReport"] == 1 and types["Provenance"] == 1
    assert types["MedicationAdministration"] == len(results.study.cycles)
    n_panels = sum(1 for cr in results.cycles.values() for sr in cr.structures.values()
                   if sr.mean_dose_Gy is not None or sr.tia_MBq_h is not None)
    finals = [e["resource"] for e in bundle["entry"]
              if e["resource"]["resourceType"] == "Observation" and e["resource"]["status"] == "final"]
    assert len(finals) == n_panels
    # every DICOM object the DICOM stage wrote is listed in the ImagingStudy
    series = {s["uid"] for e in bundle["entry"] if e["resource"]["resourceType"] == "ImagingStudy"
              for s in e["resource"]["series"]}
    import pydicom

    for rel in results.outputs.get("dicom", []):
        assert pydicom.dcmread(out / rel, stop_before_pixels=True).SeriesInstanceUID in series
    if results.twin and results.twin.get("prediction"):
        assert any(e["resource"]["resourceType"] == "Observation" and e["resource"]["status"] == "preliminary"
                   for e in bundle["entry"])


def test_demo_push_accepted_read_back_and_not_duplicated(demo_run):
    results, out = demo_run
    bundle = json.loads((out / "fhir-bundle.json").read_text())
    with FhirTestServer() as srv:
        c = FhirClient(srv.url, auth=FhirAuth(), retries=1, backoff_s=0.05)
        first = push_output_dir(out, srv.url, client=c)
        assert first.ok, first.describe()
        summary = first.sent[0][1]
        assert summary.n_created == len(bundle["entry"])
        # every resource read back equals what was sent (references resolved to the stored resources)
        response = {"entry": [{"response": {"location": loc}} for loc in summary.locations]}
        assert_stored_as_sent(c, bundle, response)
        expected = Counter(e["resource"]["resourceType"] for e in bundle["entry"])
        assert Counter({t: c.count(t) for t in expected}) == expected
        # the doses read back from the server are the pipeline's
        pid = results.study.patient.patient_id
        patient = c.search("Patient", {"identifier": pid})
        assert len(patient) == 1
        for o in c.search("Observation", {"subject": f"Patient/{patient[0]['id']}", "status": "final"}):
            n = int(o["code"]["text"].rsplit(" ", 1)[1])
            sr = results.cycles[n].structures[o["bodySite"]["text"]]
            dose = [x for x in o["component"] if x["code"]["coding"][0]["code"] == "128533"]
            if sr.mean_dose_Gy is not None:
                assert dose[0]["valueQuantity"]["value"] == pytest.approx(sr.mean_dose_Gy, rel=1e-12)
        again = push_bundle(bundle, c)  # sent again (as after a lost answer)
        assert again.n_created == 0 and again.n_existing == len(bundle["entry"])
        second = push_output_dir(out, srv.url, client=c)  # `theratwin push`: already delivered
        assert second.ok and second.sent == []
        assert Counter({t: c.count(t) for t in expected}) == expected
