"""Network limits shared by the DICOMweb, DIMSE and FHIR clients: deadlines, one retry policy, TLS messages.

Three limits bound every operation (one instance stored, one transaction, one query), retries included:

``connect_timeout_s``
    Longest wait for a connection (TCP and TLS handshake, DIMSE association).
``read_timeout_s``
    Longest silence while waiting for an answer.
``total_timeout_s``
    Longest time the whole operation may take, whatever the server does: a server that trickles one byte
    every few seconds never trips a read timeout, so :class:`DeadlineSession` shuts the connection down when
    this time is up (a watchdog), and no retry starts after it.

Answers 429, 408 and 500/502/503/504 and lost connections are retried by :class:`RetryPolicy` (the same for every
protocol): at most ``max_attempts`` tries, waits doubling from ``retry_wait_s`` (or the server's
``Retry-After``), never past the total time. Then the caller reports one clear line and the outbox keeps the item.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import requests

from .errors import ConfigurationError

__all__ = ["NetworkLimits", "Deadline", "DeadlineExceeded", "RetryPolicy", "RETRY_STATUSES", "DeadlineSession",
           "tls_problem", "retry_after_s"]

log = logging.getLogger(__name__)

#: HTTP answers worth trying again: request timeout, too many requests, and the transient server errors.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class NetworkLimits:
    """Deadlines and retries of one destination (see the module docstring); times in s."""

    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    total_timeout_s: float = 120.0
    max_attempts: int = 3
    retry_wait_s: float = 0.5

    def __post_init__(self) -> None:
        for name in ("connect_timeout_s", "read_timeout_s", "total_timeout_s"):
            if not float(getattr(self, name)) > 0:
                raise ConfigurationError(f"Network limit {name} must be a positive number of seconds; got "
                                         f"{getattr(self, name)!r}.")
        if int(self.max_attempts) < 1 or float(self.retry_wait_s) < 0:
            raise ConfigurationError(f"max_attempts must be >= 1 and retry_wait_s >= 0; got {self.max_attempts!r}, "
                                     f"{self.retry_wait_s!r}.")

    def with_env(self, prefix: str, env: Mapping[str, str] | None = None) -> NetworkLimits:
        """These limits overridden by ``{prefix}_CONNECT_TIMEOUT_S``, ``_READ_TIMEOUT_S``, ``_TOTAL_TIMEOUT_S``
        and ``_MAX_ATTEMPTS`` (e.g. ``THERATWIN_PACS_TOTAL_TIMEOUT_S=120``)."""
        env = os.environ if env is None else env
        changes: dict[str, Any] = {}
        for field, cast in (("connect_timeout_s", float), ("read_timeout_s", float), ("total_timeout_s", float),
                            ("max_attempts", int)):
            key = f"{prefix}_{field.upper()}"
            if env.get(key):
                try:
                    changes[field] = cast(env[key])
                except ValueError:
                    raise ConfigurationError(f"{key} must be a number; got {env[key]!r}.") from None
        return replace(self, **changes) if changes else self


class DeadlineExceeded(Exception):
    """An operation ran out of its total time (``total_timeout_s``)."""


class Deadline:
    """The end of an operation's total time."""

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self.start = time.monotonic()
        self.end = self.start + self.seconds

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start


