"""A real Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``) for the PACS integration tests.

Orthanc 1.10 cannot bind to loopback only, so when we are root it runs in a private network namespace
(``ip netns``) that has nothing but ``lo``: no other host or container can reach it. The client side of a test
joins the same namespace in a worker thread (``setns(2)`` affects only the calling thread and the threads it
starts, e.g. pynetdicom's association threads), see :meth:`Orthanc.call`; whole commands run there with
:meth:`Orthanc.run` (``ip netns exec``). Without root, Orthanc runs in the host namespace on free ports
(still with authentication on and ``RemoteAccessAllowed`` false).

Authentication is on (HTTP basic, one registered user); DIMSE accepts stores, finds and gets from any AE.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import requests

__all__ = ["Orthanc", "orthanc_available", "DICOMWEB_PLUGIN"]

T = TypeVar("T")

DICOMWEB_PLUGIN_CANDIDATES = (
    Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
    Path("/usr/lib/orthanc/libOrthancDicomWeb.so.1.7"),
)
DICOMWEB_PLUGIN = next((p for p in DICOMWEB_PLUGIN_CANDIDATES if p.exists()), DICOMWEB_PLUGIN_CANDIDATES[0])
_CLONE_NEWNET = 0x40000000  # <linux/sched.h>


def orthanc_available() -> bool:
    return shutil.which("Orthanc") is not None and DICOMWEB_PLUGIN.exists()


def _can_use_netns() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Orthanc:
    """One Orthanc instance with its own storage folder (kept across :meth:`stop`/:meth:`start`).

    Parameters
    ----------
    workdir
        Folder for the configuration, storage and log.
    user, password
        The one registered HTTP user.
    """

    ae_title = "TTPACS"

    def __init__(self, workdir: Path, *, user: str = "ttw", password: str | None = None,
                 extra_config: dict[str, Any] | None = None) -> None:
        self.extra_config = dict(extra_config or {})
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.user = user
        self.password = password or f"pw-{uuid.uuid4().hex}"
        self.netns: str | None = f"ttw-orthanc-{uuid.uuid4().hex[:8]}" if _can_use_netns() else None
        if self.netns:
            self.http_port, self.dicom_port = 8042, 4242  # a private namespace: every port is free
        else:
            self.http_port, self.dicom_port = _free_port(), _free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.log: list[str] = []
        self.startup_s: float | None = None
        self._config = self.workdir / "orthanc.json"
        self._write_config()
        if self.netns:
            subprocess.run(["ip", "netns", "add", self.netns], check=True)
            subprocess.run(["ip", "netns", "exec", self.netns, "ip", "link", "set", "lo", "up"], check=True)

    # -- configuration and lifecycle -----------------------------------------------------------------------------
    #: SeriesDescription marker of instances this Orthanc refuses (to test rejected instances).
    REJECT_MARKER = "TT-REJECT-ME"

    def _write_config(self) -> None:
        # a real refusal by the server: Orthanc's ReceivedInstanceFilter Lua callback (Orthanc Book, "Lua")
        self._lua = self.workdir / "filter.lua"
        self._lua.write_text(
            "function ReceivedInstanceFilter(dicom, origin, info)\n"
            f"  if dicom.SeriesDescription ~= nil and string.find(dicom.SeriesDescription, '{self.REJECT_MARKER}', 1, true)"
            " then\n    return false\n  end\n  return true\nend\n")
        cfg = {
            "Name": "TheraTwinTest",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.ae_title,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.user: self.password},
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Ssl": False},
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True,
            "UnknownSopClassAccepted": True,
            "SaveJobs": False,
            "ConcurrentJobs": 1,
            "HttpThreadsCount": 4,
            "StableAge": 1,
            "LuaScripts": [str(self._lua)],
            **self.extra_config,
        }
        self._config.write_text(json.dumps(cfg, indent=1))

    @property
    def dicomweb_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    @property
    def dimse_url(self) -> str:
        scheme = "dimse+tls" if self.extra_config.get("DicomTlsEnabled") else "dimse"
        return f"{scheme}://{self.ae_title}@127.0.0.1:{self.dicom_port}"

    def _prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns] if self.netns else []

    def start(self, timeout_s: float = 20.0) -> float:
        """Start Orthanc and wait until it logs that it has started; returns the start-up time in s."""
        if self.proc is not None and self.proc.poll() is None:
            return self.startup_s or 0.0
        started = threading.Event()
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([*self._prefix(), "Orthanc", str(self._config)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)

        def pump(stream: Any) -> None:
            for line in stream:
                self.log.append(line.rstrip())
                if "Orthanc has started" in line:
                    started.set()

        threading.Thread(target=pump, args=(self.proc.stdout,), daemon=True).start()
        if not started.wait(timeout_s):
            self.stop()
            raise RuntimeError("Orthanc did not start:\n" + "\n".join(self.log[-30:]))
        self.startup_s = time.perf_counter() - t0
        return self.startup_s

    def stop(self) -> None:
        """Stop Orthanc (SIGTERM, then SIGKILL) and wait for it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def close(self) -> None:
        self.stop()
        if self.netns:
            subprocess.run(["ip", "netns", "del", self.netns], check=False)
            self.netns = None

    # -- running client code next to it ----------------------------------------------------------------------------
    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` in a thread that has joined Orthanc's network namespace."""
        box: dict[str, Any] = {}

        def worker() -> None:
            try:
                if self.netns:
                    libc = ctypes.CDLL("libc.so.6", use_errno=True)
                    fd = os.open(f"/var/run/netns/{self.netns}", os.O_RDONLY)
                    try:
                        if libc.setns(fd, _CLONE_NEWNET) != 0:
                            raise OSError(ctypes.get_errno(), "setns failed")
                    finally:
                        os.close(fd)
                box["value"] = fn(*args, **kwargs)
            except BaseException as exc:  # re-raised in the caller's thread
                box["error"] = exc

        t = threading.Thread(target=worker)
        t.start()
        t.join()
        if "error" in box:
            raise box["error"]
        return box["value"]

    def run(self, cmd: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 120,
            cwd: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command in Orthanc's network namespace."""
        return subprocess.run([*self._prefix(), *cmd], capture_output=True, text=True, env=env, timeout=timeout,
                              cwd=cwd)

    # -- independent views of what Orthanc holds (its REST API and plain DICOMweb, not TheraTwin code) ------------
    def rest(self, path: str) -> Any:
        def get() -> Any:
            r = requests.get(f"http://127.0.0.1:{self.http_port}{path}", auth=(self.user, self.password), timeout=10)
            r.raise_for_status()
            return r.json()

        return self.call(get)

    def count_instances(self) -> int:
        return int(self.rest("/statistics")["CountInstances"])

    def qido_instances(self, study_uid: str) -> list[str]:
        """SOP Instance UIDs of a study by a plain QIDO-RS request (DICOM JSON tag 00080018)."""

        def get() -> list[str]:
            r = requests.get(f"{self.dicomweb_url}/studies/{study_uid}/instances", auth=(self.user, self.password),
                             headers={"Accept": "application/dicom+json"}, timeout=10)
            if r.status_code == 204:
                return []
            r.raise_for_status()
            return [a["00080018"]["Value"][0] for a in r.json()]

        return self.call(get)
