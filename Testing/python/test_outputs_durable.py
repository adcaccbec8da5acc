"""Output folders that survive kills, full disks and reuse: atomic files, the run manifest, and what ``run`` and
``push`` refuse.

The folder after any interruption must be either the previous complete state (its manifest's checksums hold)
or marked unfinished, and ``push`` must refuse the latter; every file in it must be whole (JSON that parses,
DICOM that pydicom reads without ``force``, a PDF with its ``%%EOF``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest

import theratwin as tt
import theratwin._files as files
from theratwin._files import atomic_write, is_temporary, sha256_file
from theratwin.dicom.outbox import Outbox
from theratwin.errors import OutputError, PushError
from theratwin.pipeline import Pipeline, PipelineConfig
from theratwin.pipeline.manifest import MANIFEST_NAME, check_folder_for_push, read_manifest
from theratwin.push import push_directory, push_lock

HERE = Path(__file__).resolve().parent
DEAD_PACS = "http://127.0.0.1:9/dicom-web"  # nothing listens: a refusal must come before any connection


def _study(patient_id: str = "TT-DURABLE-1") -> tt.Study:
    """A one-cycle, four-time-point study in memory: the whole pipeline runs on it in a few seconds."""
    g = tt.Geometry(shape=(8, 10, 12), spacing_mm=(4.8, 4.8, 4.8), origin_mm=(-28.8, -24.0, -19.2))
    start = datetime(2026, 3, 2, 9, 0, 0)
    adm = tt.Administration("PSMA-617", "Lu-177", 7400.0, start)
    tps = [tt.TimePoint(tt.ImageVolume.from_geometry(np.full(g.shape, 1000.0 * np.exp(-0.01 * h), np.float32), g,
                                                     "Bq/mL"), start + timedelta(hours=h), 1800.0)
           for h in (4.0, 24.0, 48.0, 96.0)]
    mask = np.zeros(g.shape, bool)
    mask[2:6, 3:7, 4:8] = True
    seg = tt.Segmentation(g, [tt.Structure("kidneys", 1)], {"kidneys": mask})
    return tt.Study(tt.Patient(patient_id), [tt.Cycle(1, adm, tps)], seg)


def _assert_whole(out: Path) -> None:
    """Every output file in ``out`` is complete (whatever version it is)."""
    for p in out.rglob("*"):
        rel = p.relative_to(out).as_posix()
        if not p.is_file() or rel.startswith("outbox/") or p.name.startswith("."):
            continue
        if p.suffix == ".json":
            json.loads(p.read_text(encoding="utf-8"))
        elif p.suffix == ".dcm":
            pydicom.dcmread(p)
        elif p.suffix == ".pdf":
            data = p.read_bytes()
            assert data.startswith(b"%PDF") and data.rstrip().endswith(b"%%EOF"), rel
        elif p.suffix == ".html":
            assert p.read_text(encoding="utf-8").rstrip().endswith("</html>"), rel


def _previous_state_intact(out: Path, manifest) -> None:
    for rel, rec in manifest.files.items():
        assert sha256_file(out / rel) == rec["sha256"], rel


# -- the atomic writer -------------------------------------------------------------------------------------------

def test_failed_write_keeps_the_previous_file_and_says_so_in_one_line(tmp_path: Path) -> None:
    target = tmp_path / "results.json"
    atomic_write(target, '{"previous": true}')
    with pytest.raises(OutputError) as err, files.atomic_path(target) as tmp:
        tmp.write_text('{"half": ')
        raise OSError(errno.ENOSPC, "No space left on device")
    msg = str(err.value)
    assert len(msg.splitlines()) == 1 and str(target) in msg and "no space left" in msg and "previous" in msg
    assert json.loads(target.read_text()) == {"previous": True}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.geteuid() != 0:  # root writes anywhere; the message is checked with a read-only file system below
            with pytest.raises(OutputError, match="permission denied"):
                atomic_write(ro / "x.json", "{}")
    finally:
        ro.chmod(0o700)
    e = files.output_error(OSError(errno.EROFS, "Read-only file system"), ro / "x.json")
    assert str(ro / "x.json") in str(e) and "read-only" in str(e)


# -- a filling file system -----------------------------------------------------------------------------------------

@contextlib.contextmanager
def _small_filesystem(where: Path, size_kib: int):
    """A real tmpfs of ``size_kib`` (as root); else None (the test then injects ENOSPC at the same place)."""
    where.mkdir()
    mounted = False
    if os.geteuid() == 0 and shutil.which("mount"):
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(where)],
                                 capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(where)], check=False)


def test_disk_full_during_a_run_keeps_previous_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with _small_filesystem(tmp_path / "fs", 8192) as mounted:
        out = tmp_path / "fs" / "out"
        Pipeline().run(_study(), out_dir=out)
        before = read_manifest(out)
        assert before is not None and before.complete
        if mounted:
            # fill the file system up to 64 KiB: the next run's report no longer fits
            st = os.statvfs(out)
            with open(tmp_path / "fs" / "filler", "wb") as f:
                f.write(b"\0" * (st.f_bavail * st.f_frsize - 64 * 1024))
        else:
            real = files._commit

            def full(tmp: Path, path: Path, **kwargs: bool) -> None:
                if path.name == "report.html":
                    raise OSError(errno.ENOSPC, "No space left on device")
                real(tmp, path, **kwargs)

            monkeypatch.setattr(files, "_commit", full)
        with pytest.raises(OutputError) as err:
            Pipeline().run(_study(), out_dir=out)
        msg = str(err.value)
        print(f"tmpfs mounted: {mounted}; error: {msg}")
        assert len(msg.splitlines()) == 1 and str(out) in msg and "no space left" in msg
        # results.json and the files not yet rewritten are the previous run's; nothing is half-written
        assert sha256_file(out / "results.json") == before.files["results.json"]["sha256"]
        _assert_whole(out)
        after = read_manifest(out)
        assert after is not None and not after.complete and after.run_id != before.run_id
        assert after.status in ("failed", "running")  # "running" when even the manifest no longer fitted
        with pytest.raises(PushError, match="unfinished"):
            push_directory(out, pacs_url=DEAD_PACS)
        assert not [p for p in out.rglob("*") if is_temporary(p)]
        # space again: the same run completes and seals the folder
        (tmp_path / "fs" / "filler").unlink(missing_ok=True)
        monkeypatch.undo()
        Pipeline().run(_study(), out_dir=out)
        assert check_folder_for_push(out) is not None


# -- another patient's folder ------------------------------------------------------------------------------------------

def test_run_refuses_another_patients_folder_and_replaces_it_whole_only_when_told(tmp_path: Path) -> None:
    out = tmp_path / "out"
    Pipeline().run(_study("TT-PATIENT-A"), out_dir=out)
    a = read_manifest(out)
    assert a is not None and a.patient_id == "TT-PATIENT-A"
    (out / "notes.txt").write_text("the user's own file")
    with pytest.raises(OutputError, match="TT-PATIENT-A.*--replace"):
        Pipeline().run(_study("TT-PATIENT-B"), out_dir=out)
    _previous_state_intact(out, a)  # refused before anything was touched
    assert read_manifest(out).run_id == a.run_id
    # undelivered items of patient A: not even --replace removes them
    Outbox(out / "outbox").add("pacs", out / "dicom" / "rtdose_cycle1_dose.dcm", key="k", destination="d")
    with pytest.raises(OutputError, match="not yet delivered"):
        Pipeline(PipelineConfig(replace_outputs=True)).run(_study("TT-PATIENT-B"), out_dir=out)
    Outbox(out / "outbox").deliver("pacs", "d", lambda path, item: None)
    stages = ("registration", "kinetics", "dosimetry")
    Pipeline(PipelineConfig(replace_outputs=True, stages=stages)).run(_study("TT-PATIENT-B"), out_dir=out)
    b = read_manifest(out)
    assert b is not None and b.complete and b.patient_id == "TT-PATIENT-B"
    left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert left == ["notes.txt", "results.json", MANIFEST_NAME]  # A's report, DICOM, bundle, twin and outbox gone
    assert json.loads((out / "results.json").read_text())["study"]["patient_id"] == "TT-PATIENT-B"
    # the same patient again: no --replace needed; files the new run does not write are removed at its end
    Pipeline(PipelineConfig(stages=("registration", "kinetics"))).run(_study("TT-PATIENT-B"), out_dir=out)
    assert check_folder_for_push(out).stages.keys() == {"registration", "kinetics"}


def test_push_refuses_mixed_folders_and_changed_files(tmp_path: Path, demo_run) -> None:
    out = tmp_path / "out"
    shutil.copytree(demo_run.out_dir, out, ignore=shutil.ignore_patterns("outbox", ".*"))
    assert check_folder_for_push(out).complete
    # a DICOM object of another patient dropped into the folder
    stranger = pydicom.dcmread(out / "dicom" / "sr_cycle1.dcm")
    stranger.PatientID = "TT-SOMEONE-ELSE"
    stranger.save_as(out / "dicom" / "sr_other.dcm", enforce_file_format=True)
    with pytest.raises(PushError, match="sr_other.dcm"):
        push_directory(out, pacs_url=DEAD_PACS)
    (out / "dicom" / "sr_other.dcm").unlink()
    # a result edited after the run
    (out / "fhir-bundle.json").write_text((out / "fhir-bundle.json").read_text().replace("kidneys", "kidney "))
    with pytest.raises(PushError, match="checksum"):
        push_directory(out, pacs_url=DEAD_PACS)
    # a folder from before manifests mixing two patients is refused too
    legacy = tmp_path / "legacy"
    (legacy / "dicom").mkdir(parents=True)
    shutil.copy(demo_run.out_dir / "dicom" / "sr_cycle1.dcm", legacy / "dicom")
    stranger.save_as(legacy / "dicom" / "sr_other.dcm", enforce_file_format=True)
    with pytest.raises(PushError, match="mixes the results of patients"):
        push_directory(legacy, pacs_url=DEAD_PACS)


def test_second_push_of_a_folder_says_one_is_running(tmp_path: Path) -> None:
    (tmp_path / "dicom").mkdir()
    with push_lock(tmp_path):
        proc = subprocess.run([sys.executable, "-m", "theratwin", "push", str(tmp_path), "--pacs", DEAD_PACS],
                              capture_output=True, text=True, timeout=60)
        waited = subprocess.run([sys.executable, "-m", "theratwin", "push", str(tmp_path), "--pacs", DEAD_PACS,
                                 "--wait", "1.5"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Another push of" in lines[0] and "is running" in lines[0]
    assert waited.returncode == 2 and "waited 1.5 s" in waited.stderr


# -- checks before any computation -------------------------------------------------------------------------------------

def test_arguments_and_credentials_are_checked_before_any_computation(tmp_path: Path, demo_run) -> None:
    from dicom_synth import make_study

    make_study(tmp_path / "input", n_cycles=1, patient_id="TT-OTHER-9")
    out = tmp_path / "out"
    shutil.copytree(demo_run.out_dir, out, ignore=shutil.ignore_patterns("outbox", ".*"))
    before = read_manifest(out)
    env = {k: v for k, v in os.environ.items() if not k.startswith("THERATWIN_PACS")}
    cases = [
        (["--pacs", "http://admin:hunter2@pacs.example:8042/dicom-web"], "THERATWIN_PACS_USER", {}),
        (["--fhir", "https://u:hunter2@ehr.example/fhir"], "user information", {}),
        (["--pacs", "https://pacs.example/dicom-web"], "THERATWIN_PACS_CA_BUNDLE",
         {"THERATWIN_PACS_CA_BUNDLE": str(tmp_path / "no-such-ca.pem")}),
        ([], "TT-DEMO-0001", {}),  # the folder holds the demo patient's results
    ]
    for extra, expected, more_env in cases:
        # without -q: a run that had started would print its progress ("pipeline: 30% reading cycle 1 ...")
        proc = subprocess.run([sys.executable, "-m", "theratwin", "run", "--input", str(tmp_path / "input"), "--out",
                               str(out), *extra], capture_output=True, text=True, timeout=120,
                              env={**env, **more_env})
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("theratwin:")]
        assert proc.returncode == 2 and len(lines) == 1 and expected in lines[0], proc.stderr
        assert "hunter2" not in proc.stderr + proc.stdout and "Traceback" not in proc.stderr
        started = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.startswith("pipeline:")]
        assert not started, f"refused only after the run began: {started}"  # no image was read or computed
    _previous_state_intact(out, before)
    assert read_manifest(out).run_id == before.run_id


# -- killed while writing each output ------------------------------------------------------------------------------

EXPECTED_POINTS = {"run-manifest.json (first mark)", "twin-state.json", "report.html", "report.pdf",
                   "dicom/report-pdf.dcm", "dicom/rtdose_*", "dicom/seg_structures.dcm", "dicom/sr_*",
                   "fhir-bundle.json", "results.json", "run-manifest.json (seal)"}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the kill driver forks (Linux and macOS)")
def test_run_killed_while_writing_each_output(tmp_path: Path, demo_run) -> None:
    """``theratwin run`` of the demo patient into the folder of its previous complete run, killed by SIGINT and
    by SIGKILL at the moment each output is about to replace its previous version."""
    from theratwin.demo import build_demo

    out = tmp_path / "out"
    shutil.copytree(demo_run.out_dir, out, ignore=shutil.ignore_patterns("outbox", ".*"))
    previous = read_manifest(out)
    assert previous is not None and previous.complete
    # the demo patient on the coarse grid (the same patient, a quicker run)
    dicom_dir = build_demo(fast=True, noise=False, blur=False, misalign=False).dicom_dir
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    driver = subprocess.Popen([sys.executable, str(HERE / "kill_driver.py"), str(out), "--", "run", "--input",
                               str(dicom_dir), "--out", str(out), "-q"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen: list[tuple[str, str]] = []
    cli_checked = False
    try:
        assert driver.stdout is not None and driver.stdin is not None
        for line in driver.stdout:
            event = json.loads(line)
            if event["point"] == "end":
                assert event["status"] == 0
                break
            point, sig = event["point"], event["signal"]
            seen.append((point, sig))
            assert event["status"] == (130 if sig == "SIGINT" else -9), event
            _assert_whole(out)
            m = read_manifest(out)
            if m.complete:  # the previous complete state, untouched
                assert point == "run-manifest.json (first mark)" and m.run_id == previous.run_id, event
                _previous_state_intact(out, m)
                assert check_folder_for_push(out) is not None
            else:  # marked unfinished, and push refuses it
                assert m.run_id != previous.run_id
                assert m.status == ("interrupted" if sig == "SIGINT" else "running"), (event, m.status)
                with pytest.raises(PushError, match="unfinished|being written"):
                    push_directory(out, pacs_url=DEAD_PACS)
                if not cli_checked and sig == "SIGKILL":
                    proc = subprocess.run([sys.executable, "-m", "theratwin", "push", str(out), "--pacs", DEAD_PACS],
                                          capture_output=True, text=True, timeout=60)
                    lines = proc.stderr.strip().splitlines()
                    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
                    assert "nothing was sent" in lines[0] or "being written" in lines[0], lines
                    cli_checked = True
            driver.stdin.write("\n")
            driver.stdin.flush()
        driver.wait(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, driver.stderr.read() if driver.stderr else ""
    assert {p for p, _ in seen} == EXPECTED_POINTS and len(seen) == 2 * len(EXPECTED_POINTS)
    assert cli_checked
    final = check_folder_for_push(out)
    assert final is not None and final.complete and final.run_id != previous.run_id
    assert not (out / "demo-truth.json").exists()  # the earlier demo run's file, not written by this run
    assert not [p for p in out.rglob("*") if is_temporary(p)]
    _assert_whole(out)
