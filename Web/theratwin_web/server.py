"""Starting the web server: offscreen rendering, where it listens, and who may connect.

Loopback (127.0.0.1) by default: only the machine's own users reach it. Any other address needs
``allow_remote=True`` *and* an access token (environment ``THERATWIN_WEB_TOKEN``, at least 16 characters): every
HTTP request and the WebSocket must then carry it, as the ``?token=`` of the first URL (the server answers with a
cookie, ``HttpOnly``, ``SameSite=Strict``) or as ``Authorization: Bearer <token>``. The token never appears in a
log or on the page. Put a TLS reverse proxy in front for anything beyond a trusted network.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import sys
from pathlib import Path
from typing import Any

from theratwin.errors import ConfigurationError

__all__ = ["serve", "check_binding", "TOKEN_ENV", "MIN_TOKEN_LENGTH", "configure_rendering"]

log = logging.getLogger(__name__)

TOKEN_ENV = "THERATWIN_WEB_TOKEN"
MIN_TOKEN_LENGTH = 16
_COOKIE = "theratwin_web_token"


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_binding(host: str, *, allow_remote: bool, env: dict[str, str] | None = None) -> str | None:
    """The access token the server must require, or None on loopback.

    Raises
    ------
    ConfigurationError
        For a non-loopback address without ``allow_remote``, or without a token of at least 16 characters.
    """
    if _is_loopback(host):
        return None
    if not allow_remote:
        raise ConfigurationError(f"--host {host} is not a loopback address: the page would be reachable from other "
                                 "machines. Add --allow-remote and set an access token in THERATWIN_WEB_TOKEN.")
    token = (env if env is not None else os.environ).get(TOKEN_ENV, "")
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigurationError(f"--allow-remote needs an access token of at least {MIN_TOKEN_LENGTH} characters in "
                                 f"the environment variable {TOKEN_ENV} (e.g. from 'openssl rand -hex 24').")
    return token


def _auth_middleware(token: str) -> Any:
    """aiohttp middleware: 401 unless the request carries the token (query, cookie or bearer header)."""
    from aiohttp import web

    expected = token.encode()

    def ok(value: str | None) -> bool:
        return bool(value) and hmac.compare_digest(str(value).encode(), expected)

    @web.middleware
    async def middleware(request: Any, handler: Any) -> Any:
        header = request.headers.get("Authorization", "")
        bearer = header[7:] if header.startswith("Bearer ") else None
        query = request.query.get("token")
        if ok(request.cookies.get(_COOKIE)) or ok(bearer):
            return await handler(request)
        if ok(query):
            response = await handler(request)
            response.set_cookie(_COOKIE, token, httponly=True, samesite="Strict", secure=request.secure)
            return response
        return web.Response(status=401, text="TheraTwin web: open the link with its access token (?token=...).\n")

    return middleware


class _Redact(logging.Filter):
    """Keeps the access token out of the access log (its first URL carries it as ``?token=``)."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if self.secret in text:
            record.msg, record.args = text.replace(self.secret, "***"), ()
        return True


def configure_rendering() -> None:
    """Offscreen rendering without a display: VTK's EGL window unless the environment chose one (e.g. OSMesa)."""
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


def serve(*, out_dir: str | Path | None = None, input_dir: str | None = None, results_dir: str | None = None,
          demo: bool = False, pacs_url: str | None = None, fhir_url: str | None = None,
          host: str = "127.0.0.1", port: int = 0, allow_remote: bool = False, data_root: str | None = None,
          cache_dir: str | None = None, idle_timeout_s: int = 0) -> None:
    """Serve the TheraTwin page until interrupted (blocking). See ``theratwin web --help``.

    Prints ``TheraTwin web: http://HOST:PORT/`` on stdout once it listens (with ``port=0`` the system picks a
    free port).
    """
    token = check_binding(host, allow_remote=allow_remote)
    configure_rendering()
    try:
        import slicer  # noqa: F401 - slicer-core, pinned by trame-slicer
        import trame_slicer  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(f"'theratwin web' needs the web extra ({exc.name} is missing in this environment): "
                                 "pip install 'theratwin[web]' (scripts/bootstrap.sh all makes .venv-web).") from None
    from trame.app import get_server

    from .app import TheraTwinWebApp, WebOptions
    from .session import temporary_out_dir

    out = Path(out_dir) if out_dir else temporary_out_dir()
    server = get_server("theratwin", client_type="vue3")
    app = TheraTwinWebApp(WebOptions(out_dir=out, input_dir=input_dir, results_dir=results_dir, demo=demo,
                                     pacs_url=pacs_url, fhir_url=fhir_url, data_root=data_root,
                                     cache_dir=cache_dir), server)
    if token is not None:
        logging.getLogger("aiohttp.access").addFilter(_Redact(token))

        @server.controller.add("on_server_bind")
        def _protect(wslink_server: Any) -> None:
            wslink_server.app.middlewares.append(_auth_middleware(token))

    @server.controller.add("on_server_ready")
    def _announce(**_: Any) -> None:
        shown = host if ":" not in host else f"[{host}]"
        print(f"TheraTwin web: http://{shown}:{server.port}/ (research use only; outputs in {out})", flush=True)

    # trame reads sys.argv for its own options: give it none, everything it needs is passed here
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        server.start(host=host, port=port, open_browser=False, show_connection_info=False, timeout=idle_timeout_s,
                     disable_logging=True)
    finally:
        sys.argv = argv
        app.timings.clear()
