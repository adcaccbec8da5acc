"""``theratwin cohort``: the pipeline on every patient of a cohort, one Dask task per patient.

Dask (``dask.distributed``) is the engine: an embedded :class:`distributed.LocalCluster` (worker processes with one
thread each and a memory limit) by default, or an existing scheduler (``tcp://HOST:PORT``) whose workers see the
same input and output folders (a shared file system). Each patient is one task that runs
:func:`theratwin.pipeline.run_folder` into its own folder and never raises: what went wrong is recorded in that
folder's ``cohort-task.json`` (and ``cohort-error.txt``), so a failed patient never stops the others. A worker
that dies (out of memory, crash) is retried once by the embedded scheduler, then the patient is recorded as failed.

Resuming: a patient whose ``cohort-task.json`` says ``done`` (or ``failed``) for the same input (file names, sizes
and modification times) and the same settings is not run again; ``retry_failed`` re-runs failed ones. Results are
written to a temporary folder and moved into place when complete, so an interrupted run never leaves a
half-written patient that looks done.

Layout of ``OUT``::

    OUT/patients/<patient>/       the pipeline's outputs (results.json, twin-state.json, ...) + cohort-task.json
    OUT/cohort-table.parquet/.csv one row per patient, cycle and structure (:mod:`theratwin.cohort.table`)
    OUT/cohort-patients.csv       one row per patient: status, error, seconds, worker
    OUT/cohort-report.html        distributions and failures (:mod:`theratwin.cohort.report`)
    OUT/cohort.json               what was run: settings, counts, cluster, software version
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import traceback
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import ConfigurationError, InvalidInputError, TheraTwinError
from ..progress import ProgressCallback, report
from ..results import RESEARCH_USE_NOTICE
from .records import COHORT_STAGES, ERROR_FILE, PATIENTS_DIR, TASK_FILE, CohortRun

__all__ = [
    "PatientSource",
    "CohortRun",
    "COHORT_STAGES",
    "discover_patients",
    "pacs_patients",
    "run_cohort",
    "require_dask",
    "TASK_FILE",
]

log = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def require_dask() -> None:
    """Raise a one-line :class:`ConfigurationError` when the ``cohort`` extra is not installed."""
    try:
        import dask  # noqa: F401
        import distributed  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            f"Cohorts need Dask ({exc.name} is not installed): pip install 'theratwin[cohort]'.") from None


@dataclass(frozen=True)
class PatientSource:
    """Where one patient's DICOM comes from: a folder, or studies on a PACS.

    ``key`` names the patient's output folder (file-system safe); ``folder`` is the input folder, or ``None``
    with ``pacs_url``/``study_uids`` for a PACS patient (fetched by the task into ``OUT/pacs-input/<key>``).
    """

    key: str
    folder: Path | None = None
    pacs_url: str | None = None
    patient_id: str | None = None
    study_uids: tuple[str, ...] = ()

    def fingerprint(self) -> str:
        """Identity of the input: file names, sizes and modification times (a folder) or the study UIDs (PACS)."""
        h = hashlib.sha256()
        if self.folder is not None:
            for p in sorted(self.folder.rglob("*")):
                if p.is_file() and not p.name.startswith("."):
                    st = p.stat()
                    h.update(f"{p.relative_to(self.folder).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        else:
            h.update(f"{self.pacs_url}\0{self.patient_id}\0{','.join(sorted(self.study_uids))}".encode())
        return h.hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``key``, ``folder``, ``pacs_url``, ``patient_id``, ``study_uids``) recorded in
        the cohort's records."""
        return {"key": self.key, "folder": None if self.folder is None else str(self.folder),
                "pacs_url": self.pacs_url, "patient_id": self.patient_id, "study_uids": list(self.study_uids)}


def _safe_key(text: str) -> str:
    key = _SAFE.sub("_", text).strip("._") or "patient"
    return key[:80]


def discover_patients(root: str | os.PathLike[str]) -> list[PatientSource]:
    """One patient per sub-folder of ``root`` (sorted; names starting with ``.`` or ``_`` are not patients)."""
    base = Path(root)
    if not base.is_dir():
        raise InvalidInputError(f"{base}: not a folder; give --input a folder with one sub-folder per patient.")
    out = [PatientSource(_safe_key(p.name), p.resolve()) for p in sorted(base.iterdir())
           if p.is_dir() and not p.name.startswith((".", "_"))]
    if not out:
        raise InvalidInputError(f"{base}: no patient folders (one sub-folder per patient is expected).")
    keys = [s.key for s in out]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise InvalidInputError(f"{base}: patient folder names {dup} collide once made file-system safe; rename them.")
    return out