def retry_after_s(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header given as a number (an HTTP date is ignored: None)."""
    if value and value.strip().replace(".", "", 1).isdigit():
        return float(value)
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """One bounded retry policy for every protocol (see the module docstring)."""

    limits: NetworkLimits

    def next_wait(self, attempt: int, deadline: Deadline, retry_after: float | None = None) -> float | None:
        """Seconds to wait before try ``attempt + 1``, or None when no try is left (attempts or total time)."""
        if attempt >= self.limits.max_attempts:
            return None
        wait = retry_after if retry_after is not None else min(self.limits.retry_wait_s * 2 ** (attempt - 1), 30.0)
        if wait >= deadline.remaining():
            return None
        return wait


def tls_problem(exc: BaseException) -> str:
    """The certificate problem inside a TLS error (``certificate has expired``, ``self-signed certificate``,
    ``Hostname mismatch ...``), found in the exception's arguments and causes."""
    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen or e is None:
            continue
        seen.add(id(e))
        if isinstance(e, ssl.SSLCertVerificationError):
            return str(getattr(e, "verify_message", "") or e.reason or e)
        if isinstance(e, BaseException):
            todo.extend([*e.args, e.__cause__, e.__context__, getattr(e, "reason", None)])
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


# -- a requests session whose requests end at their deadline, whatever the server does ----------------------------

_local = threading.local()


class _Watch:
    """The connections of one request, shut down by a timer when the request's time is up."""

    def __init__(self) -> None:
        self.connections: list[Any] = []
        self.fired = False
        self._lock = threading.Lock()

    def add(self, conn: Any) -> None:
        with self._lock:
            self.connections.append(conn)

    def fire(self) -> None:
        with self._lock:
            self.fired = True
            for conn in self.connections:
                sock = getattr(conn, "sock", None)
                if sock is not None:
                    try:  # the plain socket call: unblocks a reader in another thread (TLS sockets too)
                        socket.socket.shutdown(sock, socket.SHUT_RDWR)
                    except OSError:
                        pass


def _watched_connection(base: type) -> type:
    class Watched(base):
        def connect(self) -> None:
            watch = getattr(_local, "watch", None)
            if watch is not None:
                watch.add(self)
            super().connect()

        def request(self, *args: Any, **kwargs: Any) -> Any:
            watch = getattr(_local, "watch", None)
            if watch is not None:
                watch.add(self)
            return super().request(*args, **kwargs)

    Watched.__name__ = f"Watched{base.__name__}"
    return Watched


def _watched_adapter() -> Any:
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    class HTTPPool(HTTPConnectionPool):
        ConnectionCls = _watched_connection(HTTPConnection)

    class HTTPSPool(HTTPSConnectionPool):
        ConnectionCls = _watched_connection(HTTPSConnection)

    class Adapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": HTTPPool, "https": HTTPSPool}

    return Adapter()


class DeadlineSession(requests.Session):
    """A ``requests.Session`` applying :class:`NetworkLimits` to every request.

    Connect and read timeouts go to every request; its total time is the smaller of ``total_timeout_s`` and
    what is left of :attr:`deadline` (the current operation's, set by the caller), after which its connection is
    shut down and :class:`DeadlineExceeded` raised.
    """

    def __init__(self, limits: NetworkLimits) -> None:
        super().__init__()
        self.limits = limits
        self.deadline: Deadline | None = None
        adapter = _watched_adapter()
        self.mount("http://", adapter)
        self.mount("https://", adapter)

    @contextlib.contextmanager
    def operation(self) -> Iterator[Deadline]:
        """One operation (its retries included): the requests made inside share its total time."""
        self.deadline = Deadline(self.limits.total_timeout_s)
        try:
            yield self.deadline
        finally:
            self.deadline = None

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        left = self.deadline.remaining() if self.deadline is not None else self.limits.total_timeout_s
        left = min(left, self.limits.total_timeout_s)
        if left <= 0:
            raise DeadlineExceeded(f"no time left of the total time limit of {self.limits.total_timeout_s:g} s")
        kwargs["timeout"] = (min(self.limits.connect_timeout_s, left), min(self.limits.read_timeout_s, left))
        watch = _Watch()
        outer = getattr(_local, "watch", None)
        _local.watch = watch
        timer = threading.Timer(left, watch.fire)
        timer.daemon = True
        timer.start()
        try:
            return super().request(method, url, *args, **kwargs)
        except requests.RequestException:
            if watch.fired:
                total = self.deadline.seconds if self.deadline is not None else self.limits.total_timeout_s
                raise DeadlineExceeded(f"no complete answer within the total time limit of {total:g} s") from None
            raise
        finally:
            timer.cancel()
            _local.watch = outer
