"""Pipeline object, stage protocol and stage registry.

A stage is any object with a ``name``, a tuple ``requires`` of stage names whose output it needs, optionally an
``Options`` dataclass (its options, parsed from ``stage_options[name]`` by :func:`theratwin.options.parse_options`,
which refuses unknown keys), and a ``run(context)`` method that reads ``context.study`` / ``context.state`` (a typed
:class:`~theratwin.pipeline.state.PipelineState`) and writes into ``context.results`` (and files into
``context.out_dir``). Stages are looked up in :data:`STAGES`, which also reads the entry-point
group ``theratwin.stages``; the built-in stages register themselves from ``theratwin.<concern>.stage`` modules.
"""

from __future__ import annotations

import copy
import importlib
import logging
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .._config import checked_fields
from .._files import make_dir
from ..errors import ConfigurationError, DicomReadError, FitError, ImplausibleResultError, InvalidInputError
from ..options import parse_options, unknown_keys_message
from ..plausibility import PlausibilityConfig, check_results
from ..progress import ProgressCallback, report, scaled
from ..registry import Registry
from ..results import Results
from ..study import Study
from .state import PipelineState

if TYPE_CHECKING:
    from .manifest import RunRecorder

__all__ = ["Stage", "STAGES", "DEFAULT_STAGES", "PipelineConfig", "PipelineContext", "PipelineState", "Pipeline",
           "run_pipeline"]

log = logging.getLogger(__name__)


@runtime_checkable
class Stage(Protocol):
    """Protocol of a pipeline stage (see the module docstring)."""

    name: str
    requires: tuple[str, ...]

    def run(self, context: PipelineContext) -> None:
        """Run the stage: read ``context.study`` and ``context.state`` (earlier stages' typed outputs) and
        its options, write into ``context.results`` (and files into ``context.out_dir``)."""
        ...


#: Registry of pipeline stages (entry-point group ``theratwin.stages``).
STAGES: Registry[Any] = Registry("theratwin.stages", "pipeline stage", protocol=Stage)

#: Stages run by default, in order. A stage that is not installed is skipped (and reported).
DEFAULT_STAGES: tuple[str, ...] = (
    "registration",
    "kinetics",
    "dosimetry",
    "radiobiology",
    "twin",
    "report",
    "dicom_export",
    "fhir_export",
)

# Modules whose import registers the built-in stages.
_BUILTIN_STAGE_MODULES = (
    "theratwin.registration.stage",
    "theratwin.kinetics.stage",
    "theratwin.dosimetry.stage",
    "theratwin.radiobiology.stage",
    "theratwin.twin.stage",
    "theratwin.report.stage",
    "theratwin.dicom.stage",
    "theratwin.fhir.stage",
)


def load_builtin_stages() -> None:
    """Import the built-in stage modules that exist in this installation."""
    for mod in _BUILTIN_STAGE_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            # only "this stage is not part of the installation" is tolerated, not a missing dependency
            if exc.name is not None and (mod == exc.name or mod.startswith(exc.name + ".")):
                continue
            raise


