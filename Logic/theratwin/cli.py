"""The ``theratwin`` command line: ``demo``, ``run``, ``push``, ``web``, ``priors``, ``info`` (and ``cohort``,
``demo-cohort``, ``fit-priors`` from :mod:`theratwin.cohort`).

Errors the user can act on (bad input, bad settings, failed push, implausible results) end the command with a
one-line message on stderr and exit status 2; an unexpected error (a TheraTwin bug) says so in one line and exits
with status 3 (``-v`` shows the traceback). Progress goes to stderr as a bar (tqdm) on a terminal, as a few plain
lines when stderr is a file or pipe (cron, CI), and not at all with ``--quiet``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._cli_progress import CliProgress as _Progress
from ._version import __version__
from .errors import TheraTwinError, one_line

__all__ = ["main"]

EXIT_BAD_INPUT = 2
EXIT_INTERNAL_ERROR = 3


def _config_from_args(args: argparse.Namespace) -> Any:
    from .pipeline import PipelineConfig

    cfg = PipelineConfig()
    if getattr(args, "config", None):
        path = Path(args.config)
        try:
            cfg = PipelineConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError, TheraTwinError, TypeError) as exc:
            raise TheraTwinError(f"{path}: cannot use this configuration: {exc}") from None
    if getattr(args, "stages", None):
        cfg.stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    if getattr(args, "pacs", None):
        cfg.pacs_url = args.pacs
    if getattr(args, "fhir", None):
        cfg.fhir_url = args.fhir
    if getattr(args, "replace", False):
        cfg.replace_outputs = True
    read = dict(cfg.read)
    for flag, key in (("timezone", "timezone"), ("nuclide", "nuclide"), ("without_ct", "without_ct")):
        if getattr(args, flag, None):
            read[key] = getattr(args, flag)
    if getattr(args, "accept_incomplete_series", False):
        read["accept_incomplete_series"] = True
    cfg.read = read
    if getattr(args, "plausibility", None):
        cfg.plausibility = {**cfg.plausibility, "action": args.plausibility}
    if getattr(args, "priors", None):
        from .twin.population import load_priors

        path = Path(args.priors).resolve()
        load_priors(path)  # a bad file fails here, before any image is read
        twin_options = dict(cfg.stage_options.get("twin", {}))
        twin_options["priors"] = str(path)
        cfg.stage_options = {**cfg.stage_options, "twin": twin_options}
    cfg.read_options()  # settings are checked here, before any reading
    from .pipeline import Pipeline

    pipeline = Pipeline(cfg)
    pipeline.check_stages()  # --stages naming a stage that cannot run fails before any work
    pipeline.check_options()  # so does a misspelt stage option in the config file
    return cfg


def _preflight(config: Any) -> None:
    """Checks that need no input data: push URLs, credentials and TLS files (before any computation)."""
    if config.pacs_url or config.fhir_url:
        from .push import check_push_settings

        check_push_settings(config.pacs_url, config.fhir_url)


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
    serious = [w for w in results.warnings if w.stage == "plausibility" or w.severity == "error"]
    for w in serious:
        print(f"WARNING ({w.stage}): {one_line(w.message, 300)}")
    n_warn = sum(1 for w in results.warnings if w.severity != "info")
    if n_warn:
        print(f"{n_warn} warning(s); see results.json")
    print(f"outputs in {out}")


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DEMO_PATIENT_ID, DEMO_PATIENT_ISSUER
    from .pipeline import run_demo
    from .pipeline.manifest import check_output_folder

    config = _config_from_args(args)
    _preflight(config)
    out = Path(args.out)
    check_output_folder(out, DEMO_PATIENT_ID, DEMO_PATIENT_ISSUER, replace=config.replace_outputs)
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
    _preflight(config)
    from .dicom import scan
    from .pipeline import run_folder
    from .pipeline.manifest import check_output_folder

    inventory = scan(args.input, strict=args.strict, options=config.read_options())
    print(inventory.describe(), file=sys.stderr)
    out = Path(args.out)
    if len(inventory.patients) == 1:  # (several patients are refused by the reader with the reason)
        check_output_folder(out, next(iter(inventory.patients)), replace=config.replace_outputs)
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

    report = push_directory(Path(args.dir), pacs_url=args.pacs, fhir_url=args.fhir, wait_s=args.wait)
    print(report.describe())
    return 0 if report.ok else EXIT_BAD_INPUT


def _cmd_web(args: argparse.Namespace) -> int:
    sources = [bool(args.demo), bool(args.input)]
    if sum(sources) > 1:
        raise TheraTwinError("Give at most one of --demo and --input (--results and --pacs may be added).")
    try:
        from theratwin_web import serve  # the optional web shell: pip install theratwin[web]
    except ImportError as exc:
        raise TheraTwinError(f"'theratwin web' needs the web extra ({exc.name} is missing): pip install "
                             "'theratwin[web]' (or scripts/bootstrap.sh all, which makes .venv-web).") from None
    serve(out_dir=args.out, input_dir=args.input, results_dir=args.results, demo=args.demo, pacs_url=args.pacs,
          fhir_url=args.fhir, host=args.host, port=args.port, allow_remote=args.allow_remote,
          data_root=args.data_root, cache_dir=args.cache, idle_timeout_s=args.idle_timeout)
    return 0


def _cmd_priors(args: argparse.Namespace) -> int:
    from .twin.population import builtin_priors, load_priors

    if args.check:
        pri = load_priors(args.check)
        print(f"{args.check}: valid {pri.radiopharmaceutical} ({pri.nuclide}) priors for "
              f"{', '.join(pri.structures)}")
        return 0
    if not args.out:
        raise TheraTwinError("Nothing to do: give --out FILE (write the built-in priors) or --check FILE.")
    path = builtin_priors(args.radiopharmaceutical, args.nuclide).save(args.out)
    print(f"built-in {args.radiopharmaceutical} priors written to {path} (schema theratwin-priors/1); edit them "
          "and pass the file with --priors")
    return 0


def _plugin_registries() -> list[Any]:
    """Every extension-point registry, in the order ``info`` lists them."""
    from .dosimetry.dose import DOSE_ENGINES
    from .kinetics.models import KINETIC_MODELS
    from .pipeline import STAGES, Pipeline
    from .twin.model import TWIN_MODELS
    from .twin.outcome import OUTCOME_MODELS

    Pipeline()  # registers the built-in stages
    return [STAGES, KINETIC_MODELS, DOSE_ENGINES, TWIN_MODELS, OUTCOME_MODELS]


def _cmd_info(args: argparse.Namespace) -> int:
    import warnings

    from . import nuclides
    from .registry import PluginWarning

    print(f"TheraTwin {__version__}")
    # a plug-in that failed is listed below with its reason, not repeated as a warning and a log line
    registry_log = logging.getLogger("theratwin.registry")
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PluginWarning)
            registries = _plugin_registries()
            for registry in registries:
                registry.names()
    finally:
        registry_log.setLevel(level)
    for registry in registries:
        print(f"{registry.kind}s (entry-point group {registry.group}):")
        width = max((len(n) for n in [*registry.names(), *registry.failed]), default=0)
        for name in registry.names():
            print(f"  {name:<{width}}  {registry.origin(name)}")
        for name, reason in sorted(registry.failed.items()):
            print(f"  {name:<{width}}  FAILED to load, {registry.origin(name)}: {reason}")
    print("nuclides:")
    for name in nuclides.available():
        n = nuclides.get(name)
        print(f"  {n.name}: T1/2 = {n.half_life_h:.3f} h, electrons {n.electron_energy_MeV:.4f} MeV, "
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
        sp.add_argument("--replace", action="store_true",
                        help="if --out holds another patient's results, delete them and write this run's there "
                             "(refused while their outbox holds undelivered items)")
        sp.add_argument("--timezone", help="the site's zone for files without TimezoneOffsetFromUTC (IANA name such "
                        "as Europe/Berlin, or +01:00); default: this computer's zone")
        sp.add_argument("--nuclide", help="the radionuclide when the files do not say it (e.g. F-18, Lu-177)")
        sp.add_argument("--accept-incomplete-series", action="store_true",
                        help="read series with damaged, foreign or missing end slices, with a warning")
        sp.add_argument("--without-ct", choices=("refuse", "water"),
                        help="time points without CT: refuse (default) or use water density, said in every output")
        sp.add_argument("--plausibility", choices=("stop", "warn"),
                        help="implausible results stop the run (default) or are written with a warning")
        sp.add_argument("--priors", help="the site's population priors for the twin (JSON, schema theratwin-priors/1; "
                                         "start from 'theratwin priors --out FILE')")

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
    u.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="if another push of DIR is running, wait this long for it (default: say so and stop)")
    u.set_defaults(func=_cmd_push)

    w = sub.add_parser("web", help="serve the per-cycle workflow as a web page (trame-slicer)",
                       description="Serve the reading-room workflow in a browser: study, run with progress, fused "
                                   "views with dose/BED overlays, TAC/DVH, structure table, twin plan, export and "
                                   "push. Listens on 127.0.0.1 only unless --allow-remote (then an access token in "
                                   "THERATWIN_WEB_TOKEN is required). Needs: pip install 'theratwin[web]'.")
    w.add_argument("--demo", action="store_true", help="open the built-in demo patient")
    w.add_argument("--input", help="open this folder of DICOM (one patient)")
    w.add_argument("--results", help="open the saved results of 'theratwin demo'/'run' (an output folder)")
    w.add_argument("--pacs", help="PACS to list and retrieve studies from and push to (DICOMweb or dimse://)")
    w.add_argument("--fhir", help="FHIR R4 base URL to push to")
    w.add_argument("--out", help="where runs write their outputs (default: a new temporary folder)")
    w.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, loopback only)")
    w.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    w.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --host; requires THERATWIN_WEB_TOKEN (>= 16 characters)")
    w.add_argument("--data-root", help="refuse folders outside this one (recommended with --allow-remote)")
    w.add_argument("--cache", help="demo patient cache (default: $THERATWIN_CACHE or ~/.cache/theratwin)")
    w.add_argument("--idle-timeout", type=int, default=0,
                   help="stop after this many seconds without a connected browser (default 0: never)")
    w.set_defaults(func=_cmd_web)

    pr = sub.add_parser("priors", help="write the built-in twin priors as a file, or check a site's priors file",
                        description="Write the built-in population priors of the twin (schema theratwin-priors/1) "
                                    "as a starting point for a site's own, or check a priors file.")
    pr.add_argument("--out", help="write the built-in priors to this JSON file")
    pr.add_argument("--check", help="read and validate this priors file")
    pr.add_argument("--radiopharmaceutical", default="PSMA-617", help="PSMA-617 (default) or DOTATATE")
    pr.add_argument("--nuclide", default="Lu-177", help="therapy nuclide (default Lu-177)")
    pr.set_defaults(func=_cmd_priors)

    i = sub.add_parser("info", help="show the version, each plug-in point's entries (built in, or which package "
                       "provides them; plug-ins that failed to load, with the reason) and the nuclide data")
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
        print(f"theratwin: error: {one_line(exc, 2000)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # a file error no writer turned into a TheraTwinError: still one line
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"theratwin: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("theratwin: interrupted (unfinished outputs are marked so in run-manifest.json; what a push did not "
              "send stays in the outbox)", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - anything else is a TheraTwin bug: one line, not a traceback
        if args.verbose:
            logging.getLogger("theratwin").exception("internal error")
        print(f"theratwin: internal error (a TheraTwin bug, not a problem with your data; please report it with "
              f"'theratwin --version' and this line): {type(exc).__name__}: {one_line(exc, 300)}"
              + ("" if args.verbose else " (run with -v for the traceback)"), file=sys.stderr)
        return EXIT_INTERNAL_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
