"""Results -> table and plot nodes, and a scene saved to .mrb and read back."""

from __future__ import annotations

import math
import zipfile

import numpy as np
import pytest
import slicer

import theratwin as tt
import TheraTwinLib as L


def test_structure_table_holds_the_results(scene, results) -> None:
    table = L.structureResultsTableNode(scene, results)
    rows = [(c, s) for c in sorted(results.cycles) for s in results.cycles[c].structures.values()]
    assert table.GetNumberOfRows() == len(rows) == 4
    assert list(L.tableColumn(table, "Structure")) == [s.structure for _, s in rows]
    assert list(L.tableColumn(table, "Cycle")) == [c for c, _ in rows]
    for column, field, unit, _ in L.STRUCTURE_COLUMNS:
        values = L.tableColumn(table, column)
        for v, (_, s) in zip(values, rows, strict=True):
            expected = getattr(s, field)
            assert (math.isnan(v) if expected is None else v == pytest.approx(expected, rel=1e-12)), (column, v)
        assert table.GetColumnUnitLabel(column) == unit
    # one cycle only
    assert L.structureResultsTableNode(scene, results, cycles=[2]).GetNumberOfRows() == 2


def test_dvh_metrics_table(scene, results) -> None:
    table = L.dvhMetricsTableNode(scene, results, 1)
    assert list(L.tableColumn(table, "Structure")) == ["kidneys", "lesion_bone_1"]
    np.testing.assert_allclose(L.tableColumn(table, "D50_Gy"), [2.0, 3.0])
    assert table.GetColumnUnitLabel("D50_Gy") == "Gy"


def test_tac_chart_with_fitted_curves(scene, results) -> None:
    # analytic curves stand in for the kinetics fit: the chart must sample exactly these functions
    curves = {"kidneys": lambda t: 100.0 * np.exp(-0.012 * t)}
    chart = L.timeActivityChartNode(scene, results, 1, fittedCurves=curves)
    series = L.seriesOfChart(chart)
    assert [s.GetName() for s in series] == ["kidneys (measured)", "kidneys (fit)", "lesion_bone_1 (measured)"]
    measured = series[0]
    assert measured.GetLineStyle() == slicer.vtkMRMLPlotSeriesNode.LineStyleNone
    table = measured.GetTableNode()
    s = results.cycles[1].structure("kidneys")
    np.testing.assert_array_equal(L.tableColumn(table, measured.GetXColumnName()), s.time_h)
    np.testing.assert_array_equal(L.tableColumn(table, measured.GetYColumnName()), s.activity_MBq)
    fit = series[1]
    t = L.tableColumn(fit.GetTableNode(), "time_h")
    assert t[0] == 0.0 and t[-1] == pytest.approx(1.5 * 96.0)
    np.testing.assert_allclose(L.tableColumn(fit.GetTableNode(), fit.GetYColumnName()), 100.0 * np.exp(-0.012 * t))
    # the colour of a structure's series is its segment colour
    np.testing.assert_allclose(measured.GetColor(), np.array((185, 102, 83)) / 255.0)


def test_dvh_chart(scene, results) -> None:
    chart = L.dvhChartNode(scene, results, 1)
    series = L.seriesOfChart(chart)
    assert len(series) == 2
    table = series[0].GetTableNode()
    np.testing.assert_array_equal(L.tableColumn(table, "kidneys dose_Gy"), [0, 1, 2, 3, 4])
    np.testing.assert_allclose(L.tableColumn(table, "kidneys volume_percent"), [100, 90, 50, 10, 0])


