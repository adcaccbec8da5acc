"""Who may connect: loopback by default; another address only with --allow-remote and an access token, which
every request (page, assets, WebSocket) must then carry. Checked on a real server: inside a private network
namespace (root), where listening on every address still reaches nothing but that namespace's loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
import requests

from conftest import ROOT, WebServer, in_network_namespace

ENV = {"PYTHONPATH": os.pathsep.join(str(ROOT / d) for d in ("Logic", "Web", "Modules"))}


def _web(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "theratwin", "web", "--port", "0", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **ENV, **(env or {})})


def test_non_loopback_address_needs_the_flag() -> None:
    proc = _web("--host", "0.0.0.0")
    assert proc.returncode == 2
    assert "not a loopback address" in proc.stderr and "--allow-remote" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_remote_access_needs_a_long_token() -> None:
    env = {k: v for k, v in os.environ.items() if k != "THERATWIN_WEB_TOKEN"}
    proc = subprocess.run([sys.executable, "-m", "theratwin", "web", "--host", "0.0.0.0", "--allow-remote"],
                          capture_output=True, text=True, timeout=120, env={**env, **ENV})
    assert proc.returncode == 2 and "THERATWIN_WEB_TOKEN" in proc.stderr
    short = _web("--host", "0.0.0.0", "--allow-remote", env={"THERATWIN_WEB_TOKEN": "short"})
    assert short.returncode == 2 and "at least 16" in short.stderr


@pytest.fixture(scope="module")
def private_netns():
    if os.geteuid() != 0:
        pytest.skip("needs root for a private network namespace (CI runs as root)")
    name = f"ttw-web-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
    try:
        with in_network_namespace(name):
            yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture(scope="module")
def browser_netns(private_netns):
    return private_netns


def test_token_guards_every_request(private_netns, browser, tmp_path) -> None:
    token = uuid.uuid4().hex
    server = WebServer(["--host", "0.0.0.0", "--allow-remote"], tmp_path / "out", env={"THERATWIN_WEB_TOKEN": token})
    try:
        base = server.url.replace("0.0.0.0", "127.0.0.1")
        assert requests.get(base, timeout=10).status_code == 401
        assert requests.get(base + "index.html", params={"token": "x" * 32}, timeout=10).status_code == 401
        assert requests.get(base + "index.html", headers={"Authorization": f"Bearer {token}"}, timeout=10).ok
        session = requests.Session()
        first = session.get(base + "index.html", params={"token": token}, timeout=10)
        assert first.ok and "HttpOnly" in first.headers.get("Set-Cookie", "")
        assert session.get(base + "index.html", timeout=10).ok  # the cookie carries it from then on
        # a browser opening the link with the token gets the working page (the WebSocket carries the cookie)
        context = browser.new_context()
        page = context.new_page()
        page.goto(base + f"?token={token}")
        page.wait_for_selector("#tt-load-demo", timeout=60_000)
        context.close()
        assert token not in server.log_path.read_text()  # never logged
    finally:
        server.stop()
