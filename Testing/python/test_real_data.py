"""Issue 18: real scanner data in, and never a wrong result out.

Each failure the issue lists is reproduced here from synthetic files built in the test (``scanner_synth``) and must
give the stated behaviour: a one-line refusal naming the file and tag, or a result that is right, or a result
written with a warning that reaches the CLI summary, results.json, the report, the SR and FHIR.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
import scanner_synth as ss

import theratwin as tt
from theratwin import _time
from theratwin.cli import _Progress, main
from theratwin.dicom import ReadOptions, read_study, scan
from theratwin.dicom._read_values import parse_dt
from theratwin.errors import ConfigurationError, DicomReadError
from theratwin.pipeline import PipelineConfig, run_folder

FAST = ("registration", "kinetics", "dosimetry")


def _edit(path: Path, fn) -> None:
    ds = pydicom.dcmread(path)
    fn(ds)
    ds.save_as(path)


def _refusal(root: Path, tag: str | None, words: str, **kw) -> DicomReadError:
    with pytest.raises(DicomReadError) as info:
        read_study(root, **kw)
    err = info.value
    assert words in str(err), str(err)
    if tag is not None:
        assert err.tag == tag, str(err)
    assert err.path is not None and Path(str(err.path)).exists(), str(err)
    assert "\n" not in str(err) and str(err).isprintable() and len(str(err)) <= 1000
    return err


@pytest.fixture
def siemens(tmp_path: Path) -> ss.Truth:
    return ss.build(tmp_path / "p", "siemens_rwvm")


# ---------------------------------------------------------------------------------------------------------------
# 1. all-zero result

class TestAllZero:
    def test_single_time_point_without_body_stops_before_writing(self, tmp_path: Path, capsys) -> None:
        """A CT of air leaves an empty body mask: a single time point gives a zero TIA map everywhere."""
        truth = ss.build(tmp_path / "p", "siemens_rwvm", ct_air=True, with_seg=False)
        out = tmp_path / "out"
        rc = main(["run", "--input", str(truth.root), "--out", str(out), "-q"])
        err = capsys.readouterr().err
        assert rc == 2 and "zero everywhere" in err and "cycle1/tia" in err
        assert not (out / "results.json").exists() and not list(out.rglob("*.dcm"))
        assert not (out / "fhir-bundle.json").exists() and not (out / "report.html").exists()

    def test_knowingly_proceeding_warns_everywhere(self, tmp_path: Path, capsys) -> None:
        truth = ss.build(tmp_path / "p", "siemens_rwvm", ct_air=True, with_seg=False)
        out = tmp_path / "out"
        rc = main(["run", "--input", str(truth.root), "--out", str(out), "--plausibility", "warn"])
        stdout = capsys.readouterr().out
        assert rc == 0 and "WARNING (plausibility)" in stdout and "zero everywhere" in stdout
        res = json.loads((out / "results.json").read_text())
        assert any(w["stage"] == "plausibility" and "zero everywhere" in w["message"] for w in res["warnings"])
        html = (out / "report.html").read_text()
        header = html[html.index("<header"):html.index("</header>")]
        assert 'class="alert"' in header and "zero everywhere" in header  # the report's first page
        bundle = json.loads((out / "fhir-bundle.json").read_text())
        report = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport")
        assert "CHECK BEFORE USE (plausibility)" in report["conclusion"]


# ---------------------------------------------------------------------------------------------------------------
# 2. truncated slice, and series integrity

class TestSeriesIntegrity:
    def test_truncated_slice_is_named_not_skipped(self, tmp_path: Path) -> None:
        truth = ss.build(tmp_path / "p", "pt_start")
        victim = truth.time_points[0].emission_files[3]
        data = victim.read_bytes()
        victim.write_bytes(data[:-100])
        err = _refusal(truth.root, "PixelData", "truncated", )
        assert Path(str(err.path)) == victim and "not a DICOM image object" not in str(err)
        assert "truncated" in scan(truth.root).describe()

    def test_truncated_end_slice_accepted_knowingly(self, tmp_path: Path) -> None:
        truth = ss.build(tmp_path / "p", "pt_start")
        last = truth.time_points[0].emission_files[-1]
        last.write_bytes(last.read_bytes()[:-10])
        st = read_study(truth.root, options=ReadOptions(accept_incomplete_series=True))
        img = st.cycles[0].time_points[0].image
        assert img.shape[0] == ss.EM_SHAPE[0] - 1
        assert any("accept_incomplete_series" in w for w in st.warnings)
        # a damaged slice inside the volume leaves a gap: refused even so
        mid = truth.time_points[0].emission_files[3]
        mid.write_bytes(mid.read_bytes()[:-10])
        _refusal(truth.root, "ImagePositionPatient", "not uniform", options=ReadOptions(accept_incomplete_series=True))

    def test_missing_end_slice_of_pet_counted(self, tmp_path: Path) -> None:
        """No gap in positions, but the PET Series says NumberOfSlices 8 and ImageIndex 8 is missing."""
        truth = ss.build(tmp_path / "p", "pt_start")
        truth.time_points[0].emission_files[-1].unlink()
        err = _refusal(truth.root, "NumberOfSlices", "7 of the 8")
        assert "missing ImageIndex 8" in str(err)

    def test_missing_slice_of_nm_stack_counted(self, tmp_path: Path) -> None:
        truth = ss.build(tmp_path / "p", "nm_stack")
        truth.time_points[0].emission_files[0].unlink()
        _refusal(truth.root, "NumberOfSlices", "NumberOfSlices (0054,0081) says 8")

    def test_duplicate_uid_with_other_content_refused_identical_copy_skipped(self, tmp_path: Path) -> None:
        truth = ss.build(tmp_path / "p", "pt_start")
        src = truth.time_points[0].emission_files[2]
        shutil.copy(src, truth.root / "copy.dcm")
        assert read_study(truth.root).cycles  # an identical copy is the same instance
        assert any("same content" in r for _, r in scan(truth.root).skipped)
        ds = pydicom.dcmread(src)
        ds.RescaleSlope = str(2 * float(ds.RescaleSlope))
        ds.save_as(truth.root / "copy.dcm")
        err = _refusal(truth.root, "SOPInstanceUID", "different content (RescaleSlope differs)")
        assert str(src) in str(err) and "copy.dcm" in str(err)

    @pytest.mark.parametrize("tag, value", [("PatientID", "SOMEONE-ELSE"), ("FrameOfReferenceUID", "1.2.3.4"),
                                            ("SOPClassUID", "1.2.840.10008.5.1.4.1.1.128")])
    def test_foreign_ct_slice_named(self, tmp_path: Path, tag: str, value: str) -> None:
        truth = ss.build(tmp_path / "p", "siemens_rwvm")
        victim = truth.time_points[0].ct_files[5]
        _edit(victim, lambda ds: setattr(ds, tag, value))
        err = _refusal(truth.root, tag, "foreign instance")
        assert Path(str(err.path)) == victim

    def test_unreadable_nm_file_does_not_drop_a_time_point(self, tmp_path: Path) -> None:
        truth = ss.build(tmp_path / "p", "siemens_rwvm", hours=(4.0, 24.0, 96.0))
        nm = truth.time_points[1].emission_files[0]
        data = bytearray(nm.read_bytes())
        data[140:400] = b"\x00" * 260  # the file meta and first attributes destroyed
        nm.write_bytes(bytes(data))
        err = _refusal(truth.root, None, "unreadable")
        assert Path(str(err.path)) == nm

    def test_rows_that_disagree_with_pixel_data(self, siemens: ss.Truth) -> None:
        nm = siemens.time_points[0].emission_files[0]
        _edit(nm, lambda ds: setattr(ds, "Rows", ds.Rows + 1))
        _refusal(siemens.root, "Rows", "disagrees with the pixel data")

    def test_nan_rescale_intercept_is_not_zero(self, tmp_path: Path) -> None:
        truth = ss.build(tmp_path / "p", "pt_start")
        victim = truth.time_points[0].emission_files[2]
        ds = pydicom.dcmread(victim)
        ds["RescaleIntercept"] = pydicom.dataelem.RawDataElement(pydicom.tag.Tag(0x00281052), "DS", 4, b"nan ",
                                                                   0, False, True)
        ds.save_as(victim)
        _refusal(truth.root, "RescaleIntercept", "not one finite number")

    def test_seg_spacing_that_disagrees_with_its_source(self, siemens: ss.Truth) -> None:
        def stretch(ds):
            ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing = [3.3, 3.3]

        _edit(siemens.seg_file, stretch)
        _refusal(siemens.root, "PixelSpacing", "disagrees with the CT it was derived from")


class TestSpecialFiles:
    def test_fifo_symlink_loop_and_devices_are_not_opened(self, siemens: ss.Truth) -> None:
        os.mkfifo(siemens.root / "pipe.dcm")
        os.symlink(siemens.root / "loop_b.dcm", siemens.root / "loop_a.dcm")
        os.symlink(siemens.root / "loop_a.dcm", siemens.root / "loop_b.dcm")
        t0 = time.monotonic()
        inv = scan(siemens.root)
        assert time.monotonic() - t0 < 10
        reasons = dict((p.name, r) for p, r in inv.skipped)
        assert "FIFO" in reasons["pipe.dcm"] and "link loop" in reasons["loop_a.dcm"]
        assert read_study(siemens.root).cycles

    def test_zero_filled_4_gb_file_refused_fast(self, siemens: ss.Truth) -> None:
        big = siemens.root / "big.dcm"
        with open(big, "wb") as f:
            f.truncate(4 * 1024**3)  # sparse: no disk used
        t0 = time.monotonic()
        err = _refusal(siemens.root, None, "zero-filled")
        assert time.monotonic() - t0 < 20 and Path(str(err.path)) == big

    def test_file_far_larger_than_its_content_refused_fast(self, siemens: ss.Truth) -> None:
        nm = siemens.time_points[0].emission_files[0]
        with open(nm, "r+b") as f:
            f.truncate(nm.stat().st_size + 2 * 1024**3)
        t0 = time.monotonic()
        _refusal(siemens.root, "PixelData", "far larger than its content")
        assert time.monotonic() - t0 < 20

    def test_huge_value_gives_one_short_line(self, siemens: ss.Truth) -> None:
        ct = siemens.time_points[0].ct_files[0]
        raw = b"\x01" * 53000 + b"1\\1"
        _edit(ct, lambda ds: ds.__setitem__(0x00280030, pydicom.dataelem.RawDataElement(
            pydicom.tag.Tag(0x00280030), "DS", len(raw), raw, 0, False, True)))
        err = _refusal(siemens.root, "PixelSpacing", "PixelSpacing")
        assert len(str(err)) < 400


# ---------------------------------------------------------------------------------------------------------------
# 3. counts are not activity

class TestCounts:
    def test_counts_spect_needs_a_calibration(self, tmp_path: Path) -> None:
        truth = ss.build(tmp_path / "p", "nm_counts")
        err = _refusal(truth.root, "RealWorldValueMappingSequence", "camera_calibrations")
        assert "GE MEDICAL SYSTEMS NM/CT 870 DR SN SN-42" in str(err) and "Lu-177" in str(err)
        cal = {"nuclide": "Lu-177", "sensitivity_cps_per_MBq": ss.SENSITIVITY_CPS_PER_MBQ,
               "manufacturer": "GE MEDICAL SYSTEMS", "serial_number": "SN-42", "source": "Jaszczak 2026-01-02"}
        st = read_study(truth.root, options=ReadOptions(camera_calibrations=[cal]))
        got = st.cycles[0].time_points[0].image.array
        assert ss.relative_error(got, truth.time_points[0].concentration_Bq_per_mL) < 2e-3
        method = next(m for m in st.methods if "cps/MBq" in m["method"])
        assert "Jaszczak 2026-01-02" in method["method"] and method["references"]
        res = tt.Results.for_study(st)  # recorded in the methods of the results (SR, FHIR Provenance, report)
        assert any("cps/MBq" in m.method and m.stage == "read" for m in res.methods)

    def test_a_wrong_calibration_is_caught_by_the_activity_balance(self, tmp_path: Path) -> None:
        truth = ss.build(tmp_path / "p", "nm_counts")
        cal = {"nuclide": "Lu-177", "sensitivity_cps_per_MBq": ss.SENSITIVITY_CPS_PER_MBQ / 100}
        err = _refusal(truth.root, "RadionuclideTotalDose", "cannot hold more than was given",
                       options=ReadOptions(camera_calibrations=[cal]))
        assert "camera sensitivity 0.02 cps/MBq" in str(err)

    def test_calibration_of_another_nuclide_does_not_apply(self, tmp_path: Path) -> None:
        truth = ss.build(tmp_path / "p", "nm_counts")
        cal = {"nuclide": "Y-90", "sensitivity_cps_per_MBq": 2.0}
        _refusal(truth.root, "RealWorldValueMappingSequence", "volume sensitivity",
                 options=ReadOptions(camera_calibrations=[cal]))


# ---------------------------------------------------------------------------------------------------------------
# 4. nuclide inference

class TestNuclide:
    def test_half_life_identifies_f18(self, tmp_path: Path) -> None:
        truth = ss.build(tmp_path / "p", "pt_start", nuclide="F-18", activity_MBq=250.0, hours=(1.0,), code=False,
                         radiopharmaceutical="FDG")
        st = read_study(truth.root)
        assert st.cycles[0].administration.nuclide == "F-18"
        assert any("RadionuclideHalfLife" in w and "F-18" in w for w in st.warnings)
        assert any("RadionuclideHalfLife" in m["method"] for m in st.methods)

    def test_without_half_life_the_user_says_it(self, tmp_path: Path) -> None:
        truth = ss.build(tmp_path / "p", "pt_start", nuclide="F-18", activity_MBq=250.0, hours=(1.0,), code=False,
                         half_life=False, radiopharmaceutical="FDG")
        _refusal(truth.root, "RadionuclideCodeSequence", "--nuclide")
        st = read_study(truth.root, options=ReadOptions(nuclide="18F"))
        assert st.cycles[0].administration.nuclide == "F-18"
        assert any("--nuclide" in w for w in st.warnings)

    def test_user_nuclide_that_contradicts_the_files_is_refused(self, tmp_path: Path) -> None:
        truth = ss.build(tmp_path / "p", "pt_start", nuclide="F-18", activity_MBq=250.0, hours=(1.0,), code=False,
                         radiopharmaceutical="FDG")
        _refusal(truth.root, "RadionuclideCodeSequence", "contradicts RadionuclideHalfLife",
                 options=ReadOptions(nuclide="Lu-177"))

    def test_ambiguous_half_life_needs_the_user(self, tmp_path: Path) -> None:
        """Y-90 (64.05 h) and Au-198 (64.68 h) are within 1 %: no unique match, the user decides."""
        truth = ss.build(tmp_path / "p", "pt_start", nuclide="Y-90", activity_MBq=3000.0, hours=(2.0,), code=False,
                         radiopharmaceutical="microspheres")
        err = _refusal(truth.root, "RadionuclideCodeSequence", "Au-198")
        assert "Y-90" in str(err)
        assert read_study(truth.root, options=ReadOptions(nuclide="Y-90")).cycles[0].administration.nuclide == "Y-90"


# ---------------------------------------------------------------------------------------------------------------
# 5. time zones

class TestTimeZones:
    def test_dt_offsets_are_honoured(self) -> None:
        a, b = parse_dt("20260105090000+0100"), parse_dt("20260105080000+0000")
        assert a == b and a.utcoffset() == timedelta(hours=1)

    def test_injection_recorded_in_another_zone(self, tmp_path: Path) -> None:
        """The injection system writes UTC (DT with +0000), the camera local time (TimezoneOffsetFromUTC
        +0100): the same instant, 24.000 h apart, not 23 or 25."""
        truth = ss.build(tmp_path / "p", "siemens_rwvm", injection_offset_h=0.0)
        nm = pydicom.dcmread(truth.time_points[0].emission_files[0])
        assert nm.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalStartDateTime.endswith("+0000")
        st = read_study(truth.root)
        c = st.cycles[0]
        assert c.times_h[0] == pytest.approx(24.0, abs=1e-9)
        assert c.administration.start.utcoffset() == timedelta(0)
        assert c.time_points[0].acquisition_start.utcoffset() == timedelta(hours=1)

    def test_timezone_offset_from_utc_applies_to_da_tm(self, tmp_path: Path) -> None:
        truth = ss.build(tmp_path / "p", "pt_start", site_offset_h=-5.0)
        st = read_study(truth.root)
        start = st.cycles[0].administration.start
        assert start.utcoffset() == timedelta(hours=-5) and not _time.zone_assumed(start)
        assert start == truth.administration_start

    def test_site_zone_across_a_daylight_saving_change(self, tmp_path: Path) -> None:
        """Files without any zone, read with the site zone Europe/Berlin: injected Saturday 28 March 2026 09:00
        CET, imaged Monday 09:00 CEST: 47 h elapsed, not 48."""
        truth = ss.build(tmp_path / "p", "siemens_rwvm", tz_tag=False, hours=(48.0,),
                         start=datetime(2026, 3, 28, 9, 0, 0))
        # the files say 09:00 on both days (wall clock); rewrite the scan to 09:00 local on Monday
        nm = truth.time_points[0].emission_files[0]
        _edit(nm, lambda ds: (setattr(ds, "AcquisitionDateTime", "20260330090000"),
                              setattr(ds, "AcquisitionDate", "20260330"), setattr(ds, "AcquisitionTime", "090000")))
        for f in truth.time_points[0].ct_files:
            _edit(f, lambda ds: setattr(ds, "AcquisitionDateTime", "20260330085800"))
        st = read_study(truth.root, options=ReadOptions(timezone="Europe/Berlin"))
        assert st.cycles[0].times_h[0] == pytest.approx(47.0, abs=1e-9)
        assert st.cycles[0].administration.start.utcoffset() == timedelta(hours=1)
        assert st.cycles[0].time_points[0].acquisition_start.utcoffset() == timedelta(hours=2)

    def test_files_without_zone_are_read_in_this_computer_zone_and_say_so(self, tmp_path: Path) -> None:
        truth = ss.build(tmp_path / "p", "siemens_rwvm", tz_tag=False)
        st = read_study(truth.root)
        assert _time.zone_assumed(st.cycles[0].administration.start)
        assert any("this computer's zone" in m["method"] for m in st.methods)
        assert "local zone (assumed)" in scan(truth.root).describe()

    def test_outputs_carry_the_data_offset(self, tmp_path: Path) -> None:
        truth = ss.build(tmp_path / "p", "siemens_rwvm", site_offset_h=1.0)
        out = tmp_path / "out"
        cfg = PipelineConfig(stages=(*FAST, "radiobiology", "dicom_export", "fhir_export"))
        run_folder(truth.root, out, config=cfg)
        for f in (out / "dicom").glob("*.dcm"):
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            assert ds.TimezoneOffsetFromUTC == "+0100", f.name
        bundle = json.loads((out / "fhir-bundle.json").read_text())
        ma = next(e["resource"] for e in bundle["entry"]
                  if e["resource"]["resourceType"] == "MedicationAdministration")
        assert ma["effectiveDateTime"] == "2026-01-05T09:30:00+01:00"


# ---------------------------------------------------------------------------------------------------------------
# 6. smaller items

class TestSmaller:
    def test_pet_without_ct_runs_with_water_only_when_asked(self, tmp_path: Path) -> None:
        truth = ss.build(tmp_path / "p", "pt_start", with_seg=False)
        shutil.rmtree(truth.time_points[0].ct_files[0].parent)
        _refusal(truth.root, "FrameOfReferenceUID", "--without-ct water")
        out = tmp_path / "out"
        run = run_folder(truth.root, out, config=PipelineConfig(stages=(*FAST, "radiobiology", "report",
                                                                        "fhir_export"), read={"without_ct": "water"}))
        res = json.loads((out / "results.json").read_text())
        assert any("water density" in w["message"] for w in res["warnings"])
        assert any("water density" in m["method"] for m in res["methods"])
        assert "water density" in (out / "report.html").read_text()
        bundle = json.loads((out / "fhir-bundle.json").read_text())
        prov = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Provenance")
        assert "water density" in json.dumps(prov)
        assert run.results.maps["cycle1/dose"].array.max() > 0

    def test_f18_793_hours_after_injection(self, tmp_path: Path) -> None:
        truth = ss.build(tmp_path / "p", "pt_start", nuclide="F-18", activity_MBq=300.0, hours=(793.0,),
                         fov_fraction=0.4)
        err = _refusal(truth.root, "RadiopharmaceuticalStartDateTime", "half-lives")
        assert "793.0 h" in str(err)
        st = read_study(truth.root, options=ReadOptions(plausibility={"action": "warn"}))
        assert any("half-lives" in w for w in st.plausibility_warnings)
        assert any(w.stage == "plausibility" for w in tt.Results.for_study(st).warnings)

    @pytest.mark.parametrize("stages, words", [("dosimetry", "needs kinetics"), ("registration,bogus", "not installed"),
                                               ("kinetics,registration", "needs registration")])
    def test_stages_that_cannot_run_are_an_error(self, siemens: ss.Truth, tmp_path: Path, capsys, stages: str,
                                                 words: str) -> None:
        out = tmp_path / "out"
        rc = main(["run", "--input", str(siemens.root), "--out", str(out), "--stages", stages, "-q"])
        assert rc == 2 and words in capsys.readouterr().err and not out.exists()
        with pytest.raises(ConfigurationError):
            run_folder(siemens.root, out, config=PipelineConfig(stages=tuple(stages.split(","))))

    def test_thin_ct_registration_error_names_the_file_and_cause(self, tmp_path: Path) -> None:
        truth = ss.build(tmp_path / "p", "siemens_rwvm", hours=(24.0, 96.0), thin_ct=(2,))
        with pytest.raises(tt.InvalidInputError) as info:
            run_folder(truth.root, tmp_path / "out", config=PipelineConfig(stages=("registration",)))
        msg = str(info.value)
        assert "too thin" in msg and str(truth.time_points[1].ct_files[0].parent) in msg and "overlap" not in msg

    def test_a_bug_is_not_blamed_on_the_file(self, siemens: ss.Truth, monkeypatch, capsys, tmp_path: Path) -> None:
        import theratwin.dicom.read as read_mod

        def broken(*a, **k):
            raise TypeError("unsupported operand (a TheraTwin bug)")

        monkeypatch.setattr(read_mod, "_patient", broken)
        with pytest.raises(TypeError):
            read_study(siemens.root)
        rc = main(["run", "--input", str(siemens.root), "--out", str(tmp_path / "o"), "-q"])
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("theratwin:")]
        assert rc == 3 and len(err) == 1 and "internal error (a TheraTwin bug" in err[0] and "TypeError" in err[0]

    def test_a_corrupt_value_decoded_by_pydicom_is_the_file(self, siemens: ss.Truth, monkeypatch) -> None:
        import theratwin.dicom.read as read_mod

        def decode_fails(s):
            from pydicom.valuerep import DSfloat

            DSfloat("not a number", auto_format=False, validation_mode=2)  # raises inside pydicom

        monkeypatch.setattr(read_mod, "_patient", decode_fails)
        with pytest.raises(DicomReadError, match="corrupt or unreadable DICOM value"):
            read_study(siemens.root)

    def test_progress_without_terminal_writes_few_plain_lines(self) -> None:
        stream = io.StringIO()
        bar = _Progress(False, "pipeline", stream=stream)
        for i in range(1001):
            bar(i / 1000, f"kinetics: fitting voxel block {i}")
        text = stream.getvalue()
        assert "\r" not in text and len(text.splitlines()) <= 12 and "100%" in text


# ---------------------------------------------------------------------------------------------------------------
# 7. corrupted copies that once gave wrong numbers

class TestWrongButAccepted:
    def test_rwvm_slope_1e_6(self, siemens: ss.Truth) -> None:
        _edit(siemens.time_points[0].emission_files[0],
              lambda ds: setattr(ds.RealWorldValueMappingSequence[0], "RealWorldValueSlope", 1e-6))
        _refusal(siemens.root, "RadionuclideTotalDose", "only")

    def test_total_dose_0_001_MBq(self, siemens: ss.Truth) -> None:
        _edit(siemens.time_points[0].emission_files[0],
              lambda ds: setattr(ds.RadiopharmaceuticalInformationSequence[0], "RadionuclideTotalDose", "0.001"))
        _refusal(siemens.root, "RadionuclideTotalDose", "cannot hold more than was given")

    def test_implausible_input_written_knowingly_reaches_the_sr(self, siemens: ss.Truth, tmp_path: Path) -> None:
        _edit(siemens.time_points[0].emission_files[0],
              lambda ds: setattr(ds.RadiopharmaceuticalInformationSequence[0], "RadionuclideTotalDose", "1000"))
        out = tmp_path / "out"
        cfg = PipelineConfig(stages=(*FAST, "radiobiology", "dicom_export"), plausibility={"action": "warn"})
        with pytest.raises(DicomReadError, match="cannot hold more"):
            run_folder(siemens.root, out, config=PipelineConfig(stages=FAST))
        run_folder(siemens.root, out, config=cfg)
        from theratwin.dicom.sr import read_sr_cautions

        sr = next(pydicom.dcmread(f) for f in (out / "dicom").glob("*.dcm")
                  if pydicom.dcmread(f, stop_before_pixels=True).Modality == "SR")
        cautions = read_sr_cautions(sr)
        assert cautions and all(c.startswith("CHECK BEFORE USE") for c in cautions)
        assert any("cannot hold more than was given" in c for c in cautions)


# ---------------------------------------------------------------------------------------------------------------
# the vendor variants read right

@pytest.mark.parametrize("layout", ss.LAYOUTS)
def test_vendor_layouts_read_the_right_activity_and_times(tmp_path: Path, layout: str) -> None:
    truth = ss.build(tmp_path / "p", layout)
    cal = {"nuclide": "Lu-177", "sensitivity_cps_per_MBq": ss.SENSITIVITY_CPS_PER_MBQ, "model": "NM/CT 870 DR"}
    st = read_study(truth.root, options=ReadOptions(camera_calibrations=[cal]))
    c = st.cycles[0]
    tp = c.time_points[0]
    # 16-bit storage: 1/60000 of the maximum per voxel for NM, 1/32000 for signed PET
    assert ss.relative_error(tp.image.array, truth.time_points[0].concentration_Bq_per_mL) < 2e-3, layout
    assert tp.image.shape == ss.EM_SHAPE
    assert np.allclose(tp.image.origin_mm, ss.em_origin())
    assert c.administration.start == truth.administration_start
    assert tp.acquisition_start == truth.time_points[0].acquisition_start
    assert c.times_h[0] == pytest.approx(24.0, abs=1e-9)
    assert (c.administration.nuclide, c.administration.activity_MBq) == ("Lu-177", pytest.approx(7400.0))
    assert st.segmentation is not None and st.segmentation.names == ["kidneys", "lesion_bone_1"]
    assert not st.plausibility_warnings


def test_pet_none_multibed_uses_each_bed_time(tmp_path: Path) -> None:
    """NONE: bed 2 started T + 30 s after bed 1; using one time for both would misplace bed 2 by
    exp(lambda (T + 30 s)) - tiny for Lu-177, so F-18 (110 min) with 20-min beds shows it: 14 %."""
    truth = ss.build(tmp_path / "p", "pt_none", nuclide="F-18", activity_MBq=300.0, hours=(1.0,))
    st = read_study(truth.root)
    got = st.cycles[0].time_points[0].image.array
    want = truth.time_points[0].concentration_Bq_per_mL
    assert ss.relative_error(got, want) < 2e-3
    assert not any("FrameReferenceTime" in w for w in st.warnings)
    lam = math.log(2) / (110 * 60)
    assert math.exp(lam * 1230) - 1 > 0.1  # what a single-time reader would get wrong on bed 2


def test_pet_none_with_wrong_frame_reference_time_is_reported(tmp_path: Path) -> None:
    truth = ss.build(tmp_path / "p", "pt_none", nuclide="F-18", activity_MBq=300.0, hours=(1.0,))
    for f in truth.time_points[0].emission_files:
        _edit(f, lambda ds: setattr(ds, "FrameReferenceTime", "0"))
    st = read_study(truth.root)
    assert any("FrameReferenceTime (0054,1300) disagrees" in w for w in st.warnings)


@pytest.mark.integration
def test_sr_with_cautions_passes_the_validators(tmp_path: Path) -> None:
    """The TID 1500 Qualitative Evaluations container carrying the cautions is valid for dciodvfy, dsrdump and
    pixelmed's TID 1500 validator, and reads back."""
    import subprocess

    from dicom_synth import make_results, make_study
    from test_dicom_write_validators import _errors, pixelmed_validate

    from theratwin.dicom.export import export_dicom
    from theratwin.dicom.sr import read_sr_cautions

    res = make_results(make_study(tmp_path / "input", n_cycles=1))
    res.warn("plausibility", "cycle 1 time point 1: the image holds 9.9e+03 MBq, 1.5 x the administered activity.",
             severity="error")
    rep = export_dicom(res, tmp_path)
    sr_path = tmp_path / next(r for r in rep.sr if "cycle1" in r or "cycle" in r)
    sr = pydicom.dcmread(sr_path)
    assert read_sr_cautions(sr) == ["CHECK BEFORE USE (plausibility): cycle 1 time point 1: the image holds 9.9e+03 "
                                    "MBq, 1.5 x the administered activity."]
    text = subprocess.run(["dciodvfy", str(sr_path)], capture_output=True, text=True, timeout=300)
    assert not _errors(text.stdout + text.stderr), text.stdout + text.stderr
    dump = subprocess.run(["dsrdump", str(sr_path)], capture_output=True, text=True, timeout=300)
    assert dump.returncode == 0 and "Qualitative Evaluations" in dump.stdout and "CHECK BEFORE USE" in dump.stdout
    out = pixelmed_validate(sr_path)
    assert "Root Template Validation Complete" in out and not [ln for ln in out.splitlines() if "Error:" in ln], \
        out[-3000:]
