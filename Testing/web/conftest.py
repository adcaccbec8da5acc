"""Fixtures of the web shell's tests: a real Orthanc, ``theratwin web`` as a separate process, and Debian's
headless chromium driven by Playwright (``executable_path``; Playwright's own browser download is never used).

They run in ``.venv-web`` (``.venv-web/bin/python -m pytest Testing/web``). As root, Orthanc runs in a private
network namespace (it cannot bind to loopback only, see ``Testing/python/servers/orthanc.py``); the main thread
joins that namespace for the module, so the web server and the browser, which it starts, live there too: the
three talk over that namespace's loopback and nothing outside can reach any of them.

Screenshots and the measured figures (time to the first image, to a whole run from the page, server memory) go to
``out/web-test/`` (or ``$THERATWIN_WEB_ARTIFACTS``).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "Testing" / "python"))
sys.path.insert(0, str(ROOT / "Modules"))

pytest.importorskip("trame_slicer", reason="run in .venv-web (pip install 'theratwin[web]')")
playwright_sync = pytest.importorskip("playwright.sync_api", reason="run in .venv-web (pip install playwright)")

from servers.orthanc import Orthanc, orthanc_available  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("THERATWIN_WEB_ARTIFACTS", ROOT / "out" / "web-test"))
_CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def in_network_namespace(name: str | None) -> Iterator[None]:
    """Move the calling thread into the named network namespace (``ip netns``) and back afterwards; processes
    and threads it starts meanwhile stay in that namespace."""
    if name is None:
        yield
        return
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(target, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name} failed")
        yield
    finally:
        libc.setns(home, _CLONE_NEWNET)
        os.close(target)
        os.close(home)


class WebServer:
    """``python -m theratwin web ...`` as a subprocess; its URL is read from the line it prints when ready."""

    def __init__(self, args: list[str], out_dir: Path, env: dict[str, str] | None = None) -> None:
        self.out_dir = out_dir
        self.log_path = out_dir.parent / f"{out_dir.name}-server.log"
        full_env = dict(os.environ, **(env or {}))
        full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "Logic"), str(ROOT / "Web"), str(ROOT / "Modules"),
                                                  full_env.get("PYTHONPATH", "")])
        self.started = time.perf_counter()
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "theratwin", "web", "--port", "0", "--out", str(out_dir),
                                      *args], stdout=subprocess.PIPE, stderr=self._log, text=True, env=full_env)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.proc.stdout], daemon=True).start()
        self.url = ""
        deadline = time.monotonic() + 120
        while not self.url and time.monotonic() < deadline:
            try:
                match = re.search(r"(http://\S+/)", lines.get(timeout=1))
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if match:
                self.url = match.group(1)
        if not self.url:
            self.stop()
            raise RuntimeError("theratwin web did not start:\n" + self.log_path.read_text()[-3000:])

    def memory_MB(self) -> dict[str, float]:
        """Resident memory now and at its peak (VmRSS, VmHWM of /proc/PID/status), in MB."""
        fields = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024.0
        return {"rss_MB": round(fields["VmRSS"], 1), "peak_rss_MB": round(fields["VmHWM"], 1)}

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
        self._log.close()


class Figures:
    """Measured figures, written to ``ARTIFACTS/figures.json`` as they come."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def __setitem__(self, key: str, value: Any) -> None:
        self.values[key] = value
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "figures.json").write_text(json.dumps(self.values, indent=2))
        print(f"\n[web figure] {key} = {value}")


@pytest.fixture(scope="session")
def figures() -> Figures:
    return Figures()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    if not orthanc_available():
        pytest.skip("Orthanc with the DICOMweb plugin is not installed (scripts/bootstrap.sh all installs it)")
    server = Orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def namespace(orthanc: Orthanc) -> Iterator[str | None]:
    """This thread (and so the web server and the browser started from it) in Orthanc's network namespace."""
    with in_network_namespace(orthanc.netns):
        yield orthanc.netns


@pytest.fixture(scope="module")
def browser_netns() -> str | None:
    """The network namespace the browser starts in; a module whose servers live in one overrides this."""
    return None


@pytest.fixture(scope="module")
def browser(browser_netns: str | None) -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed (scripts/bootstrap.sh all installs it)")
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield b
        finally:
            b.close()


def copy_tree(src: Path, dst: Path, *, keep: Any = None) -> Path:
    """Copy a folder (files filtered by ``keep(path)``)."""
    for path in sorted(src.rglob("*")):
        if path.is_file() and (keep is None or keep(path)):
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    dst.mkdir(parents=True, exist_ok=True)
    return dst


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    """On a failure, keep a screenshot of the page as an artefact (what the browser showed then)."""
    outcome = yield
    report = outcome.get_result()
    page = getattr(item, "funcargs", {}).get("page")
    if report.when == "call" and report.failed and page is not None:
        with contextlib.suppress(Exception):
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"failed-{item.name}.png"))
