"""Integration: ``theratwin demo-cohort`` then ``theratwin cohort`` on Dask, embedded and over the network.

Six synthetic patients (one deliberately broken) run on an embedded LocalCluster with two workers, then on a
``dask scheduler`` and ``dask worker`` processes started here on loopback. Checked: identical tables from both
clusters, the broken patient recorded as failed with a reason and the others complete, a re-run that computes
nothing, and the table's numbers against the generator's truth (which the pipeline never sees). One patient is
also stored in a real Orthanc and run from a PACS query (``--pacs URL --query``): same rows as from its folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from servers.orthanc import Orthanc, orthanc_available

pytest.importorskip("distributed")
pytest.importorskip("pyarrow")

from theratwin.cli import main  # noqa: E402
from theratwin.cohort import read_table_csv  # noqa: E402
from theratwin.cohort.runner import TASK_FILE  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = 3  # six patients with 34 time points in all; TTC00006 (3 cycles) is the one broken below
BROKEN = "TTC00006"
PACS_PATIENT = "TTC00002"  # one cycle, four scans
ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "Logic"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@pytest.fixture(scope="module")
def cohort_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cohort") / "in"
    assert main(["demo-cohort", "--n", "6", "--out", str(root), "--seed", str(SEED), "-q"]) == 0
    # break one patient the way archives break: its SPECT files are missing, only CT and SEG are left
    removed = [p for p in (root / BROKEN).rglob("NM_*.dcm")]
    assert removed
    for p in removed:
        p.unlink()
    return root


@pytest.fixture(scope="module")
def local_run(cohort_input: Path) -> Path:
    out = cohort_input.parent / "out-local"
    assert main(["cohort", "--input", str(cohort_input), "--out", str(out), "--workers", "2", "-q"]) == 3
    return out


@pytest.fixture(scope="module")
def remote_scheduler(tmp_path_factory: pytest.TempPathFactory):
    """A ``dask scheduler`` and a ``dask worker`` process (two worker processes) on loopback."""
    d = tmp_path_factory.mktemp("dask")
    sched_file = d / "scheduler.json"
    procs = [subprocess.Popen(
        [sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
         "--scheduler-file", str(sched_file)],
        env=_env(), stdout=subprocess.DEVNULL, stderr=(d / "scheduler.log").open("w"))]
    try:
        deadline = time.monotonic() + 60
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sched_file.exists(), (d / "scheduler.log").read_text()
        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "dask", "worker", address, "--nworkers", "2", "--nthreads", "1",
             "--memory-limit", "3GiB", "--no-dashboard", "--host", "127.0.0.1"],
            env=_env(), stdout=subprocess.DEVNULL, stderr=(d / "worker.log").open("w")))
        from distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def _records(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (out / "patients").glob(f"*/{TASK_FILE}")}


class TestCohortOnDask:
    def test_broken_patient_failed_rest_complete(self, local_run: Path) -> None:
        rec = _records(local_run)
        assert sorted(rec) == [f"TTC{i:05d}" for i in range(1, 7)]
        assert rec[BROKEN]["status"] == "failed"
        assert rec[BROKEN]["error"]  # a reason, shown in cohort-patients.csv and the report
        assert all(r["status"] == "done" for k, r in rec.items() if k != BROKEN)
        patients_csv = (local_run / "cohort-patients.csv").read_text()
        assert f"{BROKEN},failed," in patients_csv
        assert BROKEN in (local_run / "cohort-report.html").read_text()
        rows = read_table_csv(local_run / "cohort-table.csv")
        assert {r["patient"] for r in rows} == set(rec) - {BROKEN}

    def test_table_matches_generator_truth(self, local_run: Path, cohort_input: Path) -> None:
        """Administrations, schedules and fully imaged kidney TIAs against the generator's truth."""
        rows = read_table_csv(local_run / "cohort-table.csv")
        checked = 0
        for r in rows:
            truth = json.loads((cohort_input / "_truth" / f"{r['patient']}.json").read_text())
            cyc = truth["cycles"][r["cycle"] - 1]
            assert r["administered_MBq"] == pytest.approx(cyc["administered_MBq"], abs=0.05)
            assert r["n_time_points"] == len(cyc["time_points"])
            if r["structure"] == "kidneys" and r["n_time_points"] >= 3:
                # kidneys are large: fitted TIA within 15 % of the analytic truth (noise, blur, motion, PVC)
                assert r["tia_MBq_h"] == pytest.approx(cyc["structures"]["kidneys"]["tia_MBq_h"], rel=0.15)
                assert r["dose_per_activity_Gy_per_GBq"] == pytest.approx(
                    cyc["structures"]["kidneys"]["mean_dose_Gy_per_GBq"], rel=0.2)
                checked += 1
        assert checked >= 5

    def test_rerun_computes_nothing(self, local_run: Path, cohort_input: Path) -> None:
        from theratwin.cohort import run_cohort

        before = {p: p.stat().st_mtime_ns for p in (local_run / "patients").rglob("*") if p.is_file()}
        table = (local_run / "cohort-table.csv").read_bytes()
        run = run_cohort(cohort_input, local_run,
                         config=_demo_config(cohort_input))
        assert run.computed == [] and run.cluster == {}  # no cluster was even started
        assert run.failed == [BROKEN]
        after = {p: p.stat().st_mtime_ns for p in (local_run / "patients").rglob("*") if p.is_file()}
        assert after == before
        assert (local_run / "cohort-table.csv").read_bytes() == table

    def test_external_scheduler_gives_identical_tables(self, local_run: Path, cohort_input: Path,
                                                       remote_scheduler: str) -> None:
        import pyarrow.parquet as pq

        out = cohort_input.parent / "out-remote"
        assert main(["cohort", "--input", str(cohort_input), "--out", str(out), "--scheduler", remote_scheduler,
                     "-q"]) == 3
        rec = _records(out)
        workers = {r["worker"] for r in rec.values() if r["status"] == "done"}
        assert all(":" in w for w in workers) and len(workers) >= 1
        assert (out / "cohort-table.csv").read_bytes() == (local_run / "cohort-table.csv").read_bytes()
        assert pq.read_table(out / "cohort-table.parquet").equals(pq.read_table(local_run / "cohort-table.parquet"))
        summary = json.loads((out / "cohort.json").read_text())
        assert summary["cluster"]["scheduler"] == remote_scheduler and summary["cluster"]["n_workers"] == 2
        # --retry-failed runs the broken patient alone again (and it fails again, with the same reason)
        from theratwin.cohort import run_cohort

        again = run_cohort(cohort_input, out, config=_demo_config(cohort_input), scheduler=remote_scheduler,
                           retry_failed=True)
        assert again.computed == [BROKEN] and again.failed == [BROKEN]
        assert again.records[BROKEN]["error"] == rec[BROKEN]["error"]


