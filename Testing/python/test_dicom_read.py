"""Reading DICOM back: the demo patient round trip, geometry, SEG, inventory, and every documented refusal."""

from __future__ import annotations

import os
import shutil
from datetime import timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from theratwin._time import wall_clock, zone_assumed
from theratwin.demo import DemoOptions, build_demo, simulate
from theratwin.dicom import nuclide_from_text, read_study, scan
from theratwin.errors import DicomReadError

SEED = 7
OPTS = {"fast": True, "noise": False, "blur": False}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    return build_demo(tmp_path_factory.getbasetemp() / "demo-cache", seed=SEED, **OPTS)


@pytest.fixture(scope="module")
def sim():
    return simulate(SEED, DemoOptions(**OPTS))


@pytest.fixture(scope="module")
def study(demo):
    return read_study(demo.dicom_dir)


@pytest.fixture
def copy(demo, tmp_path: Path) -> Path:
    """A private copy of the demo DICOM: hard links (files are never written in place, see _edit)."""
    dst = tmp_path / "dicom"
    shutil.copytree(demo.dicom_dir, dst, copy_function=_link_or_copy)
    return dst


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _edit(path: Path, fn) -> None:
    ds = pydicom.dcmread(path)
    fn(ds)
    path.unlink()  # break a hard link to the shared cache before writing
    ds.save_as(path)


def _nm(root: Path, folder_prefix: str) -> Path:
    return next(p for p in sorted(root.glob(f"{folder_prefix}*/NM_SPECT.dcm")))


class TestRoundTrip:
    def test_activity_concentration_within_0_1_percent(self, study, sim) -> None:
        for cyc_read, cyc_sim in zip(study.cycles, sim.cycles, strict=True):
            for tp_read, tp_sim in zip(cyc_read.time_points, cyc_sim.time_points, strict=True):
                got = tp_read.image.array.astype(np.float64)
                want = tp_sim.spect_noiseless_Bq_per_mL.astype(np.float64)
                assert got.shape == want.shape
                # 16-bit storage: one quantisation step is max/65000, so 0.1 % holds for voxels above ~1 % of max
                step = want.max() / 65000.0
                assert np.max(np.abs(got - want)) <= 0.5 * step * 1.001
                hot = want >= 0.01 * want.max()
                rel = np.abs(got[hot] - want[hot]) / want[hot]
                assert rel.max() <= 1e-3
                # total activity in the field of view to 0.1 % (uniform regions share one rounding error)
                assert got.sum() == pytest.approx(want.sum(), rel=1e-3)

    def test_blurred_noiseless_round_trip(self, tmp_path: Path) -> None:
        d = build_demo(tmp_path, seed=SEED, fast=True, noise=False, blur=True, misalign=True)
        s = simulate(SEED, DemoOptions(fast=True, noise=False, blur=True, misalign=True))
        st = read_study(d.dicom_dir)
        for tp_read, tp_sim in zip(st.cycles[0].time_points, s.cycles[0].time_points, strict=True):
            want = tp_sim.spect_noiseless_Bq_per_mL
            hot = want >= 0.01 * want.max()
            rel = np.abs(tp_read.image.array[hot] - want[hot]) / want[hot]
            assert rel.max() <= 1e-3

    def test_times_since_injection_to_the_second(self, study, demo) -> None:
        # the demo files carry no zone: wall-clock times as written, in this computer's zone (marked assumed)
        for cyc, truth in zip(study.cycles, demo.truth["cycles"], strict=True):
            assert wall_clock(cyc.administration.start).isoformat() == truth["administration_start"]
            assert zone_assumed(cyc.administration.start)
            for tp, ttp in zip(cyc.time_points, truth["time_points"], strict=True):
                assert abs(tp.time_h(cyc.administration) - ttp["time_h"]) * 3600 < 1.0
                assert wall_clock(tp.acquisition_start).isoformat() == ttp["acquisition_start"]
                assert tp.acquisition_duration_s == pytest.approx(ttp["acquisition_duration_s"], abs=1e-6)

    def test_administration(self, study) -> None:
        assert [c.number for c in study.cycles] == [1, 2]
        assert [len(c.time_points) for c in study.cycles] == [4, 1]
        for c in study.cycles:
            a = c.administration
            assert (a.nuclide, a.radiopharmaceutical, a.activity_MBq) == ("Lu-177", "PSMA-617", 7400.0)

    def test_patient(self, study) -> None:
        p = study.patient
        assert (p.patient_id, p.name, p.sex, p.weight_kg) == ("TT-DEMO-0001", "Demo^Theratwin", "M", 82.0)
        assert p.birth_date is not None and p.birth_date.year == 1956

    def test_ct_hu_and_sources(self, study, sim) -> None:
        for cyc_read, cyc_sim in zip(study.cycles, sim.cycles, strict=True):
            for tp_read, tp_sim in zip(cyc_read.time_points, cyc_sim.time_points, strict=True):
                assert np.array_equal(tp_read.ct.array, tp_sim.ct_hu.astype(np.float32))
                assert tp_read.ct.unit == "HU" and tp_read.image.unit == "Bq/mL"
                assert tp_read.source.frame_of_reference_uid == tp_read.ct_source.frame_of_reference_uid
                assert tp_read.source.modality == "NM" and tp_read.ct_source.modality == "CT"
        assert study.reference_ct is study.cycles[0].time_points[0].ct


