"""PACS endpoints, credentials and settings, and the protocol of a connection to a PACS.

Kept apart from the client (:mod:`theratwin.dicom.pacs`) so that the DICOMweb and DIMSE connections
(:mod:`~theratwin.dicom.dicomweb`, :mod:`~theratwin.dicom.dimse`) and the client that chooses between them all
import this module, and none imports another. Where credentials and settings come from is described in
:mod:`theratwin.dicom.pacs`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from .._http import NetworkLimits
from ..errors import ConfigurationError

log = logging.getLogger(__name__)

__all__ = ["PacsEndpoint", "PacsCredentials", "PacsSettings", "PacsConnection", "load_pacs_config",
           "config_file_path"]


@dataclass(frozen=True)
class PacsEndpoint:
    """A parsed PACS URL (without credentials).

    Attributes
    ----------
    kind
        ``"dicomweb"`` or ``"dimse"``.
    url
        The URL as given (safe to show and to record: it carries no credentials).
    host, port
        Network address.
    ae_title
        Called AE title (DIMSE only).
    tls
        Whether the connection uses TLS.
    """

    kind: Literal["dicomweb", "dimse"]
    url: str
    host: str
    port: int
    ae_title: str = ""
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> PacsEndpoint:
        """Parse ``http(s)://host:port/path`` or ``dimse://AET@host:port`` (see the module docstring)."""
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError:
            raise ConfigurationError("PACS URL is malformed; use http(s)://host:port/dicom-web or "
                                     "dimse://AETITLE@host:port.") from None
        scheme = parts.scheme.lower()
        host = parts.hostname or ""
        if scheme in ("http", "https"):
            if parts.username or parts.password:
                raise ConfigurationError(
                    f"The PACS URL for {host} contains a user name or password; remove them from the URL and set "
                    "THERATWIN_PACS_USER/THERATWIN_PACS_PASSWORD (or THERATWIN_PACS_TOKEN) in the environment.")
            if not host:
                raise ConfigurationError(f"PACS URL {url!r} has no host.")
            clean = f"{scheme}://{host}{':' + str(port) if port else ''}{parts.path.rstrip('/')}"
            return cls("dicomweb", clean, host, port or (443 if scheme == "https" else 80), tls=scheme == "https")
        if scheme in ("dimse", "dimse+tls"):
            if parts.password:
                raise ConfigurationError(f"The DIMSE URL for {host} contains a password; DIMSE URLs take the form "
                                         "dimse://AETITLE@host:port.")
            aet = parts.username or ""
            if not aet or len(aet) > 16 or not host or port is None:
                raise ConfigurationError(f"DIMSE URL {url!r} must be dimse://AETITLE@host:port (AE title of 1-16 "
                                         "characters).")
            return cls("dimse", f"{scheme}://{aet}@{host}:{port}", host, port, aet, tls=scheme == "dimse+tls")
        raise ConfigurationError(f"Unsupported PACS URL scheme {scheme!r}; use http(s)://host:port/dicom-web or "
                                 "dimse://AETITLE@host:port.")

    @property
    def destination(self) -> str:
        """A credential-free key naming this destination (used in the outbox)."""
        return f"{self.kind}:{self.url}"


@dataclass(frozen=True)
class PacsCredentials:
    """Secrets for a PACS; their ``repr`` never shows them."""

    user: str = ""
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)

    def __repr__(self) -> str:
        return (f"PacsCredentials(user={self.user!r}, password={'***' if self.password else ''!r}, "
                f"token={'***' if self.token else ''!r})")

    __str__ = __repr__

    def secrets(self) -> list[str]:
        """The secret strings (so tests and log filters can check they never appear anywhere)."""
        return [s for s in (self.password, self.token) if s]


@dataclass(frozen=True)
class PacsSettings:
    """Connection settings (no secrets)."""

    verify_tls: bool = True
    ca_bundle: str | None = None
    #: Longest silence while waiting for an answer, s (the read timeout; DIMSE: ACSE, DIMSE and network timeouts).
    timeout_s: float = 30.0
    calling_ae_title: str = "THERATWIN"
    #: Requests are tried this often on lost connections and HTTP 408/429/5xx, waiting ``retry_wait_ms`` doubled
    #: each time; then the push stops and the outbox keeps the rest for later.
    max_attempts: int = 3
    retry_wait_ms: int = 200
    connect_timeout_s: float = 10.0
    #: Longest time one instance may take (store, check, retries), whatever the PACS does.
    total_timeout_s: float = 120.0

    @property
    def limits(self) -> NetworkLimits:
        """These settings as the network limits the clients apply."""
        return NetworkLimits(connect_timeout_s=self.connect_timeout_s, read_timeout_s=self.timeout_s,
                             total_timeout_s=self.total_timeout_s, max_attempts=self.max_attempts,
                             retry_wait_s=self.retry_wait_ms / 1000.0)


