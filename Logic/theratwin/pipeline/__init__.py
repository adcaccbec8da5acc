"""The pipeline: one object that runs the stages (registration, kinetics, dosimetry, radiobiology, twin,
report, exports) on a :class:`~theratwin.study.Study` and collects :class:`~theratwin.results.Results`."""

from .core import (
    DEFAULT_STAGES,
    STAGES,
    Pipeline,
    PipelineConfig,
    PipelineContext,
    Stage,
    run_pipeline,
)
from .runs import RunOutput, demo_config, run_demo, run_folder

__all__ = ["Pipeline", "PipelineConfig", "PipelineContext", "Stage", "STAGES", "DEFAULT_STAGES", "run_pipeline", "RunOutput", "run_demo", "run_folder", "demo_config"]
