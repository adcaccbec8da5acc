"""The study data model validates on construction and computes times from datetimes."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest

import theratwin as tt


class TestGeometry:
    def test_index_lps_round_trip_with_rotation(self) -> None:
        rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
        g = tt.Geometry((5, 6, 7), (2.0, 3.0, 4.0), (10.0, -5.0, 3.0), rot)
        ijk = np.array([[1.5, 2.0, 3.0], [0, 0, 0]])
        lps = g.index_to_lps(ijk)
        assert np.allclose(lps[1], (10.0, -5.0, 3.0))
        assert np.allclose(lps[0], np.array([10.0, -5.0, 3.0]) + rot @ (ijk[0] * (2.0, 3.0, 4.0)))
        assert np.allclose(g.lps_to_index(lps), ijk)

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"shape": (0, 2, 2), "spacing_mm": (1, 1, 1)},
            {"shape": (2, 2, 2), "spacing_mm": (1, -1, 1)},
            {"shape": (2, 2, 2), "spacing_mm": (1, 1, 1), "direction": ((1, 0, 0), (1, 0, 0), (0, 0, 1))},
        ],
    )
    def test_invalid_geometry_is_refused(self, kwargs: dict) -> None:
        with pytest.raises(tt.InvalidInputError):
            tt.Geometry(**kwargs)


class TestImageVolume:
    def test_sitk_round_trip_keeps_values_and_geometry(self, small_geometry: tt.Geometry) -> None:
        arr = np.random.default_rng(1).random(small_geometry.shape).astype(np.float32)
        vol = tt.ImageVolume.from_geometry(arr, small_geometry, "Bq/mL")
        back = tt.ImageVolume.from_sitk(vol.to_sitk(), "Bq/mL")
        assert np.array_equal(back.array, arr)
        assert back.geometry.same_grid(small_geometry)

    def test_resample_to_finer_grid_conserves_integral(self, small_geometry: tt.Geometry) -> None:
        arr = np.zeros(small_geometry.shape, np.float32)
        arr[2:6, 3:7, 3:9] = 100.0
        vol = tt.ImageVolume.from_geometry(arr, small_geometry, "Bq/mL")
        fine = tt.Geometry(
            (16, 20, 24), (2.4, 2.4, 2.4),
            tuple(np.array(small_geometry.origin_mm) - 1.2),  # voxel-centre convention: edges coincide
        )
        out = vol.resample_to(fine, order=0)
        total_before = arr.sum() * small_geometry.voxel_volume_mL
        total_after = out.array.sum() * fine.voxel_volume_mL
        assert total_after == pytest.approx(total_before, rel=1e-6)

    def test_non_3d_array_is_refused(self) -> None:
        with pytest.raises(tt.InvalidInputError, match="3D"):
            tt.ImageVolume(np.zeros((3, 3)))


class TestStudy:
    def test_time_since_administration_to_the_second(self, small_study: tt.Study) -> None:
        c = small_study.cycles[0]
        assert c.times_h.tolist() == [4.0, 24.0]
        tp = c.time_points[0]
        tp2 = tt.TimePoint(tp.image, c.administration.start + timedelta(hours=4, seconds=1), 600.0)
        assert tp2.time_h(c.administration) * 3600 == pytest.approx(4 * 3600 + 1, abs=1e-6)

    def test_acquisition_before_administration_is_refused(self, small_study: tt.Study) -> None:
        c = small_study.cycles[0]
        early = tt.TimePoint(c.time_points[0].image, c.administration.start - timedelta(minutes=5))
        with pytest.raises(tt.InvalidInputError, match="before the administration"):
            tt.Cycle(1, c.administration, [early])

    def test_non_quantitative_image_is_refused(self, small_geometry: tt.Geometry) -> None:
        img = tt.ImageVolume.from_geometry(np.zeros(small_geometry.shape), small_geometry, "counts")
        with pytest.raises(tt.InvalidInputError, match="Bq/mL"):
            tt.TimePoint(img, datetime(2026, 1, 1))

    def test_bad_administration_is_refused(self) -> None:
        with pytest.raises(tt.InvalidInputError, match="activity"):
            tt.Administration("PSMA-617", "Lu-177", 0.0, datetime(2026, 1, 1))
        with pytest.raises(tt.InvalidInputError, match="nuclide"):
            tt.Administration("PSMA-617", "Lu-999x", 7400.0, datetime(2026, 1, 1))

    def test_structures_get_snomed_codes(self, small_study: tt.Study) -> None:
        k = small_study.segmentation.structure("kidneys")
        assert (k.property_type.value, k.property_type.scheme) == ("64033007", "SCT")
        assert k.tissue == "kidney"
        lesion = tt.Structure("lesion_bone_1", 5)
        assert lesion.is_lesion and lesion.kind.anatomic_region.meaning == "Bone"

    def test_segmentation_volume(self, small_study: tt.Study) -> None:
        seg = small_study.segmentation
        assert seg.volume_mL("kidneys") == pytest.approx(4 * 4 * 4 * 4.8**3 / 1000)


class TestResults:
    def test_results_json_has_cycles_and_notice(self, small_study: tt.Study, tmp_path) -> None:
        import json

        res = tt.Results.for_study(small_study)
        sr = res.cycles[1].structure("kidneys")
        sr.tia_MBq_h = 1234.5
        res.warn("kinetics", "fallback to physical decay", structure="kidneys", cycle=1)
        data = json.loads(res.write_json(tmp_path / "r.json").read_text())
        assert data["cycles"]["1"]["structures"]["kidneys"]["tia_MBq_h"] == 1234.5
        assert "mean_dose_Gy" not in data["cycles"]["1"]["structures"]["kidneys"]  # not computed -> absent
        assert "RESEARCH USE" in data["notice"]
        assert data["cycles"]["1"]["time_points_h"] == [4.0, 24.0]