def pacs_patients(url: str, query: dict[str, str]) -> list[PatientSource]:
    """Patients on a PACS: studies matching ``query`` (``PatientID``; wildcards ``*``/``?`` as far as the PACS
    matches them — DIMSE C-FIND does, Orthanc 1.10's QIDO-RS does not), grouped by
    Patient ID (a therapy patient's time points are often separate studies). Uses the project's DICOMweb/DIMSE
    client (:func:`theratwin.dicom.pacs.open_pacs`); credentials come from the environment, as for push."""
    from ..dicom.pacs import open_pacs

    unknown = set(query) - {"PatientID", "StudyInstanceUID"}
    if unknown:
        raise InvalidInputError(f"--query keys {sorted(unknown)} are not supported; use PatientID=... "
                                "(wildcards * and ? allowed) or StudyInstanceUID=....")
    with open_pacs(url) as pacs:
        studies = pacs.find_studies(patient_id=query.get("PatientID"), study_uid=query.get("StudyInstanceUID"))
    by_patient: dict[str, list[str]] = {}
    for st in studies:
        by_patient.setdefault(st.get("PatientID", ""), []).append(st["StudyInstanceUID"])
    if not by_patient:
        raise InvalidInputError(f"{url}: no studies match {query}.")
    return [PatientSource(_safe_key(pid or "unknown"), None, url, pid, tuple(sorted(uids)))
            for pid, uids in sorted(by_patient.items())]


