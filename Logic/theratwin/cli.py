"""The ``theratwin`` command line: ``demo``, ``run``, ``push``, ``info`` (and ``cohort``, ``demo-cohort``,
``fit-priors`` from :mod:`theratwin.cohort`).

Errors the user can act on (bad input, bad settings, failed push) end the command with a one-line message on
stderr and exit status 2; progress goes to stderr as a bar (tqdm) unless ``--quiet``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._version import __version__
from .errors import TheraTwinError

__all__ = ["main"]

EXIT_BAD_INPUT = 2


class _Progress:
    """Progress callback that draws a tqdm bar on stderr (or nothing when quiet)."""

    def __init__(self, quiet: bool, label: str) -> None:
        self.quiet = quiet
        self.label = label
        self.bar: Any = None

    def __call__(self, fraction: float, message: str) -> None:
        if self.quiet:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=1000, desc=self.label, file=sys.stderr, leave=True,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")
        self.bar.n = int(round(fraction * 1000))
        self.bar.set_postfix_str(message[:60])
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _config_from_args(args: argparse.Namespace) -> Any:
    from .pipeline import PipelineConfig

    cfg = PipelineConfig()
    if getattr(args, "config", None):
        path = Path(args.config)
        try:
            cfg = PipelineConfig.from_dict(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError, TheraTwinError, TypeError) as exc:
            raise TheraTwinError(f"{path}: cannot use this configuration: {exc}") from None
    if getattr(args, "stages", None):
        cfg.stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    if getattr(args, "pacs", None):
        cfg.pacs_url = args.pacs
    if getattr(args, "fhir", None):
        cfg.fhir_url = args.fhir
    return cfg


def _print_summary(results: Any, out: Path) -> None:
    print(f"TheraTwin {__version__} — research use only")
    for c in results.cycles.values():
        print(f"cycle {c.cycle}: {c.administered_MBq:.0f} MBq {c.radiopharmaceutical} ({c.nuclide}), "
              f"time points {', '.join(f'{t:.1f} h' for t in c.time_points_h)}")
        for s in c.structures.values():
            parts = []
            if s.tia_MBq_h is not None:
                parts.append(f"TIA {s.tia_MBq_h:.4g} MBq·h")
            if s.mean_dose_Gy is not None:
                parts.append(f"dose {s.mean_dose_Gy:.3g} Gy")
            if s.bed_Gy is not None:
                parts.append(f"BED {s.bed_Gy:.3g} Gy")
            if parts:
                print(f"  {s.structure:<22} " + ", ".join(parts))
    n_warn = sum(1 for w in results.warnings if w.severity != "info")
    if n_warn:
        print(f"{n_warn} warning(s); see results.json")
    print(f"outputs in {out}")


def _cmd_demo(args: argparse.Namespace) -> int:
    from .pipeline import run_demo

    config = _config_from_args(args)
    out = Path(args.out)
    demo_bar = _Progress(args.quiet, "demo patient")
    bar = _Progress(args.quiet, "pipeline")
    try:
        run = run_demo(out, config=config, cache_dir=args.cache, seed=args.seed, progress=bar,
                       demo_progress=demo_bar)
    finally:
        demo_bar.close()
        bar.close()
    if not args.quiet:
        _print_summary(run.results, out)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    config = _config_from_args(args)  # settings first: a bad config fails before any reading
    from .dicom import scan
    from .pipeline import run_folder

    inventory = scan(args.input)
    print(inventory.describe(), file=sys.stderr)
    out = Path(args.out)
    bar = _Progress(args.quiet, "pipeline")
    try:
        run = run_folder(args.input, out, config=config, strict=args.strict, progress=bar)
    finally:
        bar.close()
    if not args.quiet:
        _print_summary(run.results, out)
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    if not args.pacs and not args.fhir:
        raise TheraTwinError("Nothing to do: give --pacs URL and/or --fhir URL.")
    from .push import push_directory

    report = push_directory(Path(args.dir), pacs_url=args.pacs, fhir_url=args.fhir)
    print(report.describe())
    return 0 if report.ok else EXIT_BAD_INPUT


def _cmd_info(args: argparse.Namespace) -> int:
    from . import nuclides
    from .pipeline import STAGES, Pipeline

    Pipeline()
    print(f"TheraTwin {__version__}")
    print("stages: " + ", ".join(STAGES.names()))
    for name in nuclides.available():
        n = nuclides.get(name)
        print(f"{n.name}: T1/2 = {n.half_life_h:.3f} h, electrons {n.electron_energy_MeV:.4f} MeV, "
              f"photons {n.photon_energy_MeV:.4f} MeV, alphas {n.alpha_energy_MeV:.3f} MeV per decay")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="theratwin",
        description="Theranostic digital twin: kinetics, dosimetry, prediction, DICOM/FHIR export. Research use only.",
    )
    p.add_argument("--version", action="version", version=f"theratwin {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--out", required=True, help="output directory")
        sp.add_argument("--config", help="pipeline settings as JSON (see theratwin.pipeline.PipelineConfig)")
        sp.add_argument("--stages", help="comma-separated stages to run (default: all installed)")
        sp.add_argument("--pacs", help="push DICOM results: http(s)://host:port/dicom-web or dimse://AET@host:port")
        sp.add_argument("--fhir", help="push FHIR results to this FHIR R4 base URL")
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress bars or summary")

    d = sub.add_parser("demo", help="build the built-in demo patient and run the whole pipeline on it",
                       description="Build (or reuse) the synthetic 177Lu-PSMA-617 demo patient, read it back as "
                                   "DICOM and run every pipeline stage. Writes results.json, demo-truth.json, "
                                   "dicom/, fhir-bundle.json and report.html into --out.")
    common(d)
    d.add_argument("--cache", help="where the demo DICOM is cached (default: $THERATWIN_CACHE or ~/.cache/theratwin)")
    d.add_argument("--seed", type=int, default=None, help="random seed of the demo patient (default: the built-in one)")
    d.set_defaults(func=_cmd_demo)

    r = sub.add_parser("run", help="run the pipeline on a folder of DICOM (NM/PT, CT, SEG)",
                       description="Group the DICOM series under --input into cycles and time points, report what "
                                   "was found, then run the pipeline.")
    common(r)
    r.add_argument("--input", required=True, help="folder with the DICOM files of one patient")
    r.add_argument("--strict", action="store_true", help="refuse files with any non-conformance instead of tolerating it")
    r.set_defaults(func=_cmd_run)

    u = sub.add_parser("push", help="(re)push saved results and complete the outbox",
                       description="Send the DICOM objects and FHIR bundle of an output directory; anything that "
                                   "fails stays in DIR/outbox for the next push. Credentials come from the "
                                   "environment (THERATWIN_PACS_USER/PASSWORD/TOKEN, THERATWIN_FHIR_USER/PASSWORD/TOKEN).")
    u.add_argument("dir", help="an output directory of 'theratwin demo' or 'theratwin run'")
    u.add_argument("--pacs", help="http(s)://host:port/dicom-web or dimse://AETITLE@host:port")
    u.add_argument("--fhir", help="FHIR R4 base URL")
    u.set_defaults(func=_cmd_push)

    i = sub.add_parser("info", help="show version, installed stages and nuclide data")
    i.set_defaults(func=_cmd_info)

    from .cohort._cli import add_cohort_commands

    add_cohort_commands(sub)  # cohort, demo-cohort, fit-priors
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``theratwin`` command."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except TheraTwinError as exc:
        print(f"theratwin: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("theratwin: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
