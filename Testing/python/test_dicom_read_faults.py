"""A file's fault or TheraTwin's? The reader's safety nets blame a file only for what came out of its values.

A corrupt value that pydicom fails to decode is the file's fault: a one-line ``DicomReadError`` naming the file.
A programming error (``AttributeError``, ``KeyError``, ``TypeError`` ...) raised by TheraTwin's own reading code is
a bug: it is raised as it is, and the command line says "internal error ... please report it" in one line, with the
traceback only under ``-v``. Both the header scan (``scan``) and the image reading (``read_study``) are checked.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pydicom
import pytest
import scanner_synth as ss
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import theratwin.dicom.inventory as inventory_mod
from theratwin.cli import main
from theratwin.dicom import read_study, scan
from theratwin.dicom._read_values import is_internal_error, raised_by_pydicom
from theratwin.errors import DicomReadError


@pytest.fixture(scope="module")
def siemens(tmp_path_factory: pytest.TempPathFactory) -> ss.Truth:
    return ss.build(tmp_path_factory.mktemp("p"), "siemens_rwvm", hours=(24.0, 96.0))


def _pydicom_key_error() -> None:
    pydicom.Dataset()[0x00100010]  # KeyError raised inside pydicom's Dataset


def _pydicom_value_error() -> None:
    from pydicom.valuerep import DSfloat

    DSfloat("not a number", auto_format=False, validation_mode=2)  # ValueError raised inside pydicom


def _caught(function) -> BaseException:
    try:
        function()
    except Exception as error:  # noqa: BLE001 - the test looks at what was raised
        return error
    raise AssertionError("nothing raised")


def test_the_classification_itself() -> None:
    assert not is_internal_error(_caught(_pydicom_key_error)) and raised_by_pydicom(_caught(_pydicom_key_error).__traceback__)
    assert not is_internal_error(_caught(_pydicom_value_error))
    assert is_internal_error(_caught(lambda: {}["AcquisitionDateTime"]))  # our own dict: a bug
    assert is_internal_error(_caught(lambda: None.start))  # type: ignore[attr-defined]
    assert not is_internal_error(_caught(lambda: float("12:00:00")))  # a bad value we converted: the file's


@pytest.mark.parametrize("where", ["administration_of", "units_of"])
def test_a_bug_while_scanning_headers_is_not_blamed_on_the_file(siemens: ss.Truth, monkeypatch, capsys, caplog,
                                                                   tmp_path: Path, where: str) -> None:
    def broken(series, *args, **kwargs):
        return series.administration_info_that_does_not_exist  # AttributeError in TheraTwin's code

    monkeypatch.setattr(inventory_mod, where, broken)
    with pytest.raises(AttributeError, match="administration_info_that_does_not_exist"):
        scan(siemens.root)
    with pytest.raises(AttributeError):
        read_study(siemens.root)
    rc = main(["run", "--input", str(siemens.root), "--out", str(tmp_path / "o"), "-q"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 3 and len(lines) == 1, err
    assert "internal error (a TheraTwin bug, not a problem with your data" in lines[0]
    assert "AttributeError" in lines[0] and "run with -v for the traceback" in lines[0]
    assert "corrupt" not in err and "dciodvfy" not in err and "Traceback" not in err
    assert not [r for r in caplog.records if r.exc_info]  # no traceback without -v
    rc = main(["-v", "run", "--input", str(siemens.root), "--out", str(tmp_path / "o2"), "-q"])
    assert rc == 3 and "run with -v" not in capsys.readouterr().err
    logged = [r for r in caplog.records if r.exc_info and r.exc_info[0] is AttributeError]  # -v: the traceback
    assert logged and any(frame.name == "broken" for frame in __import__("traceback").extract_tb(logged[0].exc_info[2]))


@pytest.mark.parametrize("fault", [_pydicom_key_error, _pydicom_value_error])
def test_a_value_pydicom_cannot_decode_is_the_files_fault(siemens: ss.Truth, monkeypatch, fault) -> None:
    def corrupt(series, *args, **kwargs):
        fault()

    monkeypatch.setattr(inventory_mod, "administration_of", corrupt)
    inventory = scan(siemens.root)
    problems = [str(p) for p in inventory.problems if "corrupt header" in str(p)]
    assert problems and all(str(siemens.root) in p for p in problems)  # the file is named
    with pytest.raises(DicomReadError, match="corrupt header"):
        read_study(siemens.root)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.one_of(
    st.text(alphabet=st.characters(max_codepoint=255, exclude_characters="\\"), max_size=26),
    st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2040, 1, 1)).map(
        lambda d: d.strftime("%Y%m%d%H%M%S.%f")),
))
def test_any_text_in_a_time_attribute_is_read_or_refused_never_a_bug(siemens: ss.Truth, value: str,
                                                                      tmp_path_factory) -> None:
    """Property: whatever text a file holds in RadiopharmaceuticalStartDateTime, the header scan either accepts
    it or names the file; it never raises anything else (hypothesis draws the text)."""
    folder = tmp_path_factory.mktemp("hyp")
    source = sorted(p for p in siemens.root.rglob("*.dcm"))
    for path in source:
        ds = pydicom.dcmread(path)
        item = ds.RadiopharmaceuticalInformationSequence[0] if "RadiopharmaceuticalInformationSequence" in ds else None
        if item is not None:
            item.RadiopharmaceuticalStartDateTime = value  # any bytes a file may hold (latin-1)
        ds.save_as(folder / path.relative_to(siemens.root).as_posix().replace("/", "_"), enforce_file_format=True)
    try:
        inventory = scan(folder)
    except DicomReadError as error:
        assert str(folder) in str(error)
        return
    for problem in inventory.problems:
        assert isinstance(problem, DicomReadError)
