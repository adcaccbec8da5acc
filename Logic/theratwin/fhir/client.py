"""A small FHIR R4 REST client: transactions, reads and searches, with authentication and retries.

Authentication (from the environment, never from the command line, never logged or written):

* ``THERATWIN_FHIR_TOKEN`` — a bearer token;
* ``THERATWIN_FHIR_USER`` / ``THERATWIN_FHIR_PASSWORD`` — HTTP basic authentication;
* ``THERATWIN_FHIR_CLIENT_ID`` / ``THERATWIN_FHIR_PRIVATE_KEY`` (/ ``THERATWIN_FHIR_TOKEN_URL``, else
  discovered from ``.well-known/smart-configuration``) — SMART backend services
  (:class:`~theratwin.fhir.smart.SmartBackendAuth`).

TLS certificates are verified by default (``THERATWIN_FHIR_CA_BUNDLE`` may name a CA file). Every request runs
under the network limits of :mod:`theratwin._http` (``THERATWIN_FHIR_CONNECT_TIMEOUT_S``, ``..._READ_TIMEOUT_S``,
``..._TOTAL_TIMEOUT_S``); 408, 429 and 5xx answers and connection failures are retried by its one bounded
policy (honouring ``Retry-After``, never past the total time); a transaction retried after a lost answer is
safe because every entry is a conditional create. A refusal is raised as :class:`FhirPushError` carrying the
server's OperationOutcome.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .._http import (
    RETRY_STATUSES,
    Deadline,
    DeadlineExceeded,
    DeadlineSession,
    NetworkLimits,
    RetryPolicy,
    retry_after_s,
    tls_problem,
)
from ..errors import ConfigurationError, PushError
from .smart import SmartBackendAuth

__all__ = ["FhirClient", "FhirAuth", "FhirPushError", "outcome_summary"]

log = logging.getLogger(__name__)

_FHIR_JSON = "application/fhir+json"
_RETRY_STATUSES = RETRY_STATUSES


def outcome_summary(outcome: Any) -> str:
    """One line from an OperationOutcome: ``severity code at expression: text`` per issue."""
    if not isinstance(outcome, Mapping) or outcome.get("resourceType") != "OperationOutcome":
        return ""
    parts = []
    for issue in outcome.get("issue", []) or []:
        text = (issue.get("details") or {}).get("text") or issue.get("diagnostics") or ""
        where = ", ".join(issue.get("expression", []) or issue.get("location", []) or [])
        parts.append(f"{issue.get('severity', '?')} {issue.get('code', '?')}"
                     + (f" at {where}" if where else "") + (f": {text}" if text else ""))
    return "; ".join(parts)


class FhirPushError(PushError):
    """The FHIR server refused a request or could not be reached.

    Attributes
    ----------
    status
        HTTP status (None when the server could not be reached).
    outcome
        The server's OperationOutcome (dict) when it sent one.
    """

    def __init__(self, message: str, *, status: int | None = None, outcome: Any = None,
                 retriable: bool | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome
        self._retriable = retriable

    @property
    def retriable(self) -> bool:
        """True when trying again later may succeed (server unreachable, overloaded, or failing)."""
        if self._retriable is not None:
            return self._retriable
        return self.status is None or self.status in _RETRY_STATUSES


@dataclass
class FhirAuth:
    """Credentials for a FHIR server (one of bearer token, basic, SMART backend services)."""

    token: str | None = field(default=None, repr=False)
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    smart: SmartBackendAuth | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FhirAuth:
        """Read the ``THERATWIN_FHIR_*`` variables (see the module docstring)."""
        e = dict(os.environ if env is None else env)
        user, pw = e.get("THERATWIN_FHIR_USER"), e.get("THERATWIN_FHIR_PASSWORD")
        if bool(user) != bool(pw):
            raise ConfigurationError("Set both THERATWIN_FHIR_USER and THERATWIN_FHIR_PASSWORD, or neither.")
        return cls(token=e.get("THERATWIN_FHIR_TOKEN") or None, user=user or None, password=pw or None,
                   smart=SmartBackendAuth.from_env(e))

    def describe(self) -> str:
        """What kind of authentication is used (no secrets)."""
        if self.smart is not None:
            return f"SMART backend services (client {self.smart.client_id})"
        if self.token:
            return "bearer token"
        if self.user:
            return f"basic ({self.user})"
        return "none"


class FhirClient:
    """FHIR R4 REST client.

    Parameters
    ----------
    base_url
        The server's base URL (``https://ehr.example.org/fhir/R4``).
    auth
        Credentials (default: from the environment, :meth:`FhirAuth.from_env`).
    verify
        TLS verification: True (default), or a CA bundle path. False is refused unless the base URL is
        plain http (where it is moot).
    timeout_s
        Read timeout: longest silence while waiting for an answer, in s (default 30, or
        ``THERATWIN_FHIR_READ_TIMEOUT_S``).
    retries
        How many times a 408/429/5xx answer or a connection failure is retried (default 4, or
        ``THERATWIN_FHIR_RETRIES``).
    backoff_s
        First backoff delay in s; doubled on every retry (capped at 30 s), or the server's Retry-After
        (default 0.5 s, or ``THERATWIN_FHIR_BACKOFF_S``).
    connect_timeout_s, total_timeout_s
        Longest wait for a connection, and longest time one request may take with its retries, in s (default
        10 and 120, or ``THERATWIN_FHIR_CONNECT_TIMEOUT_S`` / ``THERATWIN_FHIR_TOTAL_TIMEOUT_S``).
    """

    def __init__(self, base_url: str, *, auth: FhirAuth | None = None, verify: bool | str | None = None,
                 timeout_s: float | None = None, retries: int | None = None, backoff_s: float | None = None,
                 connect_timeout_s: float | None = None, total_timeout_s: float | None = None) -> None:
        try:
            retries = int(os.environ.get("THERATWIN_FHIR_RETRIES", 4)) if retries is None else retries
            backoff_s = float(os.environ.get("THERATWIN_FHIR_BACKOFF_S", 0.5)) if backoff_s is None else backoff_s
        except ValueError as exc:
            raise ConfigurationError(f"THERATWIN_FHIR_RETRIES / THERATWIN_FHIR_BACKOFF_S must be numbers: {exc}") from exc

        if not base_url.startswith(("http://", "https://")):
            raise ConfigurationError(f"FHIR base URL must start with http:// or https://; got {base_url!r}.")
        parts = urlsplit(base_url)
        if parts.username or parts.password:
            # never repeat the URL here: it holds a secret
            raise ConfigurationError("The FHIR base URL contains user information; give credentials through "
                                     "THERATWIN_FHIR_USER / THERATWIN_FHIR_PASSWORD or THERATWIN_FHIR_TOKEN instead.")
        self.base_url = base_url.rstrip("/")
        self.auth = auth if auth is not None else FhirAuth.from_env()
        if verify is None:
            verify = os.environ.get("THERATWIN_FHIR_CA_BUNDLE") or True
            if isinstance(verify, str) and not os.path.isfile(verify):
                raise ConfigurationError(f"THERATWIN_FHIR_CA_BUNDLE names {verify}, which is not a file; give the PEM "
                                         "file of the FHIR server's certificate authority.")
        if verify is False and self.base_url.startswith("https://"):
            raise ConfigurationError("TLS verification cannot be switched off for an https FHIR server; "
                                     "give the server's CA bundle (THERATWIN_FHIR_CA_BUNDLE) instead.")
        self.verify = verify
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        env_limits = NetworkLimits().with_env("THERATWIN_FHIR")
        self.limits = NetworkLimits(
            connect_timeout_s=env_limits.connect_timeout_s if connect_timeout_s is None else connect_timeout_s,
            read_timeout_s=env_limits.read_timeout_s if timeout_s is None else timeout_s,
            total_timeout_s=env_limits.total_timeout_s if total_timeout_s is None else total_timeout_s,
            max_attempts=self.retries + 1, retry_wait_s=self.backoff_s)
        self.timeout_s = self.limits.read_timeout_s
        self._policy = RetryPolicy(self.limits)
        self.session = DeadlineSession(self.limits)
        self.session.trust_env = False  # proxies/netrc from the environment must not capture credentials

    def __repr__(self) -> str:
        return f"FhirClient({self.base_url!r}, auth={self.auth.describe()})"

    def close(self) -> None:
        """Close the HTTP connections."""
        self.session.close()

    # ------------------------------------------------------------------------------- HTTP plumbing
    def _headers(self, refresh: bool = False) -> dict[str, str]:
        h = {"Accept": _FHIR_JSON, "Content-Type": f"{_FHIR_JSON}; charset=utf-8"}
        if self.auth.smart is not None:
            self.auth.smart.discover(self.session, self.base_url, verify=self.verify, timeout_s=self.timeout_s)
            if refresh:
                self.auth.smart._token = None
            h["Authorization"] = "Bearer " + self.auth.smart.token(self.session, verify=self.verify,
                                                                  timeout_s=self.timeout_s)
        elif self.auth.token:
            h["Authorization"] = "Bearer " + self.auth.token
        return h

    def request(self, method: str, path: str, *, json_body: Any = None,
                params: Mapping[str, str] | None = None) -> Any:
        """Send one request (with retries); return the parsed JSON answer.

        Raises
        ------
        FhirPushError
            On a refusal (with the OperationOutcome) or when the server stays unreachable.
        """
        import requests

        url = self.base_url + "/" + path.lstrip("/") if path else self.base_url
        basic = (self.auth.user, self.auth.password) if self.auth.user and self.auth.password else None
        refreshed = False
        with self.session.operation() as deadline:
            attempt = 0
            while True:
                attempt += 1
                try:
                    r = self.session.request(method, url, json=json_body, params=params, headers=self._headers(),
                                             auth=basic, verify=self.verify)
                except requests.exceptions.SSLError as exc:
                    # a certificate problem does not go away by retrying
                    raise FhirPushError(
                        f"TLS verification of the FHIR server {self.base_url} failed ({tls_problem(exc)}). Give the "
                        "server's CA certificate in THERATWIN_FHIR_CA_BUNDLE; verification is never switched off.",
                        retriable=False,
                    ) from None
                except DeadlineExceeded as exc:
                    raise FhirPushError(f"FHIR server {self.base_url}: {method} {path or '/'} stopped after "
                                        f"{deadline.elapsed():.1f} s: {exc} (THERATWIN_FHIR_TOTAL_TIMEOUT_S).") from None
                except requests.RequestException as exc:
                    wait = self._policy.next_wait(attempt, deadline)
                    if wait is None:
                        kind = "no answer in time" if isinstance(exc, requests.Timeout) else "unreachable"
                        raise FhirPushError(f"FHIR server {self.base_url} {kind}: tried {attempt} time(s) in "
                                            f"{deadline.elapsed():.1f} s ({type(exc).__name__}).") from None
                    log.info("FHIR %s %s: %s; try %d in %.2f s", method, url, type(exc).__name__, attempt + 1, wait)
                    time.sleep(wait)
                    continue
                if r.status_code == 401 and self.auth.smart is not None and not refreshed:
                    refreshed = True
                    self._headers(refresh=True)
                    continue
                if r.status_code in _RETRY_STATUSES:
                    wait = self._policy.next_wait(attempt, deadline, retry_after_s(r.headers.get("Retry-After")))
                    if wait is not None:
                        log.info("FHIR %s %s: HTTP %d; try %d in %.2f s", method, url, r.status_code, attempt + 1, wait)
                        time.sleep(wait)
                        continue
                return self._answer(r, method, path, attempt, deadline)

    def _answer(self, r: Any, method: str, path: str, attempt: int, deadline: Deadline) -> Any:
        """The parsed JSON of a final answer, or :class:`FhirPushError` for a refusal."""
        try:
            body = r.json() if r.content else None
        except ValueError:
            body = None
        if r.status_code >= 400:
            summary = outcome_summary(body) or (r.text[:300] if r.text else r.reason)
            tries = f" after {attempt} tries in {deadline.elapsed():.1f} s" if r.status_code in _RETRY_STATUSES else ""
            raise FhirPushError(
                f"FHIR server {self.base_url} refused {method} {path or '/'} (HTTP {r.status_code}{tries}): "
                f"{' '.join(str(summary).split())[:300]}",
                status=r.status_code, outcome=body,
            )
        return body

    # --------------------------------------------------------------------------------- operations
    def transaction(self, bundle: Mapping[str, Any]) -> dict[str, Any]:
        """POST a transaction Bundle to the base URL; return the transaction-response Bundle."""
        if bundle.get("type") != "transaction":
            raise ConfigurationError("FhirClient.transaction needs a Bundle of type 'transaction'.")
        resp = self.request("POST", "", json_body=bundle)
        if not isinstance(resp, Mapping) or resp.get("resourceType") != "Bundle":
            raise FhirPushError(f"FHIR server {self.base_url} answered the transaction without a Bundle.")
        return dict(resp)

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        """GET ``[base]/{type}/{id}``."""
        return dict(self.request("GET", f"{resource_type}/{resource_id}"))

    def search(self, resource_type: str, params: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """All resources of one search (following ``next`` links)."""
        out: list[dict[str, Any]] = []
        page = self.request("GET", resource_type, params=dict(params or {}))
        while True:
            out.extend(e["resource"] for e in (page or {}).get("entry", []) if "resource" in e)
            nxt = [ln["url"] for ln in (page or {}).get("link", []) if ln.get("relation") == "next"]
            if not nxt:
                return out
            page = self.request("GET", nxt[0].removeprefix(self.base_url))

    def count(self, resource_type: str, params: Mapping[str, str] | None = None) -> int:
        """Number of matches of a search (``_summary=count``)."""
        body = self.request("GET", resource_type, params={**dict(params or {}), "_summary": "count"})
        return int((body or {}).get("total", 0))