class TestGeometry:
    def test_grids_match_the_generator(self, study, sim) -> None:
        assert study.cycles[0].time_points[0].image.geometry.same_grid(sim.spect_geometry)
        assert study.reference_ct.geometry.same_grid(sim.ct_geometry)

    def test_independent_reader_agrees(self, study, demo) -> None:
        """SimpleITK/GDCM reads the same LPS geometry and voxel order for NM and CT."""
        nm = sitk.ReadImage(str(_nm(demo.dicom_dir, "cycle1_tp1")))
        geo = study.cycles[0].time_points[0].image.geometry
        assert np.allclose(nm.GetOrigin(), geo.origin_mm) and np.allclose(nm.GetSpacing(), geo.spacing_mm)
        assert np.allclose(np.reshape(nm.GetDirection(), (3, 3)), geo.direction_matrix)
        reader = sitk.ImageSeriesReader()
        folder = next(demo.dicom_dir.glob("cycle1_tp1*/CT"))
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
        ct = reader.Execute()
        assert np.allclose(ct.GetOrigin(), study.reference_ct.origin_mm)
        assert np.array_equal(sitk.GetArrayFromImage(ct), study.reference_ct.array)

    def test_real_world_values_agree_with_highdicom(self, study, demo) -> None:
        """highdicom applies the NM Real World Value Mapping independently: same Bq/mL, frame by frame."""
        import highdicom as hd

        for i, tp in enumerate(study.cycles[0].time_points, start=1):
            frames = hd.imread(str(_nm(demo.dicom_dir, f"cycle1_tp{i}"))).get_frames(apply_real_world_transform=True)
            assert np.allclose(frames, tp.image.array, rtol=1e-6, atol=1e-3)

    def test_anatomy_is_in_lps(self, study) -> None:
        """Liver on the patient's right (-x), spine posterior (+y), head superior (+z)."""
        seg = study.segmentation
        geo = seg.geometry

        def centre(name: str) -> np.ndarray:
            z, y, x = np.argwhere(seg.masks[name]).mean(axis=0)
            return geo.index_to_lps(np.array([x, y, z]))

        assert centre("liver")[0] < -30 and centre("spleen")[0] > 30
        assert centre("red_marrow")[1] > centre("bladder")[1] + 50
        assert centre("parotid_glands")[2] > centre("kidneys")[2] + 200
        assert centre("lacrimal_glands")[2] > centre("submandibular_glands")[2]