def config_file_path(env: Mapping[str, str] | None = None) -> Path:
    """The JSON config file: ``$THERATWIN_CONFIG`` or ``~/.config/theratwin/config.json``."""
    env = os.environ if env is None else env
    if env.get("THERATWIN_CONFIG"):
        return Path(env["THERATWIN_CONFIG"])
    return Path.home() / ".config" / "theratwin" / "config.json"


def _file_section(env: Mapping[str, str]) -> dict[str, Any]:
    path = config_file_path(env)
    if not path.exists():
        if env.get("THERATWIN_CONFIG"):
            raise ConfigurationError(f"{path}: THERATWIN_CONFIG names a file that does not exist.")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigurationError(f"{path}: cannot read the config file ({type(exc).__name__}).") from None
    section = data.get("pacs", {}) if isinstance(data, dict) else {}
    if not isinstance(section, dict):
        raise ConfigurationError(f"{path}: \"pacs\" must be an object.")
    if (section.get("password") or section.get("token")) and path.stat().st_mode & 0o077:
        log.warning("%s holds PACS credentials and can be read by other users; restrict it (chmod 600).", path)
    return section


def load_pacs_config(env: Mapping[str, str] | None = None) -> tuple[PacsCredentials, PacsSettings]:
    """Credentials and settings from the environment and the config file (see the module docstring)."""
    env = os.environ if env is None else env
    f = _file_section(env)
    creds = PacsCredentials(
        user=env.get("THERATWIN_PACS_USER", str(f.get("user", ""))),
        password=env.get("THERATWIN_PACS_PASSWORD", str(f.get("password", ""))),
        token=env.get("THERATWIN_PACS_TOKEN", str(f.get("token", ""))),
    )
    verify = f.get("verify_tls", True)
    if not isinstance(verify, bool):
        raise ConfigurationError(f"{config_file_path(env)}: pacs.verify_tls must be true or false.")
    try:
        limits = NetworkLimits(
            connect_timeout_s=float(f.get("connect_timeout_s", 10.0)),
            read_timeout_s=float(f.get("read_timeout_s", f.get("timeout_s", 30.0))),
            total_timeout_s=float(f.get("total_timeout_s", 120.0)),
            max_attempts=int(f.get("max_attempts", 3)),
        ).with_env("THERATWIN_PACS", env)
        retry_wait_ms = max(0, int(f.get("retry_wait_ms", 200)))
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{config_file_path(env)}: a pacs network setting is not a number ({exc}).") from None
    ca_bundle = env.get("THERATWIN_PACS_CA_BUNDLE", f.get("ca_bundle")) or None
    if ca_bundle and not Path(ca_bundle).is_file():
        raise ConfigurationError(f"THERATWIN_PACS_CA_BUNDLE (or pacs.ca_bundle) names {ca_bundle}, which is not a "
                                 "file; give the PEM file of the PACS's certificate authority.")
    settings = PacsSettings(
        verify_tls=verify,
        ca_bundle=ca_bundle,
        timeout_s=limits.read_timeout_s,
        calling_ae_title=env.get("THERATWIN_PACS_CALLING_AET", str(f.get("calling_ae_title", "THERATWIN"))),
        max_attempts=limits.max_attempts,
        retry_wait_ms=retry_wait_ms,
        connect_timeout_s=limits.connect_timeout_s,
        total_timeout_s=limits.total_timeout_s,
    )
    return creds, settings


class PacsConnection(Protocol):
    """What a connection to one PACS endpoint does (implemented by ``DicomWebConnection`` and
    ``DimseConnection``; :class:`~theratwin.dicom.pacs.PacsClient` chooses one by the URL's scheme).

    ``store`` raises ``PermanentFailure`` when the PACS rejected the object and ``StopDelivery`` when it cannot be
    reached or refuses the credentials (:mod:`theratwin.dicom.outbox`).
    """

    def close(self) -> None:
        """Release the connection (HTTP session or DIMSE association); safe to call twice."""
        ...

    def store(self, path: Path) -> None:
        """Store the DICOM file at ``path``; raises ``PermanentFailure`` (rejected) or ``StopDelivery``
        (unreachable, credentials refused)."""
        ...

    def find_studies(self, *, patient_id: str | None, study_uid: str | None) -> Iterable[dict[str, str]]:
        """Studies matching ``patient_id`` and/or ``study_uid`` (None: any), each as ``{StudyInstanceUID,
        PatientID, StudyDate, StudyDescription}``."""
        ...

    def instance_uids(self, study_uid: str) -> Iterable[str]:
        """SOP Instance UIDs of every instance the PACS holds in study ``study_uid``."""
        ...

    def fetch_study(self, study_uid: str, dest: Path) -> Iterable[Path]:
        """Retrieve every instance of study ``study_uid`` into the folder ``dest``, yielding each file's
        path as it is written."""
        ...
