"""The extension catalog entry passes the Slicer ExtensionsIndex checks that can run offline.

The ExtensionsIndex CI (``scripts/check_description_files.py`` of github.com/Slicer/ExtensionsIndex, read at
commit 07f1d1b2781c) clones the extension and runs, per description file: JSON schema validation against the
schema its ``$schema`` names, LF-only line endings, extension name (file name must not start with "Slicer"),
category from a list of accepted categories, git repository name (must start with "Slicer"), ``scm_url`` scheme
(https or git), top-level ``CMakeLists.txt`` (``project()`` name equal to the extension name, an
``EXTENSION_ICONURL`` and ``EXTENSION_SCREENSHOTURLS`` that are images), a licence file at the repository
root and a repository of at most 100 MB. Everything but the network look-ups is repeated here, against a copy of
the schema kept in ``Testing/catalog/`` (see its README for provenance); the image URLs are checked to name PNG
files of this repository on the branch the entry builds (``scm_revision``).

``dicom_support_rule`` is a rule-engine expression (schema v1.0.2; Slicer docs, developer_guide/extensions.md)
evaluated on DICOM attributes such as Modality and SOPClassUID; it is compiled and evaluated here with the
``rule-engine`` package itself.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import urllib.parse
from pathlib import Path

import jsonschema
import pytest
import rule_engine
from pydicom import uid

ROOT = Path(__file__).resolve().parents[2]
ENTRY_PATH = ROOT / "TheraTwinExtension" / "TheraTwin.json"
CATALOG = ROOT / "Testing" / "catalog"
#: SHA256 of the schema copy (Testing/catalog/README.md): a changed copy is a different schema.
SCHEMA_SHA256 = {
    "slicer-extension-catalog-entry-schema-v1.0.2.json":
        "07107db15382ab027bf00dcffdd03ae859a43a4ea167a522b5fcaee5c14641a2",
}


def entry() -> dict:
    return json.loads(ENTRY_PATH.read_text(encoding="utf-8"))


def schemaFor(document: dict) -> dict:
    """The kept copy of the schema that ``document["$schema"]`` names (the URL's file name, fragment dropped)."""
    url = document["$schema"].split("#")[0]
    name = Path(urllib.parse.urlsplit(url).path).name
    path = CATALOG / name
    assert path.is_file(), f"no copy of {name} in Testing/catalog/ (the entry names {url})"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SCHEMA_SHA256[name], f"{name} differs from the copy"
    schema = json.loads(path.read_text(encoding="utf-8"))
    assert schema["$id"].split("#")[0] == url, "the copy is not the schema the entry names"
    return schema


def validationErrors(document: dict) -> list[str]:
    schema = schemaFor(document)
    validator = jsonschema.Draft7Validator(schema)
    return sorted(f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                  for e in validator.iter_errors(document))


# ---------------------------------------------------------------------------------------------- schema


def test_the_entry_names_the_current_schema() -> None:
    assert entry()["$schema"].split("#")[0].endswith("slicer-extension-catalog-entry-schema-v1.0.2.json")


def test_the_entry_validates_against_the_schema_it_names() -> None:
    assert validationErrors(entry()) == []


def test_the_validation_catches_what_the_catalog_refuses() -> None:
    """The faults of the former entry: an object as dicom_support_rule, an unknown property, a v1.0.1 schema."""
    bad = entry() | {"dicom_support_rule": {"modalities": ["NM"]}}
    assert any(e.startswith("dicom_support_rule:") for e in validationErrors(bad))
    bad = entry() | {"minimum_slicer_version": "5.12"}
    assert any("Additional properties" in e for e in validationErrors(bad))
    bad = entry()
    bad.pop("scm_url")
    assert any("'scm_url' is a required property" in e for e in validationErrors(bad))
    old = entry() | {"$schema": "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
                                "slicer-extension-catalog-entry-schema-v1.0.1.json#"}
    with pytest.raises(AssertionError, match="no copy"):
        schemaFor(old)


# ---------------------------------------------------------------------------------------------- the other checks


def test_lf_line_endings() -> None:
    data = ENTRY_PATH.read_bytes()
    assert b"\r" not in data


def test_extension_repository_and_url_names() -> None:
    e = entry()
    name = ENTRY_PATH.stem
    assert not name.lower().startswith("slicer"), "the extension name must not start with 'Slicer'"
    # "Nuclear Medicine" is one of ACCEPTED_EXTENSION_CATEGORIES of check_description_files.py
    assert e["category"] == "Nuclear Medicine"
    url = urllib.parse.urlsplit(e["scm_url"])
    assert url.scheme in ("https", "git")
    repository = Path(url.path).stem
    assert repository.startswith("Slicer"), "the git repository name must start with 'Slicer'"
    assert e["build_subdirectory"] == "."
    assert e["build_dependencies"] == []  # SlicerRT is used when present, never required


def test_cmakelists_matches_the_entry() -> None:
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    project = re.findall(r"project\s*\(\s*([^\s\)\n\r]+)", text, re.IGNORECASE)
    assert project and project[0].strip("\"'") == ENTRY_PATH.stem
    icons = re.findall(r'set\s*\(EXTENSION_ICONURL\s*"([^"]+)"[ ]*\)', text, re.IGNORECASE)
    screenshots = re.findall(r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)', text, re.IGNORECASE)
    assert len(icons) == 1 and len(screenshots) == 1
    revision = entry()["scm_revision"]
    repository = Path(urllib.parse.urlsplit(entry()["scm_url"]).path).stem
    for url in [icons[0], *screenshots[0].split()]:
        parts = urllib.parse.urlsplit(url)
        assert parts.scheme == "https" and parts.netloc == "raw.githubusercontent.com", url
        owner, repo, branch, *path = parts.path.strip("/").split("/")
        assert (repo, branch) == (repository, revision), f"{url} is not of {repository}@{revision}"
        image = ROOT.joinpath(*path)
        assert image.is_file(), f"{url} names {'/'.join(path)}, which is not in the repository"
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{image} is not a PNG"


def test_licence_file_at_the_root() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    # the full text, not a pointer: all nine sections and the appendix
    for heading in ("1. Definitions.", "2. Grant of Copyright License.", "3. Grant of Patent License.",
                    "4. Redistribution.", "5. Submission of Contributions.", "6. Trademarks.",
                    "7. Disclaimer of Warranty.", "8. Limitation of Liability.",
                    "9. Accepting Warranty or Additional Liability.", "APPENDIX: How to apply the Apache License"):
        assert heading in text, heading
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'license = "Apache-2.0"' in pyproject and 'license-files = ["LICENSE"]' in pyproject


def test_repository_is_under_the_size_limit() -> None:
    """check_repository_size: the checked-out repository must not exceed 100 MB."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    total = sum((ROOT / f.decode()).stat().st_size for f in files if f and (ROOT / f.decode()).is_file())
    assert total < 100 * 1024 * 1024, f"{total / 2**20:.1f} MB"


# ---------------------------------------------------------------------------------------------- DICOM support rule


@pytest.mark.parametrize(("modality", "sopClassUid", "suggested"), [
    ("NM", uid.NuclearMedicineImageStorage, True),                # quantitative SPECT time points
    ("PT", uid.PositronEmissionTomographyImageStorage, True),     # PET time points
    ("PT", uid.EnhancedPETImageStorage, True),
    ("CT", uid.CTImageStorage, False),                            # a CT alone is no reason to suggest TheraTwin
    ("SEG", uid.SegmentationStorage, False),
    ("RTDOSE", uid.RTDoseStorage, False),                         # SlicerRT's
    ("SR", uid.Comprehensive3DSRStorage, False),
    ("MR", uid.MRImageStorage, False),
])
def test_dicom_support_rule(modality: str, sopClassUid: str, suggested: bool) -> None:
    rule = rule_engine.Rule(entry()["dicom_support_rule"])
    assert rule.matches({"Modality": modality, "SOPClassUID": str(sopClassUid)}) is suggested