def test_scene_saved_to_mrb_and_read_back(scene, study, results, tmp_path) -> None:
    nodes = L.addStudyToScene(scene, study)
    dose = L.showMap(scene, results, "cycle1/dose")
    table = L.structureResultsTableNode(scene, results)
    chart = L.timeActivityChartNode(scene, results, 1)
    path = L.saveSceneToBundle(scene, tmp_path / "theratwin.mrb")
    names = zipfile.ZipFile(path).namelist()
    assert any(n.endswith(".mrml") for n in names) and any(n.endswith(".seg.nrrd") for n in names)

    loaded = L.loadSceneFromBundle(path)
    dose2 = loaded.GetFirstNodeByName(dose.GetName())
    assert dose2 is not None and dose2.GetID() != ""
    assert dose2.GetAttribute("DicomRtImport.DoseVolume") == "1"
    image = L.imageFromVolumeNode(dose2)
    assert image.unit == "Gy"
    assert np.array_equal(image.array, results.maps["cycle1/dose"].array)
    assert image.geometry.same_grid(results.maps["cycle1/dose"].geometry, tolerance_mm=1e-4)
    assert dose2.GetDisplayNode().GetColorNode().GetName() == L.DOSE_COLOR_TABLE_NAME
    # the study comes back from the loaded scene with the same values
    back = L.studyFromNodes(L.timePointNodes(loaded), segmentationNode=loaded.GetFirstNodeByName(
        nodes.segmentation.GetName()))
    for c0, c1 in zip(study.cycles, back.cycles, strict=True):
        assert c1.administration == c0.administration
        for t0, t1 in zip(c0.time_points, c1.time_points, strict=True):
            assert t1.acquisition_start == t0.acquisition_start
            assert np.array_equal(t1.image.array, t0.image.array)
    for s in study.segmentation.structures:
        assert np.array_equal(back.segmentation.masks[s.name], study.segmentation.masks[s.name])
    table2 = loaded.GetFirstNodeByName(table.GetName())
    for column, *_ in L.STRUCTURE_COLUMNS:
        # Slicer's table storage (TSV) writes numbers with six significant digits; voxel data stay exact
        np.testing.assert_allclose(L.tableColumn(table2, column), L.tableColumn(table, column), rtol=1e-6)
        assert table2.GetColumnUnitLabel(column) == table.GetColumnUnitLabel(column)
    assert list(L.tableColumn(table2, "Structure")) == list(L.tableColumn(table, "Structure"))
    chart2 = loaded.GetFirstNodeByName(chart.GetName())
    assert [s.GetName() for s in L.seriesOfChart(chart2)] == [s.GetName() for s in L.seriesOfChart(chart)]


def test_loading_a_missing_bundle_names_the_file(tmp_path) -> None:
    with pytest.raises(OSError, match="nothing.mrb"):
        L.loadSceneFromBundle(tmp_path / "nothing.mrb")


def test_unit_of_tia_map(scene, results) -> None:
    node = L.showMap(scene, results, "cycle1/tia")
    assert L.imageFromVolumeNode(node).unit == "Bq.h/mL"
    assert isinstance(L.imageFromVolumeNode(node), tt.ImageVolume)


# ------------------------------------------------------------------------------------------- on the demo patient


def test_demo_results_in_tables_and_charts(demo_scene, demo_run) -> None:
    scene, results = demo_scene["scene"], demo_run.results
    table = L.structureResultsTableNode(scene, results, name="demo results")
    rows = [(c, s) for c in sorted(results.cycles) for s in results.cycles[c].structures.values()]
    assert table.GetNumberOfRows() == len(rows) > 20
    names = list(L.tableColumn(table, "Structure"))
    kidneys = names.index("kidneys")  # first cycle's kidneys row
    assert L.tableColumn(table, "TIA_MBq_h")[kidneys] == results.cycles[1].structure("kidneys").tia_MBq_h
    assert L.tableColumn(table, "MeanDose_Gy")[kidneys] == results.cycles[1].structure("kidneys").mean_dose_Gy
    # the TAC chart draws each structure's own fit: it passes near that structure's measurements
    chart = L.timeActivityChartNode(scene, results, 1, fittedCurves=L.fittedCurves(results, 1, demo_run.state))
    series = {s.GetName(): s for s in L.seriesOfChart(chart)}
    measured, fit = series["kidneys (measured)"], series["kidneys (fit)"]
    s = results.cycles[1].structure("kidneys")
    np.testing.assert_array_equal(L.tableColumn(measured.GetTableNode(), measured.GetYColumnName()), s.activity_MBq)
    t = L.tableColumn(fit.GetTableNode(), "time_h")
    curve = L.tableColumn(fit.GetTableNode(), fit.GetYColumnName())
    np.testing.assert_allclose(np.interp(s.time_h, t, curve), s.activity_MBq, rtol=0.25)
    # cumulative DVH from 100 % down, never increasing
    dvh = {x.GetName(): x for x in L.seriesOfChart(L.dvhChartNode(scene, results, 1))}["kidneys DVH"]
    volume = L.tableColumn(dvh.GetTableNode(), dvh.GetYColumnName())
    volume = volume[np.isfinite(volume)]
    assert volume[0] == pytest.approx(100.0) and np.all(np.diff(volume) <= 1e-9)