def _config_fingerprint(config: dict[str, Any], strict: bool, threads: int) -> str:
    settings = {"config": config, "strict": strict, "threads_per_patient": threads}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _read_task(folder: Path) -> dict[str, Any] | None:
    try:
        d = json.loads((folder / TASK_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def _publish(tmp: Path, final: Path) -> None:
    """Move a finished patient folder into place (an older one is moved aside first, then removed)."""
    if final.exists():
        trash = final.with_name(f".trash-{final.name}-{uuid.uuid4().hex[:8]}")
        os.replace(final, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(tmp, final)


def run_patient(source: dict[str, Any], out_root: str, config: dict[str, Any], strict: bool,
                fingerprints: dict[str, str], threads: int = 1) -> dict[str, Any]:
    """One patient, as a Dask task: run the pipeline into ``out_root/patients/<key>``; never raises.

    ``threads`` is the number of threads ITK may use for the patient. One (the default) gives each patient one
    core — the cluster's parallelism is over patients — and makes the results reproducible to the last bit:
    ITK's multi-threaded registration metric sums in an order that varies between runs (relative differences of
    about 1e-7 in the activities otherwise). Dask's nanny already limits the BLAS/OpenMP threads of its workers
    to one.

    Returns the task record also written to ``cohort-task.json`` (status ``done`` or ``failed``, error, seconds,
    worker host and process).
    """
    import platform

    import SimpleITK as sitk

    from ..pipeline import PipelineConfig, run_folder

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, int(threads)))

    src = PatientSource(source["key"], Path(source["folder"]) if source.get("folder") else None,
                        source.get("pacs_url"), source.get("patient_id"), tuple(source.get("study_uids", ())))
    root = Path(out_root)
    final = root / PATIENTS_DIR / src.key
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{src.key}-", dir=final.parent))
    t0 = time.perf_counter()
    record: dict[str, Any] = {
        "patient": src.key, "source": src.to_dict(), **fingerprints,
        "started": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "worker": f"{platform.node()}:{os.getpid()}", "software_version": __version__,
    }
    try:
        input_dir = src.folder
        if input_dir is None:
            input_dir = _fetch_from_pacs(src, root)
        run = run_folder(input_dir, tmp, config=PipelineConfig.from_dict(config), strict=strict)
        record.update(status="done", error=None,
                      n_warnings=sum(1 for w in run.results.warnings if w.severity != "info"))
    except TheraTwinError as exc:
        # bad input or settings: the message names the file/tag and what to do
        record.update(status="failed", error=str(exc), error_type=type(exc).__name__)
    except Exception as exc:  # noqa: BLE001 - one patient's unexpected failure must not stop the cohort
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}", error_type=type(exc).__name__)
        (tmp / ERROR_FILE).write_text(traceback.format_exc(), encoding="utf-8")
    record["seconds"] = round(time.perf_counter() - t0, 2)
    record["finished"] = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    try:
        _write_json_atomic(tmp / TASK_FILE, record)
        _publish(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        record.update(status="failed", error=f"cannot write {final}: {exc}", error_type=type(exc).__name__)
    return record


def _fetch_from_pacs(src: PatientSource, root: Path) -> Path:
    """Retrieve a PACS patient's studies into ``root/pacs-input/<key>`` (kept: a re-run does not fetch again)."""
    from ..dicom.pacs import open_pacs

    dest = root / "pacs-input" / src.key
    marker = dest / ".complete"
    want = ",".join(src.study_uids)
    if marker.is_file() and marker.read_text(encoding="utf-8") == want:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{src.key}-", dir=dest.parent))
    assert src.pacs_url is not None
    with open_pacs(src.pacs_url) as pacs:
        for uid in src.study_uids:
            pacs.fetch_study(uid, tmp / _safe_key(uid))
    (tmp / ".complete").write_text(want, encoding="utf-8")
    _publish(tmp, dest)
    return dest


def _cluster_client(scheduler: str | None, n_workers: int | None, memory_per_worker: str) -> tuple[Any, Any, dict]:
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise ConfigurationError(f"Cannot reach the Dask scheduler {scheduler}: {exc}") from None
        info = client.scheduler_info()
        workers = info.get("workers", {})
        return client, None, {"scheduler": scheduler, "n_workers": len(workers),
                              "memory_limit_bytes": sorted({w.get("memory_limit") for w in workers.values()})}
    from dask.utils import parse_bytes

    try:
        limit = parse_bytes(memory_per_worker)
    except (ValueError, TypeError):
        raise ConfigurationError(f"--memory-per-worker {memory_per_worker!r} is not a size (e.g. 3GiB).") from None
    if n_workers is None:
        import psutil

        total = psutil.virtual_memory().total
        n_workers = max(1, min(os.cpu_count() or 1, int(0.8 * total // limit)))
    if n_workers < 1:
        raise ConfigurationError(f"--workers must be at least 1; got {n_workers}.")
    # a worker that dies (memory limit, crash) takes its patient with it: retry once elsewhere, then record it;
    # non-daemon worker processes, so that a stage or plug-in may start processes of its own
    with dask.config.set({"distributed.scheduler.allowed-failures": 1,
                          "distributed.worker.daemon": False}):
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, memory_limit=limit,
                               dashboard_address="127.0.0.1:0", host="127.0.0.1")  # loopback only, free port
    client = Client(cluster)
    return client, cluster, {"scheduler": "embedded LocalCluster", "n_workers": n_workers,
                             "threads_per_worker": 1, "memory_limit_bytes": [limit]}


def run_cohort(
    patients: str | os.PathLike[str] | Sequence[PatientSource],
    out_dir: str | os.PathLike[str],
    *,
    config: Any = None,
    strict: bool = False,
    scheduler: str | None = None,
    n_workers: int | None = None,
    memory_per_worker: str = "3GiB",
    retry_failed: bool = False,
    threads_per_patient: int = 1,
    progress: ProgressCallback | None = None,
) -> CohortRun:
    """Run the pipeline on every patient (see the module docstring) and write the cohort table and report.

    Parameters
    ----------
    patients
        A folder with one sub-folder per patient, or :class:`PatientSource` objects (e.g. from
        :func:`pacs_patients`).
    out_dir
        Output folder (must be reachable at the same path by every worker).
    config
        :class:`~theratwin.pipeline.PipelineConfig` (default: :data:`COHORT_STAGES`); pushes are not done per
        patient (``pacs_url``/``fhir_url`` are ignored).
    strict
        Refuse DICOM files with any non-conformance.
    scheduler
        ``tcp://HOST:PORT`` of an existing Dask scheduler; None starts a ``LocalCluster``.
    n_workers, memory_per_worker
        Size of the embedded cluster (default: one worker per core, as far as memory allows) and each worker's
        memory limit (Dask pauses, then restarts a worker above it).
    retry_failed
        Run again the patients that failed before on the same input and settings.
    threads_per_patient
        ITK threads per patient (see :func:`run_patient`; 1 = reproducible to the last bit).
    progress
        ``(fraction, message)`` with the counts done / failed / running / queued.
    """
    require_dask()
    from dataclasses import replace

    from distributed import wait

    from ..pipeline import PipelineConfig
    from .report import write_report
    from .table import cohort_rows, write_patients_csv, write_table

    t_start = time.perf_counter()
    out = Path(out_dir).resolve()
    (out / PATIENTS_DIR).mkdir(parents=True, exist_ok=True)
    sources = discover_patients(patients) if isinstance(patients, (str, os.PathLike)) else list(patients)
    cfg = config or PipelineConfig(stages=COHORT_STAGES)
    cfg = replace(cfg, pacs_url=None, fhir_url=None)
    cfg_dict = cfg.to_dict()
    cfg_fp = _config_fingerprint(cfg_dict, strict, threads_per_patient)

    records: dict[str, dict[str, Any]] = {}
    todo: list[tuple[PatientSource, dict[str, str]]] = []
    skipped: list[str] = []
    for src in sources:
        fps = {"input_fingerprint": src.fingerprint(), "settings_fingerprint": cfg_fp}
        prev = _read_task(out / PATIENTS_DIR / src.key)
        same = prev is not None and all(prev.get(k) == v for k, v in fps.items())
        if same and prev is not None and (prev.get("status") == "done" or not retry_failed):
            records[src.key] = prev
            skipped.append(src.key)
        else:
            todo.append((src, fps))
    n_total = len(sources)

    def counts_message(running: int) -> str:
        n_done = sum(1 for r in records.values() if r.get("status") == "done")
        n_failed = len(records) - n_done
        return f"done {n_done} · failed {n_failed} · running {running} · queued {n_total - len(records) - running}"

    report(progress, len(records) / max(n_total, 1), counts_message(0))
    cluster_info: dict[str, Any] = {}
    computed: list[str] = []
    if todo:
        client, cluster, cluster_info = _cluster_client(scheduler, n_workers, memory_per_worker)
        try:
            futures = {}
            for src, fps in todo:
                fut = client.submit(run_patient, src.to_dict(), str(out), cfg_dict, strict, fps, threads_per_patient,
                                    key=f"theratwin-patient-{src.key}-{uuid.uuid4().hex[:8]}", pure=False)
                futures[fut] = (src, fps)
            pending = set(futures)
            while pending:
                try:
                    finished, pending = wait(pending, timeout=1.0, return_when="FIRST_COMPLETED")
                except (TimeoutError, asyncio.TimeoutError):  # nothing finished this second: refresh the counts
                    finished = set()
                for fut in finished:
                    src, fps = futures[fut]
                    records[src.key] = _outcome(fut, src, fps, out, cluster_info)
                    computed.append(src.key)
                running = _running(client, {f.key for f in pending})
                report(progress, len(records) / max(n_total, 1), counts_message(running))
        finally:
            client.close()
            if cluster is not None:
                cluster.close()

    rows = cohort_rows(out, records)
    outputs = write_table(rows, out)
    outputs["patients_csv"] = write_patients_csv(records, out).name
    run = CohortRun(out, records, sorted(computed), sorted(skipped), cluster_info, outputs,
                    round(time.perf_counter() - t_start, 2))
    outputs["report_html"] = write_report(run, rows).name
    summary = {
        "schema": "theratwin-cohort/1", "notice": RESEARCH_USE_NOTICE,
        "software": {"name": "TheraTwin", "version": __version__},
        "finished": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "config": cfg_dict, "strict": strict, "cluster": cluster_info,
        "patients": len(records), "done": run.done, "failed": run.failed,
        "computed_now": run.computed, "seconds": run.seconds, "outputs": outputs,
    }
    _write_json_atomic(out / "cohort.json", summary)
    report(progress, 1.0, counts_message(0))
    return run


def _running(client: Any, pending_keys: set[str]) -> int:
    try:
        processing = client.processing()
    except (OSError, TimeoutError):
        return 0
    return sum(1 for keys in processing.values() for k in keys if k in pending_keys)


def _outcome(fut: Any, src: PatientSource, fps: dict[str, str], out: Path, cluster: dict[str, Any]) -> dict[str, Any]:
    """The task's record, or a failure record written here when the task itself could not finish."""
    from distributed import KilledWorker

    try:
        return dict(fut.result())
    except KilledWorker:
        from dask.utils import format_bytes

        limits = ", ".join(format_bytes(int(b)) for b in cluster.get("memory_limit_bytes", []) if b)
        error = (f"the Dask worker running this patient died twice (memory limit {limits or 'unknown'} per worker "
                 "exceeded, or a crash); see the worker logs, or raise --memory-per-worker")
    except Exception as exc:  # noqa: BLE001 - recorded for this patient, the cohort goes on
        error = f"{type(exc).__name__}: {exc}"
    record = {"patient": src.key, "source": src.to_dict(), **fps, "status": "failed", "error": error,
              "error_type": "worker", "software_version": __version__,
              "finished": datetime.now(timezone.utc).replace(microsecond=0).isoformat()}
    folder = out / PATIENTS_DIR / src.key
    folder.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(folder / TASK_FILE, record)
    for tmp in folder.parent.glob(f".{src.key}-*"):  # what the dead worker was writing (the task is over)
        shutil.rmtree(tmp, ignore_errors=True)
    return record
