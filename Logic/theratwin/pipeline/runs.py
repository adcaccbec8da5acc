"""Whole runs: the demo patient and a folder of DICOM, as the CLI and Slicer run them.

Both return the :class:`~theratwin.results.Results` and leave the same files in ``out_dir``; the CLI only adds
progress bars and a printed summary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..progress import ProgressCallback, scaled
from ..results import Results
from .core import Pipeline, PipelineConfig, PipelineContext, PipelineState

__all__ = ["RunOutput", "run_demo", "run_folder", "demo_config"]


@dataclass
class RunOutput:
    """What a whole run produced: results, the pipeline context (in-memory state) and the output folder."""

    results: Results
    context: PipelineContext
    out_dir: Path
    truth: dict[str, Any] | None = None


def run_demo(out_dir: str | Path, *, config: PipelineConfig | None = None, cache_dir: str | Path | None = None,
             seed: int | None = None, progress: ProgressCallback | None = None,
             demo_progress: ProgressCallback | None = None, **demo_options: Any) -> RunOutput:
    """Build (or reuse) the demo patient, read it back as DICOM and run the pipeline on it.

    Writes ``demo-truth.json`` next to the pipeline outputs in ``out_dir``. ``demo_options`` go to
    :func:`theratwin.demo.build_demo` (``fast``, ``noise``, ``blur``, ``misalign``).
    """
    from ..demo import build_demo
    from ..dicom import read_study

    out = Path(out_dir)
    demo = build_demo(cache_dir, seed=seed, progress=demo_progress or scaled(progress, 0.0, 0.1), **demo_options)
    cfg = demo_config(config)
    Pipeline(cfg).check_stages()  # a stage list that cannot run fails before the work
    study = read_study(demo.dicom_dir, options=cfg.read_options())
    pipe = Pipeline(cfg)
    # the truth file is one of the run's files: written (and listed in the manifest) when the run is sealed
    extra = {"demo-truth.json": json.dumps(demo.truth, indent=2)}
    results = pipe.run(study, out_dir=out, progress=scaled(progress, 0.1, 1.0) if demo_progress is None else progress,
                       state=PipelineState(output_files=extra))
    return RunOutput(results, pipe.last_context, out, demo.truth)


def demo_config(config: PipelineConfig | None = None) -> PipelineConfig:
    """The settings ``theratwin demo`` runs the demo patient with (every front end uses them for the demo).

    The demo documents its reconstructed SPECT resolution, camera sensitivity and CT calibration; the kinetics
    stage uses the first two for the partial-volume correction and the counting statistics, the dosimetry stage
    the third for densities, unless the caller set them (a site takes them from its own phantom measurements)."""
    from dataclasses import replace

    from ..demo import RESOLUTION_FWHM_MM, SENSITIVITY_CPS_PER_MBQ
    from ..demo.phantom import scanner_hu_density_points

    cfg = config or PipelineConfig()
    options = {k: dict(v) for k, v in cfg.stage_options.items()}
    kinetics = options.setdefault("kinetics", {})
    kinetics.setdefault("system_fwhm_mm", RESOLUTION_FWHM_MM)
    kinetics.setdefault("counts_per_MBq_s", SENSITIVITY_CPS_PER_MBQ)
    # the demo scanner's CT calibration, as a clinic sets its own (the default is a generic bilinear curve)
    options.setdefault("dosimetry", {}).setdefault("hu_density_points", [list(p) for p in scanner_hu_density_points()])
    return replace(cfg, stage_options=options)


def run_folder(input_dir: str | Path, out_dir: str | Path, *, config: PipelineConfig | None = None,
               strict: bool = False, progress: ProgressCallback | None = None) -> RunOutput:
    """Read a folder of DICOM (one patient) with ``config.read`` settings and run the pipeline on it."""
    from ..dicom import read_study

    pipe = Pipeline(config)
    pipe.check_stages()  # a stage list that cannot run fails before the reading
    study = read_study(input_dir, strict=strict, options=pipe.config.read_options())
    results = pipe.run(study, out_dir=out_dir, progress=progress)
    return RunOutput(results, pipe.last_context, Path(out_dir))