class TestSegmentation:
    def test_masks_round_trip(self, study, sim) -> None:
        seg = study.segmentation
        assert seg.names == list(sim.seg_masks)
        assert seg.geometry.same_grid(sim.ct_geometry)
        for name, mask in sim.seg_masks.items():
            assert np.array_equal(seg.masks[name], mask), name

    def test_structure_kinds_from_codes(self, study) -> None:
        seg = study.segmentation
        assert seg.structure("kidneys").kind.key == "kidneys"
        assert seg.structure("lesion_bone_1").kind.key == "bone_lesion"
        assert seg.structure("lesion_node_2").kind.key == "node_lesion"
        assert seg.structure("red_marrow").tissue == "red_marrow"
        assert seg.structure("body").role.value == "body"

    def test_segment_colours_from_recommended_display_cielab_value(self, study, copy: Path) -> None:
        # the demo SEG carries each kind's colour; a colour edited in the file is what the reader returns
        assert study.segmentation.structure("kidneys").color_rgb == (185, 102, 83)
        assert study.segmentation.structure("liver").color_rgb == (221, 130, 101)
        seg_path = next(copy.rglob("SEG_*.dcm"))

        def recolour(ds):
            ds.SegmentSequence[1].RecommendedDisplayCIELabValue = [34885, 53485, 50171]  # ~ (255, 0, 0)
            ds.SegmentSequence[2].RecommendedDisplayCIELabValue = [1, 2]  # malformed: the kind's colour

        _edit(seg_path, recolour)
        st = read_study(copy)
        red = np.array(st.segmentation.structure("kidneys").color_rgb)
        assert np.max(np.abs(red - (255, 0, 0))) <= 2
        assert st.segmentation.structure("liver").color_rgb == (221, 130, 101)
        with pytest.raises(DicomReadError, match="RecommendedDisplayCIELabValue"):
            read_study(copy, strict=True)

    def test_kind_comes_from_codes_not_name(self, copy: Path) -> None:
        seg_path = next(copy.rglob("SEG_*.dcm"))

        def rename(ds):
            ds.SegmentSequence[1].SegmentLabel = "Structure A"  # kidneys, coded SCT 64033007

        _edit(seg_path, rename)
        st = read_study(copy)
        assert st.segmentation.structure("Structure A").kind.key == "kidneys"

    def test_volumes(self, study, demo) -> None:
        truth = demo.truth["cycles"][0]["structures"]
        for name in ("kidneys", "liver", "lesion_node_1"):
            assert study.segmentation.volume_mL(name) == pytest.approx(truth[name]["volume_mL"], rel=0.03)


class TestInventory:
    def test_describe(self, demo) -> None:
        text = scan(demo.dicom_dir).describe()
        assert "TT-DEMO-0001" in text and "Demo^Theratwin" in text
        assert "5 quantitative SPECT" in text and "5 CT" in text and "1 SEG" in text
        assert "cycle 1: PSMA-617 (Lu-177) 7400 MBq" in text and "cycle 2:" in text
        assert text.count("    time point ") == 5 and "ready" in text

    def test_describe_names_missing_pieces(self, copy: Path) -> None:
        shutil.rmtree(next(copy.glob("cycle1_tp3*/CT")))
        (copy / "notes.txt").write_text("not dicom")
        text = scan(copy).describe()
        assert "NO CT" in text and "PROBLEMS" in text and "missing CT" in text and "skipped" in text

    def test_nuclide_names(self) -> None:
        for text in ("^177^Lutetium", "Lu-177", "177Lu", "LU177", "Lutetium-177", "Lu-177-PSMA-617", "177Lu-PSMA"):
            assert nuclide_from_text(text) == "Lu-177", text
        assert nuclide_from_text("^90^Yttrium") == "Y-90"
        assert nuclide_from_text("PSMA-617") is None


class TestRefusals:
    """Each documented refusal, made by editing demo files; the error names the file and the tag."""

    def _raises(self, root: Path, tag: str, words: str) -> DicomReadError:
        with pytest.raises(DicomReadError) as info:
            read_study(root)
        err = info.value
        assert err.tag == tag
        assert words in str(err)
        assert err.path is not None and Path(err.path).exists()
        return err

    def test_no_injection_datetime(self, copy: Path) -> None:
        nm = _nm(copy, "cycle1_tp2")

        def strip(ds):
            item = ds.RadiopharmaceuticalInformationSequence[0]
            del item.RadiopharmaceuticalStartDateTime
            del item.RadiopharmaceuticalStartTime

        _edit(nm, strip)
        err = self._raises(copy, "RadiopharmaceuticalStartDateTime", "no injection datetime")
        assert Path(err.path) == nm

    def test_acquisition_before_injection(self, copy: Path) -> None:
        nm = _nm(copy, "cycle1_tp1")

        def earlier(ds):
            ds.AcquisitionDateTime = "20250303070000"
            ds.AcquisitionDate, ds.AcquisitionTime = "20250303", "070000"

        _edit(nm, earlier)
        self._raises(copy, "AcquisitionDateTime", "acquisition before injection")

    def test_spect_without_quantitative_units(self, copy: Path) -> None:
        nm = _nm(copy, "cycle1_tp3")
        _edit(nm, lambda ds: delattr(ds, "RealWorldValueMappingSequence"))
        self._raises(copy, "RealWorldValueMappingSequence", "without quantitative units")

    def test_mixed_radionuclides_within_one_cycle(self, copy: Path) -> None:
        nm = _nm(copy, "cycle1_tp4")

        def yttrium(ds):
            code = ds.RadiopharmaceuticalInformationSequence[0].RadionuclideCodeSequence[0]
            code.CodeValue, code.CodeMeaning = "14691008", "^90^Yttrium"

        _edit(nm, yttrium)
        self._raises(copy, "RadionuclideCodeSequence", "mixed radionuclides within cycle 1")

    def test_missing_ct(self, copy: Path) -> None:
        shutil.rmtree(next(copy.glob("cycle2_tp1*/CT")))
        err = self._raises(copy, "FrameOfReferenceUID", "missing CT")
        assert "cycle2_tp1" in str(err.path)

    def test_inconsistent_frame_of_reference(self, copy: Path) -> None:
        for f in next(copy.glob("cycle1_tp2*/CT")).glob("*.dcm"):
            _edit(f, lambda ds: setattr(ds, "FrameOfReferenceUID", "1.2.3.4.5.6.7"))
        self._raises(copy, "FrameOfReferenceUID", "inconsistent frame of reference")

    def test_seg_on_another_frame_of_reference(self, copy: Path) -> None:
        _edit(next(copy.rglob("SEG_*.dcm")), lambda ds: setattr(ds, "FrameOfReferenceUID", "1.2.3.4.5.6.7"))
        self._raises(copy, "FrameOfReferenceUID", "SEG")

    def test_mixed_patients(self, copy: Path) -> None:
        _edit(_nm(copy, "cycle2_tp1"), lambda ds: setattr(ds, "PatientID", "SOMEONE-ELSE"))
        self._raises(copy, "PatientID", "mixes patients")

    def test_missing_path(self, tmp_path: Path) -> None:
        with pytest.raises(DicomReadError, match="no such file"):
            read_study(tmp_path / "nowhere")