def test_memory_limit_bounds_a_patient(cohort_input: Path, tmp_path: Path) -> None:
    """A patient that needs more than its worker's memory limit is stopped by Dask and recorded, not run on."""
    from theratwin.cohort import discover_patients, run_cohort

    (small,) = [p for p in discover_patients(cohort_input) if p.key == "TTC00003"]
    run = run_cohort([small], tmp_path, config=_demo_config(cohort_input), n_workers=1,
                     memory_per_worker="400MiB")
    assert run.failed == ["TTC00003"]
    assert "memory limit 400.00 MiB" in run.records["TTC00003"]["error"]
    assert json.loads((tmp_path / "patients" / "TTC00003" / TASK_FILE).read_text())["status"] == "failed"
    assert not list((tmp_path / "patients").glob(".TTC00003-*"))  # the dead workers' half-written folders


@pytest.mark.skipif(not orthanc_available(), reason="Orthanc or its DICOMweb plugin not installed")
def test_pacs_query_gives_the_same_rows(local_run: Path, cohort_input: Path,
                                        tmp_path_factory: pytest.TempPathFactory) -> None:
    """A patient stored in Orthanc (one study per scan), found by QIDO-RS and fetched by the task (WADO-RS).

    The query is an exact Patient ID: Orthanc 1.10's QIDO-RS does not match wildcards in PatientID (its C-FIND
    does), so wildcard queries depend on the PACS.
    """
    work = tmp_path_factory.mktemp("orthanc-cohort")
    server = Orthanc(work / "orthanc")
    try:
        server.start()
        files = sorted((cohort_input / PACS_PATIENT).rglob("*.dcm"))

        def upload() -> None:  # Orthanc's own REST API, not TheraTwin's client
            with requests.Session() as s:
                for f in files:
                    r = s.post(f"http://127.0.0.1:{server.http_port}/instances", data=f.read_bytes(),
                               auth=(server.user, server.password), timeout=30)
                    r.raise_for_status()

        server.call(upload)
        assert server.count_instances() == len(files)
        (work / "empty.json").write_text("{}")
        env = {**_env(), "THERATWIN_PACS_USER": server.user, "THERATWIN_PACS_PASSWORD": server.password,
               "THERATWIN_CONFIG": str(work / "empty.json")}
        out = work / "out"
        proc = server.run([sys.executable, "-m", "theratwin", "cohort", "--pacs", server.dicomweb_url,
                           "--query", f"PatientID={PACS_PATIENT}", "--config", str(cohort_input / "theratwin-config.json"),
                           "--out", str(out), "--workers", "1", "-q"], env=env, timeout=900)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert server.password not in proc.stdout + proc.stderr + (out / "cohort.json").read_text()
    finally:
        server.close()
    rows = read_table_csv(out / "cohort-table.csv")
    local = [r for r in read_table_csv(local_run / "cohort-table.csv") if r["patient"] == PACS_PATIENT]
    assert rows and rows == local
    assert sorted(p.name for p in (out / "pacs-input").iterdir()) == [PACS_PATIENT]


def _demo_config(root: Path):
    from theratwin.pipeline import PipelineConfig

    return PipelineConfig.from_dict(json.loads((root / "theratwin-config.json").read_text()))
