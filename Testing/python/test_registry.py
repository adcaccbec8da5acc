"""Registries: plug-ins registered from outside the package are found, bad names give clear errors."""

from __future__ import annotations

import pytest

import theratwin as tt
from theratwin.errors import ConfigurationError
from theratwin.registry import Registry


def test_register_and_lookup_case_insensitive() -> None:
    reg: Registry[object] = Registry("theratwin.test_nothing", "widget")
    obj = object()
    reg.register("MyThing", obj)
    assert reg.get("mything") is obj
    assert "MYTHING" in reg
    with pytest.raises(tt.ConfigurationError, match="Unknown widget 'other'.*mything"):
        reg.get("other")
    with pytest.raises(tt.ConfigurationError, match="already registered"):
        reg.register("mything", object())


def test_pipeline_runs_a_stage_registered_from_outside(small_study, tmp_path) -> None:
    from theratwin.pipeline import STAGES, Pipeline, PipelineConfig

    class CountVoxels:
        name = "count_voxels"
        requires = ()

        def run(self, ctx) -> None:
            for c in ctx.study.cycles:
                ctx.results.cycles[c.number].structure("kidneys").volume_mL = ctx.study.segmentation.volume_mL("kidneys")

    STAGES.register("count_voxels", CountVoxels)
    try:
        res = Pipeline(PipelineConfig(stages=("count_voxels",))).run(small_study, out_dir=tmp_path)
        # a stage list naming a stage that cannot run is refused before any stage runs (issue 18)
        with pytest.raises(ConfigurationError, match="not_installed"):
            Pipeline(PipelineConfig(stages=("count_voxels", "not_installed"))).run(small_study, out_dir=tmp_path / "x")
    finally:
        STAGES.unregister("count_voxels")
    assert res.cycles[1].structures["kidneys"].volume_mL == pytest.approx(small_study.segmentation.volume_mL("kidneys"))
    assert (tmp_path / "results.json").exists() and not (tmp_path / "x").exists()