def test_demo_scene_saved_to_mrb_and_read_back(demo_scene, demo_run, tmp_path) -> None:
    scene, nodes = demo_scene["scene"], demo_scene["nodes"]
    maps = L.showMaps(scene, demo_run.results, ("dose", "tia"))
    path = L.saveSceneToBundle(scene, tmp_path / "demo.mrb")
    loaded = L.loadSceneFromBundle(path)
    for key, node in maps.items():
        back = loaded.GetFirstNodeByName(node.GetName())
        assert np.array_equal(L.imageFromVolumeNode(back).array, demo_run.results.maps[key].array), key
        assert L.isDoseVolume(back) == (key.endswith("/dose"))
    study = L.studyFromNodes(L.timePointNodes(loaded),
                             segmentationNode=loaded.GetFirstNodeByName(nodes.segmentation.GetName()))
    original = demo_run.study
    assert study.patient == original.patient and study.study_uid == original.study_uid
    for c0, c1 in zip(original.cycles, study.cycles, strict=True):
        assert c1.administration == c0.administration
        for t0, t1 in zip(c0.time_points, c1.time_points, strict=True):
            assert np.array_equal(t1.image.array, t0.image.array)
            assert t1.source == t0.source
    for name in original.segmentation.names:
        assert np.array_equal(study.segmentation.masks[name], original.segmentation.masks[name]), name


def test_kept_run_is_continued_and_outputs_rewritten(scene, study, tmp_path) -> None:
    """Same nodes: longer stage lists continue the kept run; another output folder re-runs only the output
    stage; changed inputs start again."""
    from theratwin.pipeline.core import STAGES, load_builtin_stages

    load_builtin_stages()
    if not {"registration", "kinetics", "fhir_export"} <= set(STAGES):
        pytest.skip("pipeline stages not installed yet")
    L.clearPipelineCache()
    nodes = L.addStudyToScene(scene, study)
    for node in nodes.allTimePoints():
        node.RemoveNodeReferenceIDs("TheraTwin.CT")
    tps, seg = nodes.allTimePoints(), nodes.segmentation
    options = {"registration": {"spect_to_spect": False}}
    first = L.runPipelineOnNodes(tps, segmentationNode=seg, stages=("registration",), stageOptions=options)
    second = L.runPipelineOnNodes(tps, segmentationNode=seg, stages=("registration", "kinetics"), stageOptions=options)
    assert second is first and second.completedStages == ["registration", "kinetics"]
    third = L.runPipelineOnNodes(tps, segmentationNode=seg, stages=("registration", "kinetics", "fhir_export"),
                                 stageOptions=options, outDir=tmp_path / "a")
    assert third is first and (tmp_path / "a" / "fhir-bundle.json").is_file()
    fourth = L.runPipelineOnNodes(tps, segmentationNode=seg, stages=("registration", "kinetics", "fhir_export"),
                                  stageOptions=options, outDir=tmp_path / "b")
    assert fourth is first and (tmp_path / "b" / "fhir-bundle.json").is_file()
    assert fourth.completedStages == ["registration", "kinetics", "fhir_export"]
    # other options for an early stage, or a modified input node: a new run
    other = L.runPipelineOnNodes(tps, segmentationNode=seg, stages=("registration",))
    assert other is not first
    assert L.runPipelineOnNodes(tps, segmentationNode=seg, stages=("registration",)) is other
    tps[0].SetAttribute("TheraTwin.AcquisitionDuration_s", "1000.0")
    changed = L.runPipelineOnNodes(tps, segmentationNode=seg, stages=("registration",))
    assert changed is not other and changed.study.cycles[0].time_points[0].acquisition_duration_s == 1000.0