class TestTolerance:
    def test_time_only_injection_on_the_day_of_acquisition(self, copy: Path, study) -> None:
        nm = _nm(copy, "cycle1_tp1")
        _edit(nm, lambda ds: delattr(ds.RadiopharmaceuticalInformationSequence[0], "RadiopharmaceuticalStartDateTime"))
        st = read_study(copy)
        assert st.cycles[0].administration.start == study.cycles[0].administration.start
        assert any("RadiopharmaceuticalStartTime" in w for s in scan(copy).series for w in s.warnings)
        with pytest.raises(DicomReadError) as info:  # strict mode does not guess dates
            read_study(copy, strict=True)
        assert info.value.tag == "RadiopharmaceuticalStartDateTime"

    def test_time_only_injection_dated_from_another_time_point(self, copy: Path, study) -> None:
        """A 7-day scan whose injection has a time but no date takes the date from the cycle's other scans."""
        nm = _nm(copy, "cycle1_tp4")
        _edit(nm, lambda ds: delattr(ds.RadiopharmaceuticalInformationSequence[0], "RadiopharmaceuticalStartDateTime"))
        st = read_study(copy)
        assert [len(c.time_points) for c in st.cycles] == [4, 1]
        assert st.cycles[0].times_h[3] == pytest.approx(study.cycles[0].times_h[3], abs=1 / 3600)

    def test_activity_in_bq_in_nm_is_recognised(self, copy: Path) -> None:
        for nm in copy.glob("cycle1_*/NM_SPECT.dcm"):
            _edit(nm, lambda ds: setattr(ds.RadiopharmaceuticalInformationSequence[0], "RadionuclideTotalDose",
                                         "7400000000"))
        st = read_study(copy)
        assert st.cycles[0].administration.activity_MBq == pytest.approx(7400.0)
        with pytest.raises(DicomReadError) as info:
            read_study(copy, strict=True)
        assert info.value.tag == "RadionuclideTotalDose"

    def test_non_dicom_files_skipped_unless_strict(self, copy: Path) -> None:
        (copy / "README.txt").write_text("hello")
        assert read_study(copy).cycles
        with pytest.raises(DicomReadError, match="strict"):
            read_study(copy, strict=True)

    def test_single_frame_nm_stack(self, copy: Path, sim) -> None:
        """The same SPECT split into one NM object per slice reads to the same volume."""
        nm_path = _nm(copy, "cycle1_tp2")
        ds = pydicom.dcmread(nm_path)
        arr = ds.pixel_array
        origin = np.array([float(v) for v in ds.DetectorInformationSequence[0].ImagePositionPatient])
        step = float(ds.SpacingBetweenSlices)
        nm_path.unlink()
        order = np.random.default_rng(0).permutation(arr.shape[0])  # files in random order
        for k in order:
            one = pydicom.dcmread(_nm(copy, "cycle1_tp1"))  # any NM as a template, then overwrite
            one.SeriesInstanceUID = ds.SeriesInstanceUID
            one.StudyInstanceUID = ds.StudyInstanceUID
            one.FrameOfReferenceUID = ds.FrameOfReferenceUID
            one.AcquisitionDateTime = ds.AcquisitionDateTime
            one.AcquisitionDuration = ds.AcquisitionDuration
            one.RealWorldValueMappingSequence = ds.RealWorldValueMappingSequence
            one.SOPInstanceUID = pydicom.uid.generate_uid()
            one.file_meta.MediaStorageSOPInstanceUID = one.SOPInstanceUID
            one.NumberOfFrames = 1
            one.NumberOfSlices = 1
            one.SliceVector = [1]
            one.DetectorInformationSequence[0].ImagePositionPatient = list(origin + [0.0, 0.0, k * step])
            one.PixelData = arr[k].tobytes()
            one.save_as(nm_path.parent / f"NM_{k:03d}.dcm")
        st = read_study(copy)
        got = st.cycles[0].time_points[1].image
        want = sim.cycles[0].time_points[1].spect_noiseless_Bq_per_mL
        assert got.geometry.same_grid(sim.spect_geometry)
        hot = want >= 0.01 * want.max()
        assert np.max(np.abs(got.array[hot] - want[hot]) / want[hot]) <= 1e-3

    def test_reversed_frame_order_negative_spacing(self, copy: Path, sim) -> None:
        nm_path = _nm(copy, "cycle1_tp2")

        def reverse(ds):
            arr = ds.pixel_array[::-1].copy()
            top = [float(v) for v in ds.DetectorInformationSequence[0].ImagePositionPatient]
            top[2] += (arr.shape[0] - 1) * float(ds.SpacingBetweenSlices)
            ds.DetectorInformationSequence[0].ImagePositionPatient = top
            ds.SpacingBetweenSlices = -float(ds.SpacingBetweenSlices)
            ds.PixelData = arr.tobytes()

        _edit(nm_path, reverse)
        got = read_study(copy).cycles[0].time_points[1].image
        assert got.geometry.same_grid(sim.spect_geometry)
        want = sim.cycles[0].time_points[1].spect_noiseless_Bq_per_mL
        assert np.allclose(got.array, want, rtol=1e-3, atol=want.max() / 65000)