@dataclass
class PipelineConfig:
    """Settings of a run (plain data, JSON-serialisable; the CLI, Slicer and scripts share it).

    Attributes
    ----------
    stages
        Names of the stages to run, in order.
    stage_options
        ``{stage name: {option: value}}``; each stage documents its options in its ``Options`` dataclass (e.g.
        ``theratwin.dosimetry.stage.DosimetryOptions``); unknown options are refused before any work.
    pacs_url, fhir_url
        Where to push results (None: do not push). Credentials never go here: they come from the
        environment (see ``theratwin.dicom.pacs`` and ``theratwin.fhir.client``).
    write_outputs
        Write files into the output folder: ``results.json`` and the run manifest (see
        :mod:`theratwin.pipeline.manifest`) and every stage's files (report, DICOM, FHIR bundle, twin state).
        False: the run keeps its results in memory and writes nothing.
    replace_outputs
        An output folder holding another patient's results is refused unless this is true; then those results
        are removed whole when the run starts (never while their outbox holds undelivered items).
    read
        How DICOM input is read (:class:`theratwin.dicom.ReadOptions` as a dict: site ``timezone``, ``nuclide``,
        ``camera_calibrations`` for counts-based SPECT, ``accept_incomplete_series``, ``without_ct`` ...).
    plausibility
        Thresholds and ``action`` ("stop" or "warn") of the physical plausibility checks
        (:class:`theratwin.plausibility.PlausibilityConfig` as a dict); used for the input and the results.
    """

    stages: tuple[str, ...] = DEFAULT_STAGES
    stage_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    pacs_url: str | None = None
    fhir_url: str | None = None
    write_outputs: bool = True
    replace_outputs: bool = False
    read: dict[str, Any] = field(default_factory=dict)
    plausibility: dict[str, Any] = field(default_factory=dict)

    def read_options(self) -> Any:
        """The reader settings (:class:`theratwin.dicom.ReadOptions`), with this config's plausibility settings."""
        from ..dicom.options import ReadOptions

        d = dict(self.read)
        d.setdefault("plausibility", dict(self.plausibility))
        return ReadOptions.from_dict(d)

    def plausibility_config(self) -> PlausibilityConfig:
        """The plausibility thresholds and action (:class:`theratwin.plausibility.PlausibilityConfig`) from
        :attr:`plausibility`."""
        return PlausibilityConfig.from_dict(self.plausibility)

    def options(self, stage: str) -> dict[str, Any]:
        """A copy of the options given for stage ``stage`` (empty when none were given); the stage parses
        and checks them."""
        return dict(self.stage_options.get(stage, {}))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``--config`` file, run manifest); :meth:`from_dict` reads it back."""
        d = asdict(self)
        d["stages"] = list(self.stages)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PipelineConfig:
        """The settings from their JSON form (:meth:`to_dict`, or a user's ``--config`` file).

        Raises
        ------
        ConfigurationError
            A key is not a setting (the message lists the known ones and the nearest, as for stage options).
        """
        d = checked_fields(cls, d, "pipeline settings")
        if "stages" in d:
            d["stages"] = tuple(d["stages"])
        return cls(**d)


@dataclass(frozen=True)
class _Checkpoint:
    """What a run held just before a stage ran: :meth:`Pipeline.invalidate` goes back to it."""

    results: dict[str, Any]  # the fields of Results (the study and the map volumes shared, the rest copied)
    state: PipelineState
    plausibility_seen: frozenset[str]


@dataclass
class PipelineContext:
    """What stages share during a run.

    ``state`` carries in-memory objects between stages (registration transforms, voxel fits, the twin
    object ...; :class:`~theratwin.pipeline.state.PipelineState`); only ``results`` is written out. The other
    attributes are the run's bookkeeping, kept by the pipeline: the stages completed, the progress callback of
    the running stage, the plausibility findings already reported and a checkpoint before each completed stage.
    """

    study: Study
    results: Results
    config: PipelineConfig
    out_dir: Path | None = None
    progress: ProgressCallback | None = None
    state: PipelineState = field(default_factory=PipelineState)
    completed: list[str] = field(default_factory=list)
    running_stage_progress: ProgressCallback | None = field(default=None, repr=False)
    plausibility_seen: set[str] = field(default_factory=set, repr=False)
    checkpoints: dict[str, _Checkpoint] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        state: Any = self.state
        if isinstance(state, dict):  # the form before PipelineState (contexts built by hand); unknown keys refused
            self.state = PipelineState.from_dict(state)

    def stage_progress(self, fraction: float, message: str) -> None:
        """Report progress within the running stage (mapped onto the whole run by the pipeline)."""
        if self.running_stage_progress is not None:
            self.running_stage_progress(fraction, message)

    def _checkpoint(self, stage: str) -> None:
        """Remember the results, the state and the findings reported as they are before ``stage`` runs."""
        res = self.results
        # the study and the map volumes are never changed in place (a stage puts a new volume under a name), so
        # they are shared; the rest is small (per-structure numbers, DVHs, the twin's summary) and copied
        memo: dict[int, Any] = {id(res.study): res.study, **{id(v): v for v in res.maps.values()}}
        values = {f.name: copy.deepcopy(getattr(res, f.name), memo) for f in fields(res)}
        self.checkpoints[stage] = _Checkpoint(values, self.state.snapshot(), frozenset(self.plausibility_seen))

    def _rewind(self, stage: str) -> None:
        cp = self.checkpoints[stage]
        for name, value in cp.results.items():  # in place: front ends hold this Results object
            setattr(self.results, name, value)
        self.state.restore(cp.state)
        self.plausibility_seen = set(cp.plausibility_seen)


class Pipeline:
    """Runs stages in order on a study.

    Parameters
    ----------
    config
        Which stages to run and their options.
    """

    def __init__(self, config: PipelineConfig | None = None) -> None:
        self.config = config or PipelineConfig()
        load_builtin_stages()

    def available_stages(self) -> list[str]:
        """The configured stages that are installed (in :data:`STAGES`), in run order."""
        return [s for s in self.config.stages if s in STAGES]

    def check_stages(self, stages: tuple[str, ...] | list[str] | None = None, completed: Any = ()) -> None:
        """Refuse stages that cannot run: not installed, or needing a stage that neither ran nor runs before them.

        The default stage list only skips stages that are not installed (reported in the results); a list the
        user gives (``--stages``) must name stages that can all run.

        Raises
        ------
        ConfigurationError
            Naming the stage and what it needs.
        """
        names = list(self.config.stages if stages is None else stages)
        if tuple(names) == DEFAULT_STAGES:
            return
        available = set(completed)
        for name in names:
            if name not in STAGES:
                raise ConfigurationError(f"Stage '{name}' is not installed; installed stages: "
                                         f"{', '.join(STAGES.names())}.")
            stage = STAGES.get(name)
            missing = [r for r in getattr(stage, "requires", ()) if r not in available]
            if missing:
                raise ConfigurationError(f"Stage '{name}' cannot run: it needs {', '.join(missing)}, which "
                                         f"{'is' if len(missing) == 1 else 'are'} not run before it; give the stages "
                                         f"in order, e.g. --stages {','.join([*missing, name])}.")
            available.add(name)

    def check_options(self) -> None:
        """Parse every stage's options (``PipelineConfig.stage_options``) with the stage's ``Options`` dataclass
        (:func:`theratwin.options.parse_options`), before any work: a misspelt option of the last stage fails at
        once, not after the computation. Options for a stage that is neither installed nor in the stage list are
        refused too (a misspelt stage name); a plug-in stage without ``Options`` checks its own.

        Raises
        ------
        ConfigurationError
            Naming the stage, the unknown option or stage name, the known ones and the nearest.
        """
        for name, given in self.config.stage_options.items():
            if name not in STAGES:
                if name in self.config.stages:
                    continue  # a stage that is not installed is skipped (and reported) when the run gets there
                raise ConfigurationError(unknown_keys_message("stage in stage_options", [name], STAGES.names()))
            options_cls = getattr(STAGES.get(name), "Options", None)
            if options_cls is not None:
                parse_options(options_cls, given, stage=name)

    def run(self, study: Study, *, out_dir: str | Path | None = None, progress: ProgressCallback | None = None,
            state: PipelineState | dict[str, Any] | None = None) -> Results:
        """Run the configured stages on ``study``; write ``results.json`` into ``out_dir`` if given.

        ``state`` gives the run objects the caller already has (e.g. ``PipelineState(output_files=...)``); a dict
        is read with :meth:`PipelineState.from_dict`, which refuses unknown keys.
        """
        results = Results.for_study(study)
        out = Path(out_dir) if out_dir is not None else None
        if isinstance(state, dict):
            state = PipelineState.from_dict(state)
        ctx = PipelineContext(study, results, self.config, out, progress, state or PipelineState())
        self.last_context = ctx
        return self.continue_run(ctx, self.config.stages)

    @staticmethod
    def invalidate(ctx: PipelineContext, from_stage: str) -> list[str]:
        """Undo ``from_stage`` and every stage completed after it on ``ctx``, so that :meth:`continue_run` runs them
        again (e.g. dosimetry with another method, without registering the time points again).

        The results, the state and the plausibility record go back to what they were just before ``from_stage``
        ran: what the undone stages wrote (values, maps, the twin's output, warnings, method records, the files
        listed in ``results.outputs``, their ``PipelineState`` attributes) is gone, what the earlier stages
        produced is kept as it was. A stage runs only after the stages it requires, so every stage depending on
        ``from_stage`` is among those undone. Files already written stay on disk until the next run into the same
        folder replaces them or, as an earlier run's leftovers, removes them.

        Returns
        -------
        list of str
            The stages undone, in the order they ran (empty when ``from_stage`` has not run).
        """
        if from_stage not in ctx.completed:
            return []
        undone = ctx.completed[ctx.completed.index(from_stage):]
        if from_stage not in ctx.checkpoints:  # a context whose ``completed`` was written by hand
            raise ConfigurationError(f"Stage '{from_stage}' was not run by the pipeline on this context (no "
                                     "checkpoint before it); start a new run instead.")
        ctx._rewind(from_stage)
        del ctx.completed[len(ctx.completed) - len(undone):]
        for name in undone:
            ctx.checkpoints.pop(name, None)
        ctx.results.extras["completed_stages"] = list(ctx.completed)
        return undone

    def continue_run(self, ctx: PipelineContext, stages: tuple[str, ...] | list[str]) -> Results:
        """Run the given stages that ``ctx`` has not completed yet, in order, then write ``results.json``.

        Used by :meth:`run` and by front ends that keep a context between requests (the Slicer modules continue
        a run instead of registering the time points again). Uses ``self.config`` and ``ctx.out_dir``/
        ``ctx.progress`` as set on the context.
        """
        from .manifest import RunRecorder

        ctx.config = self.config
        results, out, progress = ctx.results, ctx.out_dir, ctx.progress
        names = [s for s in stages if s not in ctx.completed]
        self.check_options()
        if tuple(stages) != DEFAULT_STAGES:
            self.check_stages(names, ctx.completed)  # a stage list that cannot run fails before any work
        if self.config.pacs_url or self.config.fhir_url:
            from ..delivery import check_push_settings

            check_push_settings(self.config.pacs_url, self.config.fhir_url)  # before any computation
        recorder = RunRecorder(out, ctx) if out is not None and self.config.write_outputs else None
        if recorder is not None:
            recorder.begin()
        elif out is not None:
            make_dir(out)
        try:
            self._run_stages(ctx, names, recorder, self.config.plausibility_config())
            if recorder is not None:
                recorder.finish(results)  # results.json, then the sealed manifest
        except BaseException as exc:
            if recorder is not None:
                recorder.abort(exc)
            raise
        report(progress, 1.0, "done")
        self.last_context = ctx
        return results

    @staticmethod
    def _run_stages(ctx: PipelineContext, names: list[str], recorder: RunRecorder | None,
                    plausibility: PlausibilityConfig) -> None:
        results, progress = ctx.results, ctx.progress
        for i, name in enumerate(names):
            if name not in STAGES:
                results.warn("pipeline", f"Stage '{name}' is not installed; skipped.", severity="info")
                continue
            stage = STAGES.get(name)
            stage = stage() if isinstance(stage, type) else stage
            missing = [r for r in getattr(stage, "requires", ()) if r not in ctx.completed]
            if missing:  # only in the default list (a stage not installed); check_stages refuses given lists
                results.warn("pipeline", f"Stage '{name}' skipped: it needs {missing}, which did not run.")
                if recorder is not None:
                    recorder.stage(name, "skipped", reason=f"needs {missing}")
                continue
            ctx._checkpoint(name)
            ctx.running_stage_progress = scaled(progress, i / len(names), (i + 1) / len(names))
            report(progress, i / len(names), f"{name}")
            if recorder is not None:
                recorder.stage(name, "running")
            t0 = time.perf_counter()
            try:
                stage.run(ctx)
            except BaseException as exc:
                # a failed or cancelled stage leaves nothing half-written in a context that may be continued
                ctx._rewind(name)
                del ctx.checkpoints[name]
                if isinstance(exc, (InvalidInputError, FitError)):
                    raise _located(exc, ctx.study, name) from exc
                raise
            ctx.completed.append(name)
            seconds = round(time.perf_counter() - t0, 3)
            results.extras.setdefault("stage_seconds", {})[name] = seconds
            if recorder is not None:
                recorder.stage(name, "done", seconds=seconds)
            _plausibility(ctx, plausibility, name)
        ctx.running_stage_progress = None
        results.extras["completed_stages"] = list(ctx.completed)


def _located(exc: Exception, study: Study, stage: str) -> Exception:
    """The stage's error with the study's location in front when it names no file (a refusal names a file)."""
    msg = str(exc)
    files = [f for c in study.cycles for tp in c.time_points for f in tp.source.files]
    if isinstance(exc, DicomReadError) or not files or any(str(Path(f).parent) in msg for f in files):
        return exc
    import os

    where = os.path.commonpath([str(Path(f).parent) for f in files])
    try:
        return type(exc)(f"{where}: {stage} stage: {msg}")
    except TypeError:  # pragma: no cover - an error class with another signature: keep it as it is
        return exc


def _plausibility(ctx: PipelineContext, config: PlausibilityConfig, stage: str) -> None:
    """Check the results after a stage; stop before anything is written, or warn (``plausibility.action``)."""
    seen = ctx.plausibility_seen
    for finding in check_results(ctx.results, config, stage=stage):
        if finding.message in seen:
            continue
        seen.add(finding.message)
        if finding.stops and config.action == "stop":
            raise ImplausibleResultError(f"implausible result after the {stage} stage, nothing written: "
                                         f"{finding.message} To proceed knowingly, set plausibility.action = "
                                         '"warn" in the pipeline config.')
        ctx.results.warn("plausibility", finding.message, cycle=finding.cycle, structure=finding.structure,
                         severity="error" if finding.stops else "warning")


def run_pipeline(study: Study, out_dir: str | Path | None = None, *, config: PipelineConfig | None = None,
                 progress: ProgressCallback | None = None) -> Results:
    """Convenience wrapper: ``Pipeline(config).run(study, out_dir=out_dir)``."""
    return Pipeline(config).run(study, out_dir=out_dir, progress=progress)
