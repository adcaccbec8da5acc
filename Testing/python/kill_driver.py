"""Run ``theratwin run`` and kill copies of it while it writes each output (used by test_outputs_durable.py).

Usage: ``python kill_driver.py OUT -- <theratwin run arguments>``

This process runs the real command line in-process. Each time an output file is about to be renamed into
place (``theratwin._files._commit``: the temporary file is complete, the target not yet replaced) for the
first time (the run manifest: its first and its sealing write), it forks. The copy is the run at that moment;
this process kills it with SIGKILL (nothing runs), then a second copy with SIGINT (it unwinds through the
pipeline's own interrupt handling and exits 130; what it recorded is undone afterwards, since this process
goes on with the run), and after each kill prints one JSON line
``{"point", "signal", "status"}`` and waits for a line on stdin, so that the test can look at the folder
exactly as that kill left it. Then the run goes on. Linux only (``os.fork``).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import theratwin._files as files
from theratwin.cli import main

OUT = Path(sys.argv[1]).resolve()
ARGS = sys.argv[sys.argv.index("--") + 1:]
ORIGIN = os.getpid()
_commit = files._commit
_seen: set[str] = set()


def _label(tmp: Path, path: Path) -> str | None:
    rel = path.resolve().relative_to(OUT).as_posix() if path.resolve().is_relative_to(OUT) else None
    if rel is None or rel.startswith("outbox/") or rel.startswith(".theratwin-write-test"):
        return None
    if rel == "run-manifest.json":
        status = json.loads(tmp.read_text())["status"]
        if status == "complete":
            return "run-manifest.json (seal)"
        return "run-manifest.json (first mark)" if "run-manifest.json (first mark)" not in _seen else None
    if rel.startswith("dicom/rtdose_"):
        rel = "dicom/rtdose_*"
    elif rel.startswith("dicom/sr_"):
        rel = "dicom/sr_*"
    return None if rel in _seen else rel


def _kill_copies(label: str, tmp: Path) -> None:
    backup = tmp.with_name(tmp.name + ".keep")
    manifest = OUT / "run-manifest.json"
    mark = manifest.read_bytes() if manifest.exists() else None
    for sig in (signal.SIGKILL, signal.SIGINT):
        os.link(tmp, backup)  # the copy's own clean-up removes the shared temporary file
        sys.stdout.flush()
        sys.stderr.flush()
        ready_r, ready_w = os.pipe()
        child = os.fork()
        if child == 0:
            os.close(ready_r)
            # say "ready" only once out of fork's own hooks: a SIGINT inside them would be swallowed
            os.write(ready_w, b"1")
            time.sleep(120)  # the run, stopped in the middle of writing `label`, until the signal arrives
            os._exit(99)
        os.close(ready_w)
        os.read(ready_r, 1)
        os.close(ready_r)
        os.kill(child, sig)
        _, status = os.waitpid(child, 0)
        if not tmp.exists():
            os.replace(backup, tmp)
        else:
            backup.unlink()
        code = os.waitstatus_to_exitcode(status)
        print(json.dumps({"point": label, "signal": sig.name, "status": code}), flush=True)
        sys.stdin.readline()
        if mark is not None and manifest.read_bytes() != mark:  # undo what the interrupted copy recorded
            keep = manifest.with_name(".run-manifest.json.restore")
            keep.write_bytes(mark)
            os.replace(keep, manifest)


def _hooked_commit(tmp: Path, path: Path, **kwargs: object) -> None:
    if os.getpid() == ORIGIN:
        label = _label(tmp, path)
        if label is not None:
            _seen.add(label)
            _kill_copies(label, tmp)
    _commit(tmp, path, **kwargs)


files._commit = _hooked_commit
rc = main(ARGS)
if os.getpid() != ORIGIN:  # a copy that was interrupted and unwound back to here
    sys.stderr.flush()
    os._exit(rc)
print(json.dumps({"point": "end", "status": rc}), flush=True)
