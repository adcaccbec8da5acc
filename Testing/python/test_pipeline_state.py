"""The typed contract between stages (``PipelineState``), the map-name helper and ``Pipeline.invalidate``.

Re-running from a stage is checked against what it must equal: a fresh run with the new option (computed from
scratch by the same stages, not by the invalidation code), with the earlier stages' objects left untouched.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

import theratwin as tt
from theratwin.errors import ConfigurationError
from theratwin.pipeline import DEFAULT_STAGES, Pipeline, PipelineConfig, PipelineState
from theratwin.results import CUMULATIVE, MapName, map_name, parse_map_name

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("Logic", "Modules", "Web", "Testing", "TheraTwinExtension", "docs")

# ``state["masks"]``, ``ctx.state.get("twin")``, ``state.setdefault(KEY, ...)``, ``state.pop(...)``: the string-keyed
# access PipelineState replaced (``twin_state[...]`` and other names ending in "state" are not matched)
_STRING_KEYED = re.compile(r"(?<![\w.])(?:\w+\.)*state\s*(?:\[|\.get\(|\.setdefault\(|\.pop\(|\.items\(|\.keys\()")


def string_keyed_state_access(text: str) -> list[str]:
    """The lines of ``text`` that index a pipeline state by string."""
    return [line.strip() for line in text.splitlines() if _STRING_KEYED.search(line)]


# --------------------------------------------------------------------------------------------- the state type
class TestPipelineState:
    def test_the_check_finds_string_keyed_access(self) -> None:
        """The source check below is able to fail: it finds each form the old dict was used in."""
        for line in ('masks = ctx.state["masks"]', "grid = ctx.state.get('reference_grid')",
                     "fits = state.setdefault(KEY, {})", 'context.state.pop("_stage_progress", None)',
                     "st = p.last_context.state['registration']", "for k, v in run.context.state.items():"):
            assert string_keyed_state_access(line) == [line], line
        for line in ("masks = ctx.state.masks", 'twin_state["x"] = 1', "self.state.busy", "run.state.twin",
                     "state = ctx.state"):
            assert string_keyed_state_access(line) == [], line

    def test_no_string_keyed_state_access_in_the_sources(self) -> None:
        own = Path(__file__).resolve()
        found = []
        for top in SOURCES:
            for path in sorted((ROOT / top).rglob("*")):
                if path.suffix not in (".py", ".md") or path.resolve() == own:
                    continue
                found += [f"{path.relative_to(ROOT)}: {line}"
                          for line in string_keyed_state_access(path.read_text(encoding="utf-8"))]
        assert found == [], "string-keyed pipeline state (use PipelineState's attributes):\n" + "\n".join(found)

    def test_unknown_attributes_are_refused(self) -> None:
        state = PipelineState()
        with pytest.raises(AttributeError):
            state.mask = {}  # type: ignore[attr-defined]  # a misspelt attribute is an error, not a new key
        with pytest.raises(ConfigurationError, match=r"Unknown pipeline state \['mask'\].*'masks'"):
            PipelineState.from_dict({"mask": {}})

    def test_a_dict_given_to_run_becomes_the_state(self) -> None:
        study = _study()
        p = Pipeline(PipelineConfig(stages=("registration",), stage_options=_OPTIONS))
        p.run(study, state={"output_files": {"note.txt": "kept"}})
        assert isinstance(p.last_context.state, PipelineState)
        assert p.last_context.state.output_files == {"note.txt": "kept"}
        assert p.last_context.state.reference_grid == GEOM
        with pytest.raises(ConfigurationError, match="_output_files"):
            p.run(study, state={"_output_files": {}})

    def test_every_attribute_is_filled_by_a_built_in_stage_or_by_the_caller(self) -> None:
        import dataclasses

        stages = {f.name: PipelineState.stage_of(f.name) for f in dataclasses.fields(PipelineState)}
        assert {s for s in stages.values() if s is not None} <= set(DEFAULT_STAGES)
        assert [name for name, s in stages.items() if s is None] == ["output_files"]
        assert PipelineState.__doc__ is not None
        assert all(f"    {name}\n" in PipelineState.__doc__ for name in stages)  # each one documented


# ----------------------------------------------------------------------------------------------- map names
class TestMapNames:
    def test_names_are_those_of_results_json_and_round_trip(self) -> None:
        assert map_name(1, "dose") == "cycle1/dose"
        assert map_name(12, "tia_sd") == "cycle12/tia_sd"
        assert map_name(np.int64(3), "bed") == "cycle3/bed"
        assert map_name(CUMULATIVE, "bed") == "cumulative/bed"
        for cycle in (1, 7, 42, CUMULATIVE):
            for kind in ("tia", "tia_sd", "effective_half_life", "dose", "dose_as_imaged", "bed"):
                parsed = parse_map_name(map_name(cycle, kind))
                assert parsed == MapName(None if cycle == CUMULATIVE else cycle, kind)
        assert parse_map_name("cumulative/dose").cumulative

    def test_other_names_are_not_map_names(self) -> None:
        for name in ("dose", "cycle/dose", "cycleX/dose", "cycle1", "cycle1/", "cycle1/dose/extra", "cycle١/dose",
                     "total/dose"):
            assert parse_map_name(name) is None, name
        with pytest.raises(TypeError):
            map_name("1", "dose")  # type: ignore[arg-type]

    def test_a_run_names_its_maps_with_the_helper(self) -> None:
        p = Pipeline(PipelineConfig(stages=("registration", "kinetics", "dosimetry", "radiobiology"),
                                    stage_options=_OPTIONS))
        res = p.run(_study())
        expected = {map_name(n, k) for n in (1, 2) for k in ("tia", "tia_sd", "dose", "bed")}
        expected |= {map_name(1, "effective_half_life"), map_name(CUMULATIVE, "dose"), map_name(CUMULATIVE, "bed")}
        assert expected <= set(res.maps)
        assert {"cycle1/tia", "cycle2/dose", "cumulative/bed"} <= set(res.maps)  # the names themselves, unchanged


# ---------------------------------------------------------------------------------------------- invalidation
LP = math.log(2.0) / tt.nuclides.get("Lu-177").half_life_h
GEOM = tt.Geometry((12, 14, 16), (4.8, 4.8, 4.8), origin_mm=(-36.0, -31.2, -26.4))
_OPTIONS = {"registration": {"spect_to_spect": False}}
STAGES = ("registration", "kinetics", "dosimetry", "radiobiology")


def _masks() -> dict[str, np.ndarray]:
    k = np.zeros(GEOM.shape, bool)
    k[3:9, 3:10, 3:8] = True
    lesion = np.zeros(GEOM.shape, bool)
    lesion[4:7, 5:8, 10:13] = True
    return {"kidneys": k, "lesion_1": lesion}


def _study() -> tt.Study:
    """Two cycles (four scans, then one), a kidney and a lesion with mono-exponential washout; aligned images."""
    masks = _masks()
    body = np.zeros(GEOM.shape, bool)
    body[1:11, 1:13, 1:15] = True
    cycles = []
    for n, hours, scale in ((1, (4.0, 24.0, 72.0, 168.0), 1.0), (2, (48.0,), 1.2)):
        start = datetime(2026, 3, 2, 9, 0) + timedelta(days=42 * (n - 1))
        adm = tt.Administration("PSMA-617", "Lu-177", 7400.0, start)
        tps = []
        for i, h in enumerate(hours):
            arr = np.where(body, 100.0 * math.exp(-(LP + 0.05) * h), 0.0).astype(np.float32)
            arr[masks["kidneys"]] = scale * 2e5 * math.exp(-(LP + 0.02) * h)
            arr[masks["lesion_1"]] = scale * 6e5 * math.exp(-(LP + 0.01) * h)
            ct = np.where(body, 30.0, -1000.0).astype(np.float32)
            tps.append(tt.TimePoint(tt.ImageVolume.from_geometry(arr, GEOM, "Bq/mL"), start + timedelta(hours=h),
                                    1200.0, ct=tt.ImageVolume.from_geometry(ct, GEOM, "HU") if (n, i) == (1, 0) else None,
                                    counts_per_MBq_s=18.0))
        cycles.append(tt.Cycle(n, adm, tps))
    seg = tt.Segmentation(GEOM, [tt.Structure("kidneys", 1), tt.Structure("lesion_1", 2)], masks)
    return tt.Study(tt.Patient("STATE-1"), cycles, seg)


def _config(method: str) -> PipelineConfig:
    return PipelineConfig(stages=STAGES, stage_options={**_OPTIONS, "dosimetry": {"method": method}})


def _comparable(res: tt.Results) -> dict:
    d = res.to_dict()
    d.pop("created")
    d["extras"].pop("stage_seconds", None)
    return d


def _assert_same(a, b, where: str = "") -> None:
    """Equal structure; equal numbers to 1e-9 relative (the stages are deterministic on these images)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and not isinstance(a, bool):
        assert b == pytest.approx(a, rel=1e-9, abs=1e-12), where
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def dvk_run():
    """A run with the voxel-kernel engine, its context kept."""
    p = Pipeline(_config("dvk"))
    p.run(_study())
    return p


