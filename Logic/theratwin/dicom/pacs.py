"""PACS endpoints, credentials and the client used to push results and fetch input studies.

Endpoints
---------
``http(s)://host:port/dicom-web``
    DICOMweb (STOW-RS to store, QIDO-RS to search, WADO-RS to retrieve), via ``dicomweb-client``.
``dimse://AETITLE@host:port`` (``dimse+tls://`` for DICOM over TLS, PS3.15 B.1)
    DIMSE (C-STORE to store, C-FIND to search, C-GET to retrieve), via ``pynetdicom``; our calling AE title
    is ``THERATWIN`` unless configured.

Credentials and settings
------------------------
Never from the command line or the URL (a URL with a user name or password is refused) and never logged or
written to any output. They come from the environment — ``THERATWIN_PACS_USER``, ``THERATWIN_PACS_PASSWORD``
(HTTP basic), ``THERATWIN_PACS_TOKEN`` (HTTP bearer; wins over basic) — or from the ``"pacs"`` object of a
JSON config file (``$THERATWIN_CONFIG``, else ``~/.config/theratwin/config.json``) with the keys ``user``,
``password``, ``token``, ``verify_tls`` (default true), ``ca_bundle``, ``calling_ae_title``, and the network
limits (:mod:`theratwin._http`) ``connect_timeout_s`` (10), ``read_timeout_s`` (30; ``timeout_s`` is the older
name), ``total_timeout_s`` (120, per instance with its retries), ``max_attempts`` (3) and ``retry_wait_ms``
(200). The environment wins over the file (``THERATWIN_PACS_CONNECT_TIMEOUT_S``, ``..._READ_TIMEOUT_S``,
``..._TOTAL_TIMEOUT_S``, ``..._MAX_ATTEMPTS``). TLS certificates are verified unless ``verify_tls`` is false
(``THERATWIN_PACS_CA_BUNDLE`` names a CA bundle for private PKIs).
"""

from __future__ import annotations

from pathlib import Path

from .pacs_settings import (
    PacsConnection,
    PacsCredentials,
    PacsEndpoint,
    PacsSettings,
    config_file_path,
    load_pacs_config,
)

__all__ = ["PacsEndpoint", "PacsCredentials", "PacsSettings", "PacsConnection", "PacsClient", "open_pacs",
           "load_pacs_config", "config_file_path"]


class PacsClient:
    """Store, find and retrieve on one PACS endpoint (DICOMweb or DIMSE).

    Use :func:`open_pacs`; close with :meth:`close` or a ``with`` block.
    """

    def __init__(self, endpoint: PacsEndpoint, credentials: PacsCredentials, settings: PacsSettings) -> None:
        self.endpoint = endpoint
        self._impl: PacsConnection
        if endpoint.kind == "dicomweb":
            from .dicomweb import DicomWebConnection

            self._impl = DicomWebConnection(endpoint, credentials, settings)
        else:
            from .dimse import DimseConnection

            self._impl = DimseConnection(endpoint, credentials, settings)

    def __enter__(self) -> PacsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (also done on leaving a ``with`` block)."""
        self._impl.close()

    def store(self, path: str | Path) -> None:
        """Store one DICOM file. Raises ``PermanentFailure`` if the PACS rejected it, ``StopDelivery`` if
        the PACS cannot be reached or refuses the credentials (see :mod:`theratwin.dicom.outbox`)."""
        self._impl.store(Path(path))

    def find_studies(self, *, patient_id: str | None = None, study_uid: str | None = None) -> list[dict[str, str]]:
        """Studies matching the keys: ``[{"StudyInstanceUID", "PatientID", "StudyDate", "StudyDescription"}]``."""
        return list(self._impl.find_studies(patient_id=patient_id, study_uid=study_uid))

    def instance_uids(self, study_uid: str) -> list[str]:
        """SOP Instance UIDs stored in a study (QIDO-RS instances / C-FIND IMAGE level)."""
        return list(self._impl.instance_uids(study_uid))

    def fetch_study(self, study_uid: str, dest_dir: str | Path) -> list[Path]:
        """Retrieve every instance of a study into ``dest_dir`` (WADO-RS / C-GET); returns the files."""
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        return list(self._impl.fetch_study(study_uid, dest))


def open_pacs(url: str, *, credentials: PacsCredentials | None = None,
              settings: PacsSettings | None = None) -> PacsClient:
    """A :class:`PacsClient` for ``url``; credentials/settings default to :func:`load_pacs_config`."""
    endpoint = PacsEndpoint.parse(url)
    if credentials is None or settings is None:
        c, s = load_pacs_config()
        credentials = credentials or c
        settings = settings or s
    return PacsClient(endpoint, credentials, settings)