@pytest.mark.parametrize("forget", [True, False], ids=["forgetStages", "other-options"])
def test_rerun_from_dosimetry_keeps_the_earlier_stages(scene, study, forget) -> None:
    """Re-running dosimetry with another engine, asked for with ``forgetStages`` (the web app's re-run) or by a
    request with other dosimetry options (the Dosimetry module), keeps registration and kinetics (the same
    objects, not recomputed), replaces the dose fields and records the dosimetry method once."""
    from theratwin.pipeline.core import STAGES, load_builtin_stages

    load_builtin_stages()
    stages = ("registration", "kinetics", "dosimetry")
    if not set(stages) <= set(STAGES):
        pytest.skip("pipeline stages not installed yet")
    L.clearPipelineCache()
    nodes = L.addStudyToScene(scene, study)
    tps, seg = nodes.allTimePoints(), nodes.segmentation
    options = {"registration": {"spect_to_spect": False}, "dosimetry": {"method": "dvk"}}
    run = L.runPipelineOnNodes(tps, segmentationNode=seg, stages=stages, stageOptions=options)
    kidneys = run.results.cycles[1].structures["kidneys"]
    tia, dose_dvk = kidneys.tia_MBq_h, kidneys.mean_dose_Gy
    earlier = {k: getattr(run.state, k) for k in ("reference_grid", "aligned_spect", "registration", "masks",
                                                  "tac_fits")}
    assert run.state is run.context.state and all(v is not None for v in earlier.values())
    tiaMap, seconds = run.results.maps["cycle1/tia"], dict(run.results.extras["stage_seconds"])
    if forget:
        assert L.forgetStages(run, "nothing-ran") == []
        assert L.forgetStages(run, "dosimetry") == ["dosimetry"]
        assert run.completedStages == ["registration", "kinetics"]
    again = L.runPipelineOnNodes(tps, segmentationNode=seg, stages=stages,
                                 stageOptions={**options, "dosimetry": {"method": "led"}})
    assert again is run and run.completedStages == list(stages)
    assert all(getattr(run.context.state, k) is v for k, v in earlier.items())
    assert run.results.maps["cycle1/tia"] is tiaMap
    assert {k: run.results.extras["stage_seconds"][k] for k in ("registration", "kinetics")} == \
        {k: seconds[k] for k in ("registration", "kinetics")}
    kidneys = run.results.cycles[1].structures["kidneys"]
    assert kidneys.tia_MBq_h == tia and "led" in (kidneys.dose_method or "").lower()
    assert kidneys.mean_dose_Gy != dose_dvk
    assert sum(m.stage == "dosimetry" for m in run.results.methods) == 1


def test_color_legend_titles_the_dose_in_gray(scene, results) -> None:
    node = L.showMap(scene, results, "cycle1/dose")
    legend = L.showColorLegend(node, title="Dose (Gy)")
    assert legend.IsA("vtkMRMLColorLegendDisplayNode") and legend.GetTitleText() == "Dose (Gy)"
    assert legend.GetVisibility() and legend.GetPrimaryDisplayNode() is node.GetDisplayNode()
    assert L.showColorLegend(node, visible=False) is legend and not legend.GetVisibility()  # reused, not a new one
    assert legend.GetTitleText() == "TheraTwin cycle1 dose (Gy)"  # default: node name and TheraTwin.Unit
    assert scene.GetNumberOfNodesByClass("vtkMRMLColorLegendDisplayNode") == 1