def test_timedelta_helpers_consistent() -> None:
    from theratwin.dicom._read_values import parse_dt, parse_tm

    assert parse_dt("20250303091240.5+0100").isoformat() == "2025-03-03T09:12:40.500000+01:00"
    assert parse_tm("09:12:40") == timedelta(hours=9, minutes=12, seconds=40)
    assert parse_tm("0912") == timedelta(hours=9, minutes=12)
    assert parse_dt("2025") is None and parse_dt("20251340101010") is None


class TestCompanionSeries:
    def _add_nac(self, copy: Path, quantitative: bool) -> Path:
        """Add a second reconstruction of the 24 h session (same frame of reference), e.g. without AC."""
        src = _nm(copy, "cycle1_tp2")
        ds = pydicom.dcmread(src)
        ds.SeriesInstanceUID = pydicom.uid.generate_uid()
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesNumber = 4
        ds.SeriesDescription = "SPECT NAC"
        if not quantitative:
            del ds.RealWorldValueMappingSequence
        else:
            ds.RealWorldValueMappingSequence[0].RealWorldValueSlope = 2 * float(
                ds.RealWorldValueMappingSequence[0].RealWorldValueSlope)
        out = src.parent / "NM_NAC.dcm"
        ds.save_as(out)
        return out

    def test_non_quantitative_companion_is_set_aside(self, copy: Path, study) -> None:
        self._add_nac(copy, quantitative=False)
        st = read_study(copy)
        assert [len(c.time_points) for c in st.cycles] == [4, 1]
        assert np.array_equal(st.cycles[0].time_points[1].image.array, study.cycles[0].time_points[1].image.array)
        assert "set aside" in scan(copy).describe()
        with pytest.raises(DicomReadError) as info:
            read_study(copy, strict=True)
        assert info.value.tag == "RealWorldValueMappingSequence"

    def test_second_quantitative_reconstruction_lowest_series_number_kept(self, copy: Path, study) -> None:
        self._add_nac(copy, quantitative=True)
        st = read_study(copy)
        assert [len(c.time_points) for c in st.cycles] == [4, 1]
        assert np.array_equal(st.cycles[0].time_points[1].image.array, study.cycles[0].time_points[1].image.array)

    def test_gated_multi_frame_refused(self, copy: Path) -> None:
        _edit(_nm(copy, "cycle1_tp3"), lambda ds: setattr(ds, "NumberOfSlices", 7))
        with pytest.raises(DicomReadError) as info:
            read_study(copy)
        assert info.value.tag == "NumberOfSlices"