class TestInvalidate:
    def test_rerun_with_another_engine_equals_a_fresh_run_and_keeps_the_earlier_stages(self, dvk_run) -> None:
        ctx = dvk_run.last_context
        study, results = ctx.study, ctx.results
        dose_dvk = results.cycles[1].structures["kidneys"].mean_dose_Gy
        kept = {name: getattr(ctx.state, name) for name in ("reference_grid", "aligned_spect", "registration",
                                                             "masks", "tacs", "tac_fits", "voxel_fits")}
        tia_map = results.maps["cycle1/tia"]
        seconds = dict(results.extras["stage_seconds"])

        assert Pipeline.invalidate(ctx, "dosimetry") == ["dosimetry", "radiobiology"]
        # what dosimetry and radiobiology produced is gone; what registration and kinetics produced is kept
        assert ctx.completed == ["registration", "kinetics"]
        assert ctx.state.dose_masks is None and ctx.state.density_g_per_mL is None
        assert not {"cycle1/dose", "cycle1/bed", "cumulative/dose"} & set(results.maps)
        kidneys = results.cycles[1].structures["kidneys"]
        assert kidneys.mean_dose_Gy is None and kidneys.bed_Gy is None and kidneys.tia_MBq_h is not None
        assert {m.stage for m in results.methods} >= {"registration", "kinetics"}
        assert not {m.stage for m in results.methods} & {"dosimetry", "radiobiology"}
        assert not any(w.stage in ("dosimetry", "radiobiology") for w in results.warnings)

        led = Pipeline(_config("led"))
        assert led.continue_run(ctx, STAGES) is results
        assert ctx.completed == list(STAGES)
        # the earlier stages did not run again: their objects and timings are the first run's
        assert all(getattr(ctx.state, name) is obj for name, obj in kept.items())
        assert results.maps["cycle1/tia"] is tia_map
        assert {k: results.extras["stage_seconds"][k] for k in ("registration", "kinetics")} == \
            {k: seconds[k] for k in ("registration", "kinetics")}
        assert results.cycles[1].structures["kidneys"].mean_dose_Gy != pytest.approx(dose_dvk, rel=1e-6)
        assert sum(m.stage == "dosimetry" for m in results.methods) == 1

        fresh = Pipeline(_config("led")).run(study)
        _assert_same(_comparable(fresh), _comparable(results))
        for key, image in fresh.maps.items():
            np.testing.assert_allclose(results.maps[key].array, image.array, rtol=1e-6, atol=0, err_msg=key)

    def test_invalidating_what_did_not_run_changes_nothing(self) -> None:
        p = Pipeline(PipelineConfig(stages=("registration",), stage_options=_OPTIONS))
        res = p.run(_study())
        before = _comparable(res)
        assert Pipeline.invalidate(p.last_context, "dosimetry") == []
        assert p.last_context.completed == ["registration"]
        _assert_same(before, _comparable(res))

    def test_invalidating_the_first_stage_goes_back_to_the_start(self) -> None:
        p = Pipeline(PipelineConfig(stages=("registration", "kinetics"), stage_options=_OPTIONS))
        study = _study()
        res = p.run(study, state=PipelineState(output_files={"note.txt": "kept"}))
        ctx = p.last_context
        assert Pipeline.invalidate(ctx, "registration") == ["registration", "kinetics"]
        assert ctx.completed == [] and res.maps == {} and ctx.checkpoints == {}
        assert ctx.state.aligned_spect is None and ctx.state.tac_fits is None
        assert ctx.state.output_files == {"note.txt": "kept"}  # the caller's, not a stage's
        _assert_same(_comparable(tt.Results.for_study(study)) | {"extras": {}},
                     _comparable(res) | {"extras": {}})

    def test_a_context_completed_by_hand_is_refused(self, dvk_run) -> None:
        from theratwin.pipeline import PipelineContext

        ctx = PipelineContext(_study(), tt.Results(study=None), _config("dvk"), completed=["registration"])
        with pytest.raises(ConfigurationError, match="'registration' was not run by the pipeline"):
            Pipeline.invalidate(ctx, "registration")

    def test_a_failed_stage_leaves_nothing_half_written(self) -> None:
        """A stage that fails (or is cancelled) after writing part of its output leaves the results and the state
        as they were before it, so that the context can be continued."""
        from theratwin.pipeline import STAGES

        class HalfWriting:
            name, requires, fail = "half_writing_test", ("registration",), True

            def run(self, ctx) -> None:
                ctx.results.warn(self.name, "started")
                ctx.results.maps[map_name(1, "partial")] = ctx.state.aligned_spect[1][0]
                ctx.results.cycles[1].structure("kidneys").mean_dose_Gy = 1.0
                ctx.state.dose_masks = {}
                if type(self).fail:
                    raise ConfigurationError("half way")

        STAGES.register(HalfWriting.name, HalfWriting)
        try:
            p = Pipeline(PipelineConfig(stages=("registration", HalfWriting.name), stage_options=_OPTIONS))
            with pytest.raises(ConfigurationError, match="half way"):
                p.run(_study())
            ctx = p.last_context
            before = Pipeline(PipelineConfig(stages=("registration",), stage_options=_OPTIONS)).run(ctx.study)
            assert ctx.completed == ["registration"] and set(ctx.checkpoints) == {"registration"}
            assert ctx.state.dose_masks is None and ctx.state.aligned_spect is not None
            _assert_same(_comparable(before), _comparable(ctx.results) | {"extras": _comparable(before)["extras"]})
            HalfWriting.fail = False
            p.continue_run(ctx, p.config.stages)
            assert ctx.completed == ["registration", HalfWriting.name]
            assert [w.message for w in ctx.results.warnings if w.stage == HalfWriting.name] == ["started"]
        finally:
            STAGES.unregister(HalfWriting.name)

    def test_undoing_output_stages_keeps_the_outputs_of_earlier_stages(self, tmp_path) -> None:
        """The files an earlier stage recorded (the twin's ``twin_state``) stay listed when only the output
        stages run again (the Slicer adapter used to clear ``results.outputs`` whole)."""
        from theratwin.pipeline import STAGES

        class Writes:
            requires = ()

            def __init__(self, name: str) -> None:
                self.name = name

            def run(self, ctx) -> None:
                (ctx.out_dir / f"{self.name}.txt").write_text(self.name)
                ctx.results.outputs[self.name] = f"{self.name}.txt"

        names = ("twin_like_test", "export_like_test")
        for name in names:
            STAGES.register(name, Writes(name))
        try:
            p = Pipeline(PipelineConfig(stages=names, write_outputs=False))
            res = p.run(_study(), out_dir=tmp_path)
            assert set(res.outputs) == set(names)
            assert Pipeline.invalidate(p.last_context, "export_like_test") == ["export_like_test"]
            assert res.outputs == {"twin_like_test": "twin_like_test.txt"}
            p.continue_run(p.last_context, names)
            assert set(res.outputs) == set(names)
        finally:
            for name in names:
                STAGES.unregister(name)
