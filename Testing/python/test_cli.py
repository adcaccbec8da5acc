"""The command line: --help everywhere, one-line errors with a non-zero exit on bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest

from theratwin.cli import main


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "theratwin", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("cmd", [[], ["demo"], ["run"], ["push"], ["web"], ["info"]])
def test_help_on_every_command(cmd: list[str]) -> None:
    proc = _run(*cmd, "--help")
    assert proc.returncode == 0
    assert "usage: theratwin" in proc.stdout


def test_info_lists_nuclides() -> None:
    proc = _run("info")
    assert proc.returncode == 0, proc.stderr
    assert "Lu-177: T1/2 = 159.528 h" in proc.stdout


def test_run_on_missing_folder_is_one_line_error(tmp_path) -> None:
    proc = _run("run", "--input", str(tmp_path / "nope"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("theratwin: error:"), proc.stderr
    assert "nope" in lines[0]
    assert "Traceback" not in proc.stderr


def test_run_on_folder_without_dicom_is_one_line_error(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("not DICOM")
    proc = _run("run", "--input", str(tmp_path), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert str(tmp_path) in proc.stderr


def test_bad_config_file_is_reported(tmp_path, capsys) -> None:
    cfg = tmp_path / "cfg.json"
    cfg.write_text('{"stagez": []}')
    (tmp_path / "in").mkdir()
    rc = main(["run", "--input", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--config", str(cfg), "-q"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "cfg.json" in err and "stagez" in err


def test_push_without_target_is_refused(tmp_path, capsys) -> None:
    rc = main(["push", str(tmp_path)])
    assert rc == 2
    assert "--pacs" in capsys.readouterr().err


def test_web_without_its_extra_says_how_to_install_it(capsys) -> None:
    """The core environment has no trame-slicer: one line naming the extra, not a traceback (the page itself is
    tested in .venv-web, Testing/web)."""
    assert main(["web", "--demo"]) == 2
    err = capsys.readouterr().err
    assert "needs the web extra" in err and "theratwin[web]" in err and len(err.strip().splitlines()) == 1


def test_web_refuses_a_non_loopback_address_without_the_flag(capsys, monkeypatch) -> None:
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "Web"))  # the shell, not its dependencies
    assert main(["web", "--host", "0.0.0.0"]) == 2
    assert "--allow-remote" in capsys.readouterr().err