class TestSegGrid:
    def test_seg_off_the_ct_grid_keeps_its_own_geometry(self, copy: Path, study) -> None:
        """A SEG whose frames sit half a voxel off the CT grid is read on its own grid, at the right place."""
        seg_path = next(copy.rglob("SEG_*.dcm"))
        dx = study.reference_ct.spacing_mm[0]

        def shift(ds):
            for item in ds.PerFrameFunctionalGroupsSequence:
                pos = item.PlanePositionSequence[0]
                ipp = [float(v) for v in pos.ImagePositionPatient]
                pos.ImagePositionPatient = [ipp[0] + 0.5 * dx, ipp[1], ipp[2]]

        _edit(seg_path, shift)
        seg = read_study(copy).segmentation
        ref = study.segmentation
        assert not seg.geometry.same_grid(ref.geometry)
        assert seg.geometry.origin_mm[0] == pytest.approx(ref.geometry.origin_mm[0] + 0.5 * dx)
        for name in ("kidneys", "lesion_node_1"):
            assert seg.volume_mL(name) == pytest.approx(ref.volume_mL(name), rel=1e-9)

            def centre(s, n=name):
                z, y, x = np.argwhere(s.masks[n]).mean(axis=0)
                return s.geometry.index_to_lps(np.array([x, y, z]))

            assert centre(seg) - centre(ref) == pytest.approx([0.5 * dx, 0.0, 0.0], abs=1e-6)
            # resampled onto the CT grid the mask keeps its volume
            frac = seg.fractional_mask(name, ref.geometry)
            assert frac.sum() * ref.geometry.voxel_volume_mL == pytest.approx(ref.volume_mL(name), rel=0.02)


class TestOrientation:
    def test_slightly_non_orthogonal_orientation_tolerated_not_in_strict(self, copy: Path) -> None:
        def skew(ds):
            ds.ImageOrientationPatient = [1, 0, 0, 0.002, 0.999998, 0]

        for f in next(copy.glob("cycle1_tp2*/CT")).glob("*.dcm"):
            _edit(f, skew)
        st = read_study(copy)
        assert np.allclose(st.cycles[0].time_points[1].ct.direction, np.eye(3), atol=3e-3)
        with pytest.raises(DicomReadError) as info:
            read_study(copy, strict=True)
        assert info.value.tag == "ImageOrientationPatient"


def test_progress_reported_from_0_to_1(demo) -> None:
    seen: list[tuple[float, str]] = []
    read_study(demo.dicom_dir, progress=lambda f, m: seen.append((f, m)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(seen) >= 5
    assert all(isinstance(m, str) and m for _, m in seen)


def test_duplicate_instances_are_read_once(copy: Path, study) -> None:
    """An export copied twice into the folder: every instance is read once, duplicates are listed as skipped."""
    shutil.copytree(next(copy.glob("cycle1_tp2*")), copy / "again", copy_function=_link_or_copy)
    st = read_study(copy)
    assert np.array_equal(st.cycles[0].time_points[1].image.array, study.cycles[0].time_points[1].image.array)
    inv = scan(copy)
    assert sum("duplicate of" in reason for _, reason in inv.skipped) == len(list((copy / "again").rglob("*.dcm")))


def test_legacy_converted_enhanced_ct(copy: Path, study) -> None:
    """The reference CT converted to one Legacy Converted Enhanced CT object (highdicom) reads the same."""
    import highdicom as hd

    folder = next(copy.glob("cycle1_tp1*/CT"))
    files = sorted(folder.glob("*.dcm"))
    datasets = [pydicom.dcmread(f) for f in reversed(files)]  # frame order must not matter
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(datasets, pydicom.uid.generate_uid(), 2,
                                                        pydicom.uid.generate_uid(), 1)
    shutil.rmtree(folder)
    folder.mkdir()
    enhanced.save_as(folder / "CT_enhanced.dcm")
    st = read_study(copy)
    assert st.reference_ct.geometry.same_grid(study.reference_ct.geometry)
    assert np.array_equal(st.reference_ct.array, study.reference_ct.array)
    assert st.segmentation is not None and st.segmentation.geometry.same_grid(study.segmentation.geometry)
