"""The run manifest ``OUT/run-manifest.json``: who an output folder belongs to, how far its run got, what it wrote.

A run marks its folder before it changes anything there, and seals it last:

1. ``begin``: the folder is checked (another patient's results are refused unless the run is told to replace
   them; then they are removed whole, never while their outbox still holds undelivered items), a lock keeps a
   second run out, and the manifest is written with ``status: "running"``, the patient, the studies and a new
   run id;
2. each stage's status (``running``, ``done``, ``skipped``) is recorded as the stage starts and ends;
3. ``finish``: files of an earlier run that this run did not write again are removed, files the caller adds
   (``PipelineState.output_files``, the demo's truth) and then ``results.json`` are written, then the manifest with
   ``status: "complete"`` and the SHA-256 of every file of the run.

Every file is written atomically (:mod:`theratwin._files`), so a run killed (SIGINT, SIGKILL, power loss) or
stopped by a full disk at any moment leaves either the previous complete folder (killed before step 1) or a
folder whose manifest says it is unfinished (``running``, ``interrupted`` or ``failed``, with the stage and
the reason). :func:`check_folder_for_push` refuses such a folder, and one whose files do not match the
manifest (changed, missing, or added from another run or patient).

Folders written before manifests existed are recognised by their ``results.json`` or DICOM files; their
patient is checked the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .._files import atomic_write, is_temporary, make_dir, sha256_file
from .._lock import exclusive_lock
from .._version import __version__
from ..errors import OutputError, PushError
from ..progress import Cancelled

if TYPE_CHECKING:
    from ..results import Results
    from ..study import Study
    from .state import PipelineState



class RunContext(Protocol):
    """What the recorder reads of a run (a :class:`~theratwin.pipeline.PipelineContext`); a protocol, so that the
    manifest does not depend on the pipeline that uses it."""

    study: Study
    results: Results
    config: Any
    state: PipelineState
    completed: list[str]


__all__ = ["MANIFEST_NAME", "RunContext", "OUTPUT_FILES", "RunManifest", "RunRecorder", "read_manifest", "folder_patient",
           "check_output_folder", "check_folder_for_push"]

MANIFEST_NAME = "run-manifest.json"
SCHEMA = "theratwin-run/1"
#: Files a run writes at the top of its folder (stages may add others through ``Results.outputs``).
KNOWN_OUTPUTS = ("results.json", "report.html", "report.pdf", "twin-state.json", "fhir-bundle.json",
                 "demo-truth.json")
DICOM_DIR = "dicom"
OUTBOX_DIR = "outbox"
#: Held by a run from ``begin`` to ``finish`` (one run per folder at a time).
RUN_LOCK = ".theratwin-run.lock"
#: Name of the :class:`~theratwin.pipeline.PipelineState` attribute ``output_files``: ``{relative path: text}`` a
#: caller adds to the run (e.g. the demo's truth), written when the run is sealed, just before ``results.json``
#: (kept for callers that passed ``state={OUTPUT_FILES: ...}``; give ``PipelineState(output_files=...)``).
OUTPUT_FILES = "output_files"


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


@dataclass
class RunManifest:
    """The content of ``run-manifest.json`` (see the module docstring)."""

    run_id: str
    patient_id: str
    issuer: str = ""
    study_uids: list[str] = field(default_factory=list)
    status: str = "running"  # "running" | "complete" | "interrupted" | "failed"
    error: str = ""
    software_version: str = __version__
    started: str = field(default_factory=_now)
    finished: str = ""
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """True when the run finished every stage (status ``complete``)."""
        return self.status == "complete"

    def describe(self) -> str:
        """``run 1a2b3c4d of patient X, started ..., <status>`` (one phrase, for messages)."""
        text = f"run {self.run_id[:8]} of patient {self.patient_id or '?'} started {self.started or '?'}"
        if self.status == "running":
            stage = next((n for n, s in self.stages.items() if s.get("status") == "running"), "")
            return text + f", not finished{f' (it was in stage {stage!r})' if stage else ''}"
        if self.status in ("interrupted", "failed"):
            return text + f", {self.status}{f': {self.error}' if self.error else ''}"
        return text + f", {self.status}"

    def to_json(self) -> str:
        """The manifest file's text (with its schema name)."""
        return json.dumps({"schema": SCHEMA, **asdict(self)}, indent=1)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunManifest:
        """The manifest from a parsed manifest file (keys this version does not know are ignored)."""
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def read_manifest(out_dir: str | Path) -> RunManifest | None:
    """The manifest of ``out_dir`` (None when there is none).

    Raises
    ------
    OutputError
        When it exists but cannot be read (it is written atomically, so only something outside TheraTwin
        damages it).
    """
    path = Path(out_dir) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("schema") != SCHEMA:
            raise ValueError(f"schema {data.get('schema')!r}, expected {SCHEMA!r}")
        return RunManifest.from_dict(data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise OutputError(f"{path}: cannot read the run manifest ({exc}); run the pipeline into this folder "
                          "again with --replace, or use another folder.") from None


# -- whose folder is it --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FolderPatient:
    """The patient an output folder's results belong to, and where that was read."""

    patient_id: str
    issuer: str
    source: str


def _dicom_patient(path: Path) -> tuple[str, str] | None:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID", "IssuerOfPatientID"])
    except (InvalidDicomError, OSError, ValueError):
        return None
    return str(ds.get("PatientID", "") or ""), str(ds.get("IssuerOfPatientID", "") or "")


def _dicom_files(out: Path) -> list[Path]:
    d = out / DICOM_DIR
    return sorted(p for p in d.glob("*.dcm") if not is_temporary(p)) if d.is_dir() else []


def folder_patient(out_dir: str | Path) -> FolderPatient | None:
    """Whose results ``out_dir`` holds: from its manifest, else ``results.json``, else its first DICOM object;
    None for an empty folder or one without TheraTwin outputs."""
    out = Path(out_dir)
    m = read_manifest(out)
    if m is not None:
        return FolderPatient(m.patient_id, m.issuer, MANIFEST_NAME)
    res = out / "results.json"
    if res.is_file():
        try:
            pid = str(((json.loads(res.read_text(encoding="utf-8")).get("study") or {}).get("patient_id")) or "")
        except (OSError, ValueError, AttributeError):
            pid = ""
        return FolderPatient(pid, "", "results.json")
    for f in _dicom_files(out):
        got = _dicom_patient(f)
        if got is not None:
            return FolderPatient(got[0], got[1], f"{DICOM_DIR}/{f.name}")
    return None


def _same_patient(a: FolderPatient, patient_id: str, issuer: str) -> bool:
    return bool(a.patient_id) and a.patient_id == patient_id and (not a.issuer or not issuer or a.issuer == issuer)


def check_output_folder(out_dir: str | Path, patient_id: str, issuer: str = "", *, replace: bool = False) -> None:
    """Check, before any computation, that a run of ``patient_id`` may write into ``out_dir``.

    The folder must be creatable and writable, and must not hold another patient's results unless
    ``replace`` (then :class:`RunRecorder` removes them whole when the run starts, provided their outbox has
    delivered everything).

    Raises
    ------
    OutputError
        With what to do (another folder, ``--replace``, push first, fix permissions).
    """
    out = make_dir(out_dir)
    owner = folder_patient(out)
    if owner is not None and not _same_patient(owner, patient_id, issuer):
        if not replace:
            whose = f"patient {owner.patient_id}" if owner.patient_id else "an unknown patient"
            raise OutputError(f"{out} holds the results of {whose} ({owner.source}); choose another output folder, "
                              f"or give --replace to delete them and write patient {patient_id}'s results there.")
        _undelivered_check(out)
    probe = out / f".theratwin-write-test-{uuid.uuid4().hex[:8]}"
    atomic_write(probe, b"")
    probe.unlink()


def _undelivered_check(out: Path) -> None:
    from ..dicom.outbox import Outbox

    if not (out / OUTBOX_DIR).is_dir():
        return
    left = {ch: s["pending"] for ch, s in Outbox(out / OUTBOX_DIR).summary().items() if s["pending"]}
    if left:
        what = ", ".join(f"{n} for {ch}" for ch, n in left.items())
        raise OutputError(f"{out} holds results not yet delivered ({what} in {out / OUTBOX_DIR}); push them "
                          "first (theratwin push) or move the folder away; they are not replaced.")


def _candidates(out: Path, manifest: RunManifest | None) -> Iterator[Path]:
    """Files of an earlier run in ``out``: its manifest's list, the known outputs and the DICOM folder."""
    seen: set[Path] = set()
    names: Iterable[str] = [*(manifest.files if manifest else {}), *KNOWN_OUTPUTS]
    for p in [out / n for n in names] + _dicom_files(out):
        if p not in seen and p.is_file():
            seen.add(p)
            yield p


def _signature(p: Path) -> tuple[int, int, int]:
    st = p.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino


class RunRecorder:
    """Keeps ``run-manifest.json`` of one pipeline run (used by :meth:`theratwin.pipeline.Pipeline.continue_run`).

    A context continued later (Slicer's modules continue a run stage by stage) keeps its run id in
    ``results.extras["run_id"]``; files it wrote in earlier calls are kept.
    """

    def __init__(self, out_dir: Path, context: RunContext) -> None:
        self.out = Path(out_dir)
        self.ctx = context
        self.manifest: RunManifest | None = None
        self._earlier: dict[Path, tuple[int, int, int]] = {}
        self._lock = contextlib.ExitStack()

    # -- start --------------------------------------------------------------------------------------------------
    def begin(self) -> None:
        """Claim the output folder before the first stage.

        Refuse another patient's folder (unless replacing), take the run lock, remove temporary files of a killed
        run and write the manifest as ``running``.

        Raises
        ------
        OutputError
            The folder holds another patient's results (without ``replace_outputs``), or another run holds
            its lock.
        """
        study = self.ctx.study
        pid, issuer = study.patient.patient_id, study.patient.issuer
        replace = bool(getattr(self.ctx.config, "replace_outputs", False))
        check_output_folder(self.out, pid, issuer, replace=replace)
        self._lock.enter_context(exclusive_lock(self.out / RUN_LOCK, timeout_s=0, busy=OutputError,
                                                what=f"Another run is writing into {self.out}"))
        try:
            self._begin(pid, issuer)
        except BaseException:
            self._lock.close()
            raise

    def _begin(self, pid: str, issuer: str) -> None:
        previous = read_manifest(self.out)
        owner = folder_patient(self.out)
        run_id = str(self.ctx.results.extras.setdefault("run_id", uuid.uuid4().hex))
        continuing = previous is not None and previous.run_id == run_id
        for tmp in [*self.out.glob(".*"), *(self.out / DICOM_DIR).glob(".*")]:
            if is_temporary(tmp):  # left by a killed run; the lock says no run is writing now
                tmp.unlink(missing_ok=True)
        study = self.ctx.study
        uids = sorted({u for u in [study.study_uid, *(tp.source.study_uid for c in study.cycles
                                                      for tp in c.time_points if tp.source is not None)] if u})
        m = RunManifest(run_id, pid, issuer, uids)
        if continuing and previous is not None:
            m.started, m.stages = previous.started, dict(previous.stages)
        for name in self.ctx.completed:
            m.stages.setdefault(name, {"status": "done"})
        self.manifest = m
        self._write()  # from here on the folder says it is unfinished
        if owner is not None and not _same_patient(owner, pid, issuer):
            self._clear_other_patient()
        if not continuing:
            self._earlier = {p: _signature(p) for p in _candidates(self.out, previous)}

    def _clear_other_patient(self) -> None:
        """Remove another patient's results whole (``--replace``; their outbox was checked to be delivered)."""
        for p in _candidates(self.out, None):
            p.unlink(missing_ok=True)
        shutil.rmtree(self.out / OUTBOX_DIR, ignore_errors=True)

    # -- progress -----------------------------------------------------------------------------------------------
    def _write(self) -> None:
        assert self.manifest is not None
        atomic_write(self.out / MANIFEST_NAME, self.manifest.to_json())

    def stage(self, name: str, status: str, **info: Any) -> None:
        """Record a stage's status (``running``, ``done``, ``skipped``) and write the manifest."""
        assert self.manifest is not None
        self.manifest.stages[name] = {"status": status, **info}
        self._write()

    def abort(self, exc: BaseException) -> None:
        """Mark the run interrupted (Ctrl-C, cancel) or failed; the folder stays marked unfinished."""
        try:
            if self.manifest is not None:
                interrupted = isinstance(exc, (KeyboardInterrupt, Cancelled))
                self.manifest.status = "interrupted" if interrupted else "failed"
                self.manifest.error = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
                self.manifest.finished = _now()
                with contextlib.suppress(OutputError):  # a full disk: the manifest already says "running"
                    self._write()
        finally:
            self._lock.close()

    # -- seal ---------------------------------------------------------------------------------------------------
    def finish(self, results: Results) -> None:
        """Remove what an earlier run left and this one did not write, write ``results.json``, seal the manifest."""
        assert self.manifest is not None
        try:
            for p, sig in self._earlier.items():
                with contextlib.suppress(FileNotFoundError):
                    if _signature(p) == sig:  # not written again by this run
                        p.unlink()
            for rel, text in dict(self.ctx.state.output_files).items():
                atomic_write(self.out / rel, text)
                results.outputs.setdefault(Path(rel).stem.replace("-", "_"), rel)
            results.outputs["results_json"] = "results.json"
            results.outputs["run_manifest"] = MANIFEST_NAME
            results.write_json(self.out / "results.json")
            self.manifest.files = self._checksums(results)
            self.manifest.status = "complete"
            self.manifest.finished = _now()
            self._write()
        finally:
            self._lock.close()

    def _checksums(self, results: Results) -> dict[str, dict[str, Any]]:
        names: set[str] = set()

        def collect(v: Any) -> None:
            if isinstance(v, str):
                names.add(v)
            elif isinstance(v, (list, tuple)):
                for x in v:
                    collect(x)

        for v in results.outputs.values():
            collect(v)
        files = {p for n in names if (p := self.out / n).is_file() and p.resolve().parent.is_relative_to(
            self.out.resolve())}
        files |= set(_candidates(self.out, None))
        out = {}
        for p in sorted(files):
            rel = p.relative_to(self.out).as_posix()
            if rel == MANIFEST_NAME or rel.startswith(OUTBOX_DIR + "/") or is_temporary(p):
                continue
            out[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        return out


# -- before a push ---------------------------------------------------------------------------------------------

def check_folder_for_push(out_dir: str | Path) -> RunManifest | None:
    """Refuse to push a folder that is unfinished or mixed; return its manifest (None for an older folder).

    Raises
    ------
    PushError
        The folder's run did not finish (or is still running), a file differs from what the run wrote, or the
        folder holds DICOM objects or a bundle from another run or patient. Nothing is sent then.
    """
    out = Path(out_dir)
    try:
        m = read_manifest(out)
    except OutputError as exc:
        raise PushError(str(exc)) from None
    dicom = _dicom_files(out)
    if m is None:
        # a folder from before run manifests: at least one patient only
        ids = {got[0] for got in map(_dicom_patient, dicom) if got is not None}
        owner = folder_patient(out)
        if owner is not None and owner.patient_id:
            ids.add(owner.patient_id)
        if len(ids) > 1:
            raise PushError(f"{out} mixes the results of patients {sorted(ids)}; nothing was sent. Run the pipeline "
                            "again into an empty folder and push that.")
        return None
    if not m.complete:
        if m.status == "running" and _run_is_alive(out):
            raise PushError(f"{out} is being written by a run now ({m.describe()}); push when it has finished.")
        raise PushError(f"{out} holds an unfinished run ({m.describe()}); nothing was sent. Run the pipeline into "
                        "it again (the same command), then push.")
    for rel, rec in m.files.items():
        p = out / rel
        if not p.is_file():
            raise PushError(f"{p} is missing: it was written by {m.describe()}; nothing was sent. Run the pipeline "
                            "again, then push.")
        if p.stat().st_size != rec.get("bytes") or sha256_file(p) != rec.get("sha256"):
            raise PushError(f"{p} was changed after {m.describe()} wrote it (checksum differs); nothing was sent. "
                            "Run the pipeline again, then push.")
    extra = [f"{DICOM_DIR}/{f.name}" for f in dicom if f"{DICOM_DIR}/{f.name}" not in m.files]
    if (out / "fhir-bundle.json").is_file() and "fhir-bundle.json" not in m.files:
        extra.append("fhir-bundle.json")
    if extra:
        raise PushError(f"{out} holds {len(extra)} file(s) that {m.describe()} did not write (e.g. {extra[0]}, from "
                        "another run or patient); nothing was sent. Remove them or run the pipeline again.")
    for f in dicom:
        got = _dicom_patient(f)
        if got is not None and got[0] != m.patient_id:
            raise PushError(f"{f} belongs to patient {got[0]}, the folder to patient {m.patient_id}; nothing was "
                            "sent. Run the pipeline again into an empty folder.")
    return m


def _run_is_alive(out: Path) -> bool:
    """True when a run holds the folder's run lock (a killed run's lock is released by the system)."""
    try:
        with exclusive_lock(out / RUN_LOCK, timeout_s=0, busy=OutputError):
            return False
    except OutputError:
        return True
