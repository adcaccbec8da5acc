"""The pipeline: one object that runs the stages (registration, kinetics, dosimetry, radiobiology, twin,
report, exports) on a :class:`~theratwin.study.Study` and collects :class:`~theratwin.results.Results`.

Reading a folder or building the demo patient and then running the pipeline on it is the application's part,
:mod:`theratwin.pipeline.runs` (``run_demo``, ``run_folder``), above the library (``docs/architecture.md``).
"""

from __future__ import annotations

import importlib
from typing import Any

from .core import (
    DEFAULT_STAGES,
    STAGES,
    Pipeline,
    PipelineConfig,
    PipelineContext,
    PipelineState,
    Stage,
    run_pipeline,
)

__all__ = ["Pipeline", "PipelineConfig", "PipelineContext", "PipelineState", "Stage", "STAGES", "DEFAULT_STAGES",
           "run_pipeline", "RunOutput", "run_demo", "run_folder", "demo_config"]

_RUNS = ("RunOutput", "demo_config", "run_demo", "run_folder")


def __getattr__(name: str) -> Any:
    # The names of theratwin.pipeline.runs were published here before the application layer was split off; they
    # stay importable from here, loaded on first use so that importing the pipeline does not load the application.
    if name in _RUNS or name == "runs":
        runs = importlib.import_module(".runs", __name__)  # (`from . import runs` would call this again)
        return runs if name == "runs" else getattr(runs, name)
    raise AttributeError(f"module 'theratwin.pipeline' has no attribute {name!r}")
