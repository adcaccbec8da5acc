"""FHIR bundle building: structure, codes, units, identifiers, references (no server needed)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from pydicom.sr.codedict import codes
from test_fhir_support import NUMBERS, STUDY_UID, STUDY_UID_2, make_results

import theratwin as tt
from theratwin.fhir import (
    CONCEPTS,
    THERATWIN_SYSTEM,
    BundleOptions,
    build_bundle,
    codesystem_resource,
    load_published_codesystem,
    validate_bundle,
    validate_resource,
)
from theratwin.fhir.codes import DCM_SYSTEM, SNOMED_SYSTEM, UCUM_SYSTEM


def _by_type(bundle: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for e in bundle["entry"]:
        out.setdefault(e["resource"]["resourceType"], []).append(e)
    return out


@pytest.fixture
def built(tmp_path: Path) -> tuple[tt.Results, dict, Path]:
    res = make_results(tmp_path)
    return res, build_bundle(res, out_dir=tmp_path), tmp_path


def test_every_resource_validates_with_fhir_resources(built):
    _, bundle, _ = built
    model = validate_bundle(bundle)
    assert model.type == "transaction"
    # and the JSON round trip through the R4B model keeps every entry
    assert len(model.entry) == len(bundle["entry"])


def test_resource_counts_and_conditional_creates(built):
    res, bundle, _ = built
    types = Counter(e["resource"]["resourceType"] for e in bundle["entry"])
    n_struct = len(NUMBERS)
    # one panel per structure and cycle, plus the twin's predicted structures for cycle 3
    n_pred = len(res.twin["prediction"]["structures"])
    assert types == Counter({"Patient": 1, "ImagingStudy": 2, "MedicationAdministration": 2,
                             "Observation": 2 * n_struct + n_pred, "DiagnosticReport": 1,
                             "RiskAssessment": 2, "CarePlan": 1, "Device": 1, "Provenance": 1})
    for e in bundle["entry"]:
        assert e["fullUrl"].startswith("urn:uuid:")
        assert e["request"]["method"] == "POST"
        assert e["request"]["ifNoneExist"], e["resource"]["resourceType"]
    full_urls = [e["fullUrl"] for e in bundle["entry"]]
    assert len(set(full_urls)) == len(full_urls)


def test_bundle_is_deterministic(tmp_path: Path):
    res = make_results(tmp_path)
    a = build_bundle(res, out_dir=tmp_path)
    b = build_bundle(res, out_dir=tmp_path)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_every_reference_resolves_inside_the_bundle(built):
    _, bundle, _ = built
    urls = {e["fullUrl"] for e in bundle["entry"]}
    refs: list[str] = []

    def walk(v):
        if isinstance(v, dict):
            for k, x in v.items():
                if k == "reference":
                    refs.append(x)
                else:
                    walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk([e["resource"] for e in bundle["entry"]])
    assert refs and all(r in urls for r in refs)


def test_patient_from_dicom_identity(built):
    res, bundle, _ = built
    pat = _by_type(bundle)["Patient"][0]
    p = pat["resource"]
    assert p["identifier"][0]["value"] == res.study.patient.patient_id
    assert pat["request"]["ifNoneExist"].startswith("identifier=")
    assert p["identifier"][0]["value"] in pat["request"]["ifNoneExist"]
    assert p["gender"] == "female" and p["birthDate"] == "1955-06-01"
    assert p["name"][0]["family"] == "Doe" and p["name"][0]["given"] == ["Jane", "Q"]


def test_imaging_study_lists_the_written_dicom_series(built):
    res, bundle, out = built
    imgs = {e["resource"]["identifier"][0]["value"]: e["resource"] for e in _by_type(bundle)["ImagingStudy"]}
    assert set(imgs) == {f"urn:oid:{STUDY_UID}", f"urn:oid:{STUDY_UID_2}"}
    for img in imgs.values():
        assert img["identifier"][0]["system"] == "urn:dicom:uid"
        assert img["numberOfSeries"] == len(img["series"])
        assert img["numberOfInstances"] == sum(len(s.get("instance", [])) for s in img["series"])
    series = {s["uid"]: s for img in imgs.values() for s in img["series"]}
    for rel in res.outputs["dicom"]:
        ds = pydicom.dcmread(out / rel)
        s = series[ds.SeriesInstanceUID]
        assert s["modality"] == {"system": DCM_SYSTEM, "code": ds.Modality}
        assert s["instance"][0]["uid"] == ds.SOPInstanceUID
        assert s["instance"][0]["sopClass"]["code"] == f"urn:oid:{ds.SOPClassUID}"
    # and the input SPECT series of every time point, in the ImagingStudy of its own DICOM study
    for c in res.study.cycles:
        for tp in c.time_points:
            assert tp.source.series_uid in {s["uid"] for s in imgs[f"urn:oid:{tp.source.study_uid}"]["series"]}


def test_medication_administration_activity_in_MBq(built):
    res, bundle, _ = built
    mas = [e["resource"] for e in _by_type(bundle)["MedicationAdministration"]]
    for ma, c in zip(mas, res.study.cycles, strict=True):
        dose = ma["dosage"]["dose"]
        assert dose == {"value": c.administration.activity_MBq, "unit": "MBq", "system": UCUM_SYSTEM, "code": "MBq"}
        assert ma["effectiveDateTime"].startswith(c.administration.start.isoformat())
        assert ma["dosage"]["route"]["coding"][0]["code"] == codes.SCT.IntravenousRoute.value
        assert "PSMA-617" in ma["medicationCodeableConcept"]["text"]


def _component(obs: dict, code: str) -> dict:
    found = [c for c in obs["component"] if c["code"]["coding"][0]["code"] == code]
    assert len(found) == 1, code
    return found[0]


def test_observations_carry_the_results_with_ucum_units_and_codes(built):
    res, bundle, _ = built
    entries = _by_type(bundle)
    img_url = {e["resource"]["identifier"][0]["value"]: e["fullUrl"] for e in entries["ImagingStudy"]}
    pat_url = entries["Patient"][0]["fullUrl"]
    measured = [e for e in entries["Observation"] if e["resource"]["status"] == "final"]
    seen = set()
    for e in measured:
        o = e["resource"]
        n = int(o["code"]["text"].rsplit(" ", 1)[1])
        name = o["bodySite"]["text"]
        seen.add((n, name))
        sr = res.cycles[n].structures[name]
        dose = _component(o, codes.DCM.MeanAbsorbedRadiationDose.value)
        assert dose["code"]["coding"][0]["system"] == DCM_SYSTEM
        assert dose["valueQuantity"]["value"] == pytest.approx(sr.mean_dose_Gy)
        assert dose["valueQuantity"]["code"] == "Gy" and dose["valueQuantity"]["system"] == UCUM_SYSTEM
        for code, field, unit in (("biologically-effective-dose", "bed_Gy", "Gy"),
                                  ("equieffective-dose-2gy", "eqd2_Gy", "Gy"),
                                  ("time-integrated-activity", "tia_MBq_h", "MBq.h"),
                                  ("effective-half-life", "effective_half_life_h", "h")):
            q = _component(o, code)["valueQuantity"]
            assert q["value"] == pytest.approx(getattr(sr, field)) and q["code"] == unit
            assert _component(o, code)["code"]["coding"][0]["system"] == THERATWIN_SYSTEM
        assert o["subject"]["reference"] == pat_url
        # cycle 1 from its own study (which also holds the RT Dose/SEG/SR); cycle 2 also from its session
        expected = {img_url[f"urn:oid:{STUDY_UID}"]} | ({img_url[f"urn:oid:{STUDY_UID_2}"]} if n == 2 else set())
        assert {d["reference"] for d in o["derivedFrom"]} == expected
        adm_url = entries["MedicationAdministration"][n - 1]["fullUrl"]
        assert o["partOf"] == [{"reference": adm_url}]
    assert seen == {(n, s) for n in (1, 2) for s in NUMBERS}


def test_body_site_snomed_from_structure_kind(built):
    res, bundle, _ = built
    kinds = {s.name: s.kind for s in res.study.segmentation.structures}
    for e in _by_type(bundle)["Observation"]:
        o = e["resource"]
        name = o["bodySite"]["text"]
        coding = o["bodySite"]["coding"][0]
        assert coding["system"] == SNOMED_SYSTEM
        k = kinds[name]
        expected = k.anatomic_region if k.role.value == "lesion" and k.anatomic_region else k.type
        assert coding["code"] == expected.value
    # spot check against the standard dictionary: kidney, bone (lesion's region)
    codes_used = {e["resource"]["bodySite"]["coding"][0]["code"] for e in _by_type(bundle)["Observation"]}
    assert {codes.SCT.Kidney.value, codes.SCT.Bone.value, codes.SCT.ParotidGland.value} <= codes_used


def test_predicted_values_are_marked(built):
    res, bundle, _ = built
    preds = [e["resource"] for e in _by_type(bundle)["Observation"] if e["resource"]["status"] == "preliminary"]
    assert len(preds) == len(res.twin["prediction"]["structures"])
    for o in preds:
        assert o["code"]["coding"][0]["code"] == "predicted-structure-dosimetry"
        assert "PREDICTED" in o["code"]["text"]
        assert o["method"]["coding"][0]["code"] == "twin-prediction"
        assert any(t["code"] == "twin-prediction" for t in o["meta"]["tag"])
        assert "not a measurement" in o["note"][0]["text"]
    kid = next(o for o in preds if o["bodySite"]["text"] == "kidneys")
    truth = res.twin["prediction"]["structures"]["kidneys"]
    for key, code in (("tia_MBq_h", "predicted-time-integrated-activity"), ("dose_Gy", "predicted-absorbed-dose"),
                      ("bed_Gy", "predicted-biologically-effective-dose"),
                      ("cumulative_dose_Gy", "predicted-cumulative-absorbed-dose"),
                      ("cumulative_bed_Gy", "predicted-cumulative-biologically-effective-dose"),
                      ("cumulative_eqd2_Gy", "predicted-cumulative-equieffective-dose-2gy")):
        assert _component(kid, code)["valueQuantity"]["value"] == truth[key]["mean"]
    intervals = [c for c in kid["component"] if c["code"]["coding"][0]["code"] == "prediction-interval-90"]
    assert len(intervals) == 6
    dose_pi = next(c for c in intervals if "absorbed dose" in c["code"]["text"])
    assert (dose_pi["valueRange"]["low"]["value"], dose_pi["valueRange"]["high"]["value"]) == (3.1, 4.2)
    # and nothing predicted is presented as final
    finals = [e["resource"] for e in _by_type(bundle)["Observation"] if e["resource"]["status"] == "final"]
    assert all(c["code"]["coding"][0]["code"] != "predicted-absorbed-dose" for o in finals for c in o["component"])


def test_diagnostic_report_groups_observations_and_embeds_report(built):
    _, bundle, out = built
    entries = _by_type(bundle)
    dr = entries["DiagnosticReport"][0]["resource"]
    assert {r["reference"] for r in dr["result"]} == {e["fullUrl"] for e in entries["Observation"]}
    form = dr["presentedForm"][0]
    data = (out / "report.html").read_bytes()
    assert form["contentType"] == "text/html"
    assert base64.b64decode(form["data"]) == data
    assert form["size"] == len(data)
    assert base64.b64decode(form["hash"]) == hashlib.sha1(data).digest()
    assert "RESEARCH USE ONLY" in dr["conclusion"]


def test_risk_assessment_and_care_plan_from_twin(built):
    res, bundle, _ = built
    entries = _by_type(bundle)
    ras = {e["resource"]["code"]["coding"][0]["code"]: e["resource"] for e in entries["RiskAssessment"]}
    tox = ras["organ-toxicity-forecast"]["prediction"][0]
    assert tox["probabilityDecimal"] == res.twin["forecast"]["toxicity"]["kidneys"]["probability"]["mean"]
    assert "kidneys" in tox["outcome"]["text"]
    assert "lkb_kidney_burman1991" in tox["rationale"] and "Burman 1991" in tox["rationale"]
    resp = ras["lesion-response-forecast"]["prediction"][0]
    assert resp["probabilityDecimal"] == res.twin["forecast"]["response"]["probability"]["mean"]
    assert "0.55 to 0.85" in resp["rationale"]
    # the response forecast rests on the lesions' dosimetry, the toxicity forecast on the kidneys'
    by_url = {e["fullUrl"]: e["resource"] for e in bundle["entry"]}
    resp_basis = [by_url[b["reference"]] for b in ras["lesion-response-forecast"]["basis"]]
    assert {o["bodySite"]["text"] for o in resp_basis if o["resourceType"] == "Observation"} == {"lesion_bone_1"}
    tox_basis = [by_url[b["reference"]] for b in ras["organ-toxicity-forecast"]["basis"]]
    assert {o["bodySite"]["text"] for o in tox_basis if o["resourceType"] == "Observation"} == {"kidneys"}
    for ra in ras.values():
        assert "RESEARCH USE ONLY" in ra["note"][0]["text"]
        assert ra["basis"]
    cp = entries["CarePlan"][0]["resource"]
    assert cp["intent"] == "proposal"
    q = cp["activity"][0]["detail"]["quantity"]
    assert q == {"value": 8200.0, "unit": "MBq", "system": UCUM_SYSTEM, "code": "MBq"}


def test_provenance_names_software_version_and_methods(built):
    res, bundle, _ = built
    entries = _by_type(bundle)
    prov = entries["Provenance"][0]["resource"]
    dev = entries["Device"][0]
    assert prov["agent"][0]["who"]["reference"] == dev["fullUrl"]
    assert dev["resource"]["version"][0]["value"] == tt.__version__
    texts = [e["what"].get("display", "") for e in prov["entity"] if e["role"] == "derivation"]
    for m in res.methods:
        assert any(m.method in t and m.stage in t for t in texts)
    assert entries["Provenance"][0]["request"]["ifNoneExist"].startswith("_tag=")
    targets = {t["reference"] for t in prov["target"]}
    assert {e["fullUrl"] for e in entries["Observation"]} <= targets


def test_naive_datetimes_take_the_configured_zone(tmp_path: Path):
    res = make_results(tmp_path)
    b = build_bundle(res, out_dir=tmp_path, options=BundleOptions(timezone="Europe/Berlin"))
    ma = _by_type(b)["MedicationAdministration"][0]["resource"]
    assert ma["effectiveDateTime"] == "2026-03-02T09:00:00+01:00"  # CET in March (before DST)
    ma2 = _by_type(b)["MedicationAdministration"][1]["resource"]
    assert ma2["effectiveDateTime"] == "2026-04-27T09:30:00+02:00"  # CEST in April


def test_invalid_options_are_refused(tmp_path: Path):
    res = make_results(tmp_path)
    with pytest.raises(tt.ConfigurationError, match="Mars/Olympus"):
        build_bundle(res, options=BundleOptions(timezone="Mars/Olympus"))
    with pytest.raises(tt.ConfigurationError, match="colour"):
        BundleOptions.from_dict({"colour": "red"})


def test_fhir_resources_rejects_a_broken_resource():
    with pytest.raises(tt.InvalidInputError, match="Observation"):
        validate_resource({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                           "valueQuantity": {"value": "three"}})


def test_published_codesystem_matches_the_code(built):
    _, bundle, _ = built
    published = load_published_codesystem()
    assert published == codesystem_resource()
    validate_resource(published)
    assert published["url"] == THERATWIN_SYSTEM and published["count"] == len(published["concept"])
    # every project code used in the bundle is defined in the published CodeSystem
    defined = {c["code"] for c in published["concept"]}
    used = set()

    def walk(v):
        if isinstance(v, dict):
            if v.get("system") == THERATWIN_SYSTEM and "code" in v:
                used.add(v["code"])
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(bundle)
    assert used and used <= defined
    assert set(CONCEPTS) == defined


def test_pipeline_stage_writes_the_bundle(tmp_path: Path):
    from theratwin.fhir.stage import FhirExportStage
    from theratwin.pipeline.core import PipelineConfig, PipelineContext

    res = make_results(tmp_path)
    ctx = PipelineContext(res.study, res, PipelineConfig(), tmp_path)
    FhirExportStage().run(ctx)
    assert res.outputs["fhir_bundle"] == "fhir-bundle.json"
    written = json.loads((tmp_path / "fhir-bundle.json").read_text())
    assert written == json.loads(json.dumps(build_bundle(res, out_dir=tmp_path)))
    assert any(m.stage == "fhir_export" for m in res.methods)


def test_twin_estimate_of_a_sparse_cycle_is_kept_apart(built):
    res, bundle, _ = built
    est = res.cycles[2].structures["kidneys"].estimated_by_twin
    obs = next(e["resource"] for e in _by_type(bundle)["Observation"]
               if e["resource"]["status"] == "final" and e["resource"]["code"]["text"] == "Dosimetry of kidneys, cycle 2")
    twin = _component(obs, "twin-estimated-time-integrated-activity")["valueQuantity"]
    assert twin["value"] == est["tia_MBq_h"] and twin["code"] == "MBq.h"
    kin = _component(obs, "time-integrated-activity")["valueQuantity"]
    assert kin["value"] == pytest.approx(res.cycles[2].structures["kidneys"].tia_MBq_h)
    pi = _component(obs, "prediction-interval-90")["valueRange"]
    assert (pi["low"]["value"], pi["high"]["value"]) == (est["low"], est["high"])
    assert "estimated by the digital twin" in obs["note"][0]["text"]


def test_large_report_is_not_embedded(tmp_path: Path):
    res = make_results(tmp_path)
    (tmp_path / "report.pdf").write_bytes(b"%PDF-1.4\n" + bytes(2000))
    res.outputs["report_pdf"] = "report.pdf"
    b = build_bundle(res, out_dir=tmp_path, options=BundleOptions(max_attachment_bytes=1000))
    dr = _by_type(b)["DiagnosticReport"][0]["resource"]
    assert [f["contentType"] for f in dr["presentedForm"]] == ["text/html"]  # the small one only
    assert "report.pdf too large to embed" in dr["conclusion"]
    b = build_bundle(res, out_dir=tmp_path)
    dr = _by_type(b)["DiagnosticReport"][0]["resource"]
    assert [f["contentType"] for f in dr["presentedForm"]] == ["application/pdf", "text/html"]


def test_dvh_metrics_and_organ_limits(built):
    res, bundle, _ = built
    obs = {e["resource"]["code"]["text"]: e["resource"] for e in _by_type(bundle)["Observation"]
           if e["resource"]["status"] == "final"}
    for n in (1, 2):
        sr = res.cycles[n].structures["kidneys"]
        o = obs[f"Dosimetry of kidneys, cycle {n}"]
        for key, code in (("Dmax_Gy", codes.DCM.MaximumAbsorbedRadiationDose.value),
                          ("Dmin_Gy", codes.DCM.MinimumAbsorbedRadiationDose.value),
                          ("D50_Gy", codes.DCM.MedianAbsorbedRadiationDose.value),
                          ("D2_Gy", "dose-to-2-percent-volume"), ("D98_Gy", "dose-to-98-percent-volume")):
            assert _component(o, code)["valueQuantity"]["value"] == pytest.approx(sr.dvh_metrics[key])
        cum = _component(o, "cumulative-biologically-effective-dose")
        assert cum["referenceRange"][0]["high"]["value"] == sr.limit["value_Gy"]
        assert "Bodei" in cum["referenceRange"][0]["text"]
        # cycle 1: 4.6 Gy under 40 Gy -> N; cycle 2 (synthetic 8 Gy limit): 8.74 Gy -> H
        above = sr.cumulative_bed_Gy > sr.limit["value_Gy"]
        assert above == (n == 2)
        assert cum["interpretation"][0]["coding"][0]["code"] == ("H" if above else "N")


def test_dicomweb_endpoint_for_viewers(tmp_path: Path):
    res = make_results(tmp_path)
    b = build_bundle(res, out_dir=tmp_path, options=BundleOptions(dicomweb_url="https://pacs.example/dicom-web/"))
    ep = _by_type(b)["Endpoint"]
    assert len(ep) == 1 and ep[0]["resource"]["address"] == "https://pacs.example/dicom-web"
    assert ep[0]["resource"]["connectionType"]["code"] == "dicom-wado-rs"
    for img in _by_type(b)["ImagingStudy"]:
        assert img["resource"]["endpoint"] == [{"reference": ep[0]["fullUrl"]}]
    validate_bundle(b)
    with pytest.raises(tt.ConfigurationError, match="without credentials"):
        build_bundle(res, out_dir=tmp_path, options=BundleOptions(dicomweb_url="https://u:p@pacs.example/dw"))


def test_minimal_results_give_a_valid_bundle(small_study: tt.Study):
    """Only the study (no dosimetry, no twin, no files, no DICOM UIDs): patient, administration, report."""
    res = tt.Results.for_study(small_study)
    b = build_bundle(res)
    types = Counter(e["resource"]["resourceType"] for e in b["entry"])
    assert types == Counter({"Patient": 1, "MedicationAdministration": 1, "DiagnosticReport": 1, "Device": 1,
                             "Provenance": 1})
    dr = _by_type(b)["DiagnosticReport"][0]["resource"]
    assert "result" not in dr and "presentedForm" not in dr
    validate_bundle(b)


def _same_meaning(a, b, where: str = "") -> list[str]:
    """Differences between two JSON trees; datetimes compare as instants (+00:00 and Z are the same)."""
    from datetime import datetime as _dt

    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}.{k}: missing on one side" for k in set(a) ^ set(b)]
        for k in set(a) & set(b):
            out += _same_meaning(a[k], b[k], f"{where}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} vs {len(b)} items"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _same_meaning(x, y, f"{where}[{i}]")]
    if isinstance(a, str) and isinstance(b, str) and a != b:
        try:
            if _dt.fromisoformat(a.replace("Z", "+00:00")) == _dt.fromisoformat(b.replace("Z", "+00:00")):
                return []
        except ValueError:
            pass
    return [] if a == b else [f"{where}: {a!r} vs {b!r}"]


def test_fhir_resources_reads_the_bundle_back_unchanged(built):
    """Parsed by the R4B models and serialised again, the bundle says the same thing."""
    _, bundle, _ = built
    back = json.loads(validate_bundle(bundle).model_dump_json(exclude_none=True))
    assert _same_meaning(json.loads(json.dumps(bundle)), back) == []
    back["entry"][0]["resource"]["birthDate"] = "1955-06-02"  # the comparison does see a change
    assert _same_meaning(json.loads(json.dumps(bundle)), back) == [
        ".entry[0].resource.birthDate: '1955-06-01' vs '1955-06-02'"]
