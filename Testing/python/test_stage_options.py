"""One options mechanism for every stage: ``Options`` dataclasses parsed by ``theratwin.options.parse_options``.

Checked against what a user (and the front ends) give: unknown keys refused with the stage, the key, the known
keys and a suggestion; values checked against the declared types; the option names the CLI, Slicer modules, web
app and demo settings pass still accepted; and ``write_outputs=False`` writes no file at all.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
from test_outputs_durable import _study  # one cycle, four time points, one structure: all stages in seconds

import theratwin as tt
from theratwin.options import parse_options, suggest
from theratwin.pipeline import STAGES, Pipeline, PipelineConfig
from theratwin.pipeline.core import DEFAULT_STAGES, load_builtin_stages
from theratwin.pipeline.runs import demo_config

load_builtin_stages()
BUILTIN = [name for name in DEFAULT_STAGES if name in STAGES]


def _options(name: str) -> Any:
    return STAGES.get(name).Options


def test_every_builtin_stage_is_installed_and_declares_options() -> None:
    assert BUILTIN == list(DEFAULT_STAGES)


@pytest.mark.parametrize("name", BUILTIN)
def test_options_are_a_frozen_documented_dataclass_whose_defaults_parse_from_nothing(name: str) -> None:
    cls = _options(name)
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
    doc = " ".join(inspect.getdoc(c) or "" for c in cls.__mro__ if dataclasses.is_dataclass(c))
    undocumented = [f.name for f in dataclasses.fields(cls) if not re.search(rf"\b{f.name}\b", doc)]
    assert not undocumented, f"{name}: fields not in the docstring of {cls.__name__}: {undocumented}"
    opts = parse_options(cls, {}, stage=name)
    assert opts == cls() == parse_options(cls, None, stage=name)
    first = dataclasses.fields(cls)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(opts, first, getattr(opts, first))


@pytest.mark.parametrize("name", BUILTIN)
def test_unknown_key_is_refused_before_any_work_naming_stage_key_and_known_keys(name: str, tmp_path: Path) -> None:
    cls = _options(name)
    config = PipelineConfig(stage_options={name: {"no_such_option_xyz": 1}})
    with pytest.raises(tt.ConfigurationError) as info:
        Pipeline(config).run(_study(), out_dir=tmp_path / "out")
    msg = str(info.value)
    assert f"Unknown {name} options ['no_such_option_xyz']" in msg and "\n" not in msg
    assert all(f.name in msg for f in dataclasses.fields(cls))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.*"))  # refused before any work


@pytest.mark.parametrize("name", BUILTIN)
def test_misspelt_key_gets_the_right_suggestion(name: str) -> None:
    # the longest option name with two different inner letters swapped, the commonest typing slip
    target = max((f.name for f in dataclasses.fields(_options(name))), key=len)
    i = next(i for i in range(2, len(target) - 1) if target[i] != target[i + 1])
    typo = target[:i] + target[i + 1] + target[i] + target[i + 2:]
    with pytest.raises(tt.ConfigurationError, match=re.escape(f"(did you mean '{target}'?)")):
        Pipeline(PipelineConfig(stage_options={name: {typo: None}})).check_options()


def test_suggestions_for_a_fragment_and_for_nothing_close() -> None:
    known = ["system_fwhm_mm", "counts_per_MBq_s", "voxel_fits"]
    assert suggest("fwhm", known) == "system_fwhm_mm"  # a fragment of one name
    assert suggest("sytem_fwhm_mm", known) == "system_fwhm_mm"
    assert suggest("colour", known) is None


def test_misspelt_stage_name_in_stage_options_is_refused_with_a_suggestion() -> None:
    with pytest.raises(tt.ConfigurationError, match=r"Unknown stage in stage_options \['dosimetery'\] "
                                                    r"\(did you mean 'dosimetry'\?\)"):
        Pipeline(PipelineConfig(stage_options={"dosimetery": {"method": "led"}})).check_options()
    # a stage in the list that is not installed keeps being skipped with a warning, its options unread
    Pipeline(PipelineConfig(stages=(*DEFAULT_STAGES, "site_mc"), stage_options={"site_mc": {"n": 1}})).check_options()


@pytest.mark.parametrize(("stage", "options", "expected"), [
    ("kinetics", {"voxel_fits": "no"}, r"stage_options\['kinetics'\]\['voxel_fits'\] must be true or false; got 'no'"),
    ("kinetics", {"stp_method": "hanscheld"},
     r"\['stp_method'\] must be one of 'prior', 'hanscheid' \(did you mean 'hanscheid'\?\)"),
    ("kinetics", {"system_fwhm_mm": "11 mm"}, r"\['system_fwhm_mm'\] must be a number or null; got '11 mm'"),
    ("dosimetry", {"vx_Gy": 20}, r"\['vx_Gy'\] must be a list of numbers; got 20"),
    ("dosimetry", {"hu_density_points": [[-1000, 0.001], [0]]}, r"\['hu_density_points'\] must be a list"),
    ("dosimetry", {"method": "dvkk"}, r"stage_options\['dosimetry'\]: Unknown dose engine 'dvkk' "
                                      r"\(dosimetry option 'method'\) \(did you mean 'dvk'\?\)"),
    ("twin", {"n_draws": 1000.5}, r"\['n_draws'\] must be a whole number; got 1000.5"),
    ("twin", {"confidence": True}, r"\['confidence'\] must be a number; got True"),
    ("registration", {"metric": "mutual_information"}, r"must be one of 'mattes', 'correlation'"),
    ("radiobiology", {"indication": "prostate"}, r"Unknown radiobiology indication 'prostate' \(did you mean "
                                                 r"'prostate_cancer'\?\)"),
    ("radiobiology", {"risk_factors": "kidneys"}, r"must be true or false or a list of texts"),
    ("dicom_export", {"seg_algorithm_type": "MANUEL"}, r"seg_algorithm_type must be one of MANUAL, SEMIAUTOMATIC"),
    ("fhir_export", {"push_retries": "3"}, r"\['push_retries'\] must be a whole number or null"),
    ("report", {"pdf": 1}, r"\['pdf'\] must be true or false; got 1"),
    ("kinetics", [("model", "auto")], r"stage_options\['kinetics'\] must be a mapping of option names to values"),
])
def test_bad_values_are_refused_with_the_option_and_what_it_must_be(stage: str, options: Any, expected: str) -> None:
    with pytest.raises(tt.ConfigurationError, match=expected):
        parse_options(_options(stage), options, stage=stage)


def test_json_values_become_the_declared_types() -> None:
    reg = parse_options(_options("registration"), {"pyramid_voxel_mm": [16, 8], "smoothing_sigmas_vox": [1, 0],
                                                   "iterations": 40.0}, stage="registration")
    assert reg.pyramid_voxel_mm == (16.0, 8.0) and isinstance(reg.pyramid_voxel_mm, tuple)
    assert reg.iterations == 40 and isinstance(reg.iterations, int)
    dose = parse_options(_options("dosimetry"), {"vx_Gy": [10, 20], "hu_density_points": [[-1000, 0], [0, 1]]},
                         stage="dosimetry")
    assert dose.vx_Gy == (10.0, 20.0) and dose.hu_density_points == [(-1000.0, 0.0), (0.0, 1.0)]
    twin = parse_options(_options("twin"), {"administered_MBq": 7400, "predict_cycle": np.int64(3)}, stage="twin")
    assert twin.administered_MBq == 7400.0 and type(twin.predict_cycle) is int
    radio = parse_options(_options("radiobiology"), {"risk_factors": ["kidneys"], "voxel_maps": np.bool_(False)},
                          stage="radiobiology")
    assert radio.risk_factors == ["kidneys"] and radio.voxel_maps is False


def test_a_plugin_stage_declares_its_options_the_same_way() -> None:
    @dataclasses.dataclass(frozen=True)
    class Options:
        """Options of the site's stage.

        Attributes
        ----------
        histories
            Monte Carlo histories per voxel.
        physics
            Physics list.
        """

        histories: int = 1000
        physics: Literal["standard", "livermore"] = "standard"

    class SiteStage:
        name = "site_mc_stage"
        requires: tuple[str, ...] = ()
        Options: Any = None  # set below (the class body cannot see the local name)

        def run(self, context: Any) -> None:
            context.results.extras["site_mc_stage"] = dataclasses.asdict(
                parse_options(self.Options, context.config.options(self.name), stage=self.name))

    SiteStage.Options = Options
    STAGES.register("site_mc_stage", SiteStage, replace=True)
    try:
        with pytest.raises(tt.ConfigurationError, match=r"Unknown site_mc_stage options \['histries'\] \(did you "
                                                        r"mean 'histories'\?\); known: histories, physics\."):
            Pipeline(PipelineConfig(stages=("site_mc_stage",),
                                    stage_options={"site_mc_stage": {"histries": 10}})).run(_study())
        res = Pipeline(PipelineConfig(stages=("site_mc_stage",),
                                      stage_options={"site_mc_stage": {"histories": 10.0}})).run(_study())
        assert res.extras["site_mc_stage"] == {"histories": 10, "physics": "standard"}
    finally:
        STAGES.unregister("site_mc_stage")


def test_option_names_the_front_ends_pass_are_accepted() -> None:
    """The options the CLI (--priors), the Slicer modules, the web app and the demo settings give (grep for
    stage_options / stageOptions): a rename would break them silently, so they are listed here."""
    given = {
        "registration": {"spect_to_spect": False},  # TheraTwinKinetics without CT
        "kinetics": {"model": "mono_exp"},  # TheraTwinKinetics model choice
        "dosimetry": {"method": "led"},  # TheraTwinDosimetry, web dose method
        "twin": {"confidence": 0.9, "predict_cycle": 3, "administered_MBq": 7400.0, "priors": "/site/priors.json"},
        "report": {"pdf": False, "dicom": False, "title": "t", "institution": "i", "show_body_outline": True},
        "dicom_export": {"seg_algorithm_type": "SEMIAUTOMATIC"},
        "fhir_export": {"push_retries": 1, "push_backoff_s": 0.05, "timezone": "Europe/Berlin",
                        "include_reports": False},
    }
    for stage, options in {**given, **demo_config().stage_options}.items():
        parse_options(_options(stage), options, stage=stage)
    Pipeline(PipelineConfig(stage_options=given)).check_options()


def test_write_outputs_false_writes_no_file(tmp_path: Path) -> None:
    """Every stage that writes files honours ``write_outputs=False`` (the same run with True writes them)."""
    written = tmp_path / "written"
    res = Pipeline(PipelineConfig()).run(_study(), out_dir=written)
    files = sorted(p.relative_to(written).as_posix() for p in written.rglob("*") if p.is_file())
    for expected in ("results.json", "report.html", "fhir-bundle.json", "twin-state.json"):
        assert expected in files
    assert any(f.startswith("dicom/rtdose") for f in files)
    assert {"twin_state", "fhir_bundle", "report_html", "dicom"} <= set(res.outputs)

    quiet = tmp_path / "quiet"
    res = Pipeline(PipelineConfig(write_outputs=False)).run(_study(), out_dir=quiet)
    assert [p for p in quiet.rglob("*") if p.is_file()] == []
    assert not set(res.outputs) & {"twin_state", "fhir_bundle", "report_html", "report_pdf", "report_dicom", "dicom"}
    assert res.twin and res.cycles[1].structures["kidneys"].mean_dose_Gy > 0  # computed, only not written
    assert any(w.stage == "dicom_export" and "write_outputs" in w.message for w in res.warnings)
