"""The cohort subcommands of ``theratwin``: ``cohort``, ``demo-cohort`` and ``fit-priors``.

Kept here so the main command line (:mod:`theratwin.cli`) only registers them; errors are
:class:`~theratwin.errors.TheraTwinError` (one line, exit status 2) as for every command.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError, InvalidInputError, TheraTwinError

__all__ = ["add_cohort_commands", "EXIT_SOME_FAILED"]

#: ``theratwin cohort`` exit status when the run finished but some patients failed (the table is written).
EXIT_SOME_FAILED = 3


def _cohort_config(args: argparse.Namespace) -> Any:
    from dataclasses import replace

    from ..pipeline import PipelineConfig
    from .demo import CONFIG_FILE
    from .records import COHORT_STAGES

    path = Path(args.config) if args.config else None
    if path is None and args.input and (Path(args.input) / CONFIG_FILE).is_file():
        path = Path(args.input) / CONFIG_FILE
        print(f"theratwin: using the settings kept with the cohort, {path}", file=sys.stderr)
    cfg = PipelineConfig(stages=COHORT_STAGES)
    if path is not None:
        try:
            cfg = PipelineConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError, TheraTwinError, TypeError) as exc:
            raise TheraTwinError(f"{path}: cannot use this configuration: {exc}") from None
    if args.stages:
        cfg = replace(cfg, stages=tuple(s.strip() for s in args.stages.split(",") if s.strip()))
    if getattr(args, "priors", None):
        from ..twin.stage import TwinStageConfig

        priors = Path(args.priors)
        if not priors.is_file():
            raise InvalidInputError(f"--priors {priors}: no such file; write one with theratwin fit-priors.")
        if "priors" not in TwinStageConfig.__dataclass_fields__:  # the twin stage's priors-file option
            raise ConfigurationError("--priors: the twin stage of this TheraTwin version has no priors-file "
                                     "option; update TheraTwin to use a site's priors in the pipeline.")
        options = {k: dict(v) for k, v in cfg.stage_options.items()}
        options.setdefault("twin", {})["priors"] = str(Path(args.priors).resolve())
        cfg = replace(cfg, stage_options=options)
    return cfg


def _query(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise InvalidInputError(f"--query {item!r}: use KEY=VALUE, e.g. --query 'PatientID=LU*'.")
        out[key.strip()] = value.strip()
    return out


def _cmd_cohort(args: argparse.Namespace) -> int:
    from .._cli_progress import CliProgress as _Progress
    from .runner import pacs_patients, require_dask, run_cohort

    require_dask()
    if bool(args.input) == bool(args.pacs):
        raise InvalidInputError("Give either --input ROOT (one folder per patient) or --pacs URL with --query.")
    config = _cohort_config(args)
    patients: Any = args.input
    if args.pacs:
        if not args.query:
            raise InvalidInputError("--pacs needs --query KEY=VALUE (e.g. --query 'PatientID=LU*').")
        patients = pacs_patients(args.pacs, _query(args.query))
    bar = _Progress(args.quiet, "patients")
    try:
        run = run_cohort(patients, args.out, config=config, strict=args.strict, scheduler=args.scheduler,
                         n_workers=args.workers, memory_per_worker=args.memory_per_worker,
                         retry_failed=args.retry_failed, progress=bar)
    finally:
        bar.close()
    print(run.describe())
    return EXIT_SOME_FAILED if run.failed else 0


def _cmd_demo_cohort(args: argparse.Namespace) -> int:
    from .._cli_progress import CliProgress as _Progress
    from .demo import build_demo_cohort

    bar = _Progress(args.quiet, "demo cohort")
    try:
        cohort = build_demo_cohort(args.n, args.out, seed=args.seed, progress=bar)
    finally:
        bar.close()
    print(f"{len(cohort.patient_ids)} synthetic patients in {cohort.root} (truth in {cohort.root / '_truth'}); "
          f"next: theratwin cohort --input {cohort.root} --out OUT")
    return 0


def _cmd_fit_priors(args: argparse.Namespace) -> int:
    from .priors_fit import fit_priors

    fit = fit_priors(args.cohort, radiopharmaceutical=args.radiopharmaceutical, min_individuals=args.min_patients)
    out = fit.write(args.out)
    print(fit.describe())
    print(f"priors written to {out}; use them with --priors {out}")
    return 0


def add_cohort_commands(sub: Any) -> None:
    """Register ``cohort``, ``demo-cohort`` and ``fit-priors`` on the main parser's subparsers."""
    c = sub.add_parser(
        "cohort", help="run the pipeline on every patient of a cohort on Dask",
        description="Run the pipeline on every patient under --input (one sub-folder per patient) or matching a PACS "
                    "query, one Dask task per patient: an embedded LocalCluster, or --scheduler tcp://HOST:PORT "
                    "(workers must see --input and --out at the same paths). Re-running skips patients already "
                    "done; failures are recorded and never stop the others. Writes OUT/cohort-table.parquet and "
                    ".csv, OUT/cohort-patients.csv, OUT/cohort-report.html and OUT/patients/<patient>/. Exit status "
                    f"0 when every patient is done, {EXIT_SOME_FAILED} when some failed. Research use only.")
    c.add_argument("--input", help="folder with one sub-folder of DICOM per patient")
    c.add_argument("--pacs", help="read patients from a PACS instead: http(s)://host:port/dicom-web or "
                                  "dimse://AET@host:port (credentials from the environment, as for push)")
    c.add_argument("--query", action="append", metavar="KEY=VALUE",
                   help="with --pacs: PatientID=... (wildcards * ? where the PACS matches them: C-FIND does, "
                        "not every QIDO-RS) or StudyInstanceUID=...; repeatable")
    c.add_argument("--out", required=True, help="output folder")
    c.add_argument("--scheduler", help="address of an existing Dask scheduler, tcp://HOST:PORT "
                                       "(default: start a LocalCluster)")
    c.add_argument("--workers", type=int, help="LocalCluster workers (default: one per core, as memory allows)")
    c.add_argument("--memory-per-worker", default="3GiB",
                   help="LocalCluster memory limit per worker (default 3GiB; one patient at a time per worker)")
    c.add_argument("--config", help="pipeline settings as JSON (default: INPUT/theratwin-config.json if present)")
    c.add_argument("--stages", help="comma-separated stages (default: registration,kinetics,dosimetry,"
                                    "radiobiology,twin; add report,dicom_export,fhir_export for per-patient files)")
    c.add_argument("--priors", help="a site's population priors (priors.json from theratwin fit-priors) for the twin")
    c.add_argument("--retry-failed", action="store_true", help="run again the patients that failed before")
    c.add_argument("--strict", action="store_true", help="refuse DICOM files with any non-conformance")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=_cmd_cohort)

    d = sub.add_parser(
        "demo-cohort", help="write synthetic patients (DICOM + truth) drawn from a known population",
        description="Write N synthetic 177Lu-PSMA-617 patients under --out, one folder of DICOM each: anatomy "
                    "scaled per patient, kinetics drawn from a known population (between-patient and between-cycle "
                    "variability), 1-3 cycles on clinical imaging schedules. The truth is in OUT/_truth/ and "
                    "OUT/cohort-truth.json; the demo scanner's settings in OUT/theratwin-config.json.")
    d.add_argument("--n", type=int, required=True, help="number of patients")
    d.add_argument("--out", required=True, help="output folder (ROOT for theratwin cohort --input)")
    d.add_argument("--seed", type=int, default=1, help="random seed (default 1); patient k is the same for any N")
    d.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=_cmd_demo_cohort)

    f = sub.add_parser(
        "fit-priors", help="fit the twin's population model to a cohort (a site's own priors)",
        description="Fit the twin's population model (mean, between-patient and between-cycle variability per "
                    "structure kind; nonlinear mixed effects, Laplace approximation) to the time-activity curves "
                    "of a 'theratwin cohort' output folder, with standard errors. Writes priors.json for --priors.")
    f.add_argument("--cohort", required=True, help="output folder of theratwin cohort")
    f.add_argument("--out", required=True, help="priors file to write (JSON)")
    f.add_argument("--radiopharmaceutical", help="only cycles of this radiopharmaceutical (default: the cohort's "
                                                 "one; an error if it has several)")
    f.add_argument("--min-patients", type=int, default=5,
                   help="structure kinds seen in fewer patients are not fitted (default 5)")
    f.set_defaults(func=_cmd_fit_priors)
