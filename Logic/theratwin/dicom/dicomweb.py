"""DICOMweb side of :class:`theratwin.dicom.pacs.PacsClient`: STOW-RS, QIDO-RS, WADO-RS (PS3.18).

Instances are stored one request each, so the outbox can account for every instance separately, and each
acknowledged instance is looked up by QIDO-RS before it counts as delivered. Errors are
mapped onto the outbox's two kinds: :class:`PermanentFailure` (this instance was rejected: HTTP 4xx other than
401/403/408/429, or a Failed SOP Sequence in the STOW-RS response, PS3.18 10.5.3) and :class:`StopDelivery`
(the server is down, overloaded, or refuses our credentials: nothing else will get through now).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.errors import InvalidDicomError

from .outbox import PermanentFailure, StopDelivery
from .pacs import PacsCredentials, PacsEndpoint, PacsSettings

__all__ = ["DicomWebConnection"]

_RETRY_LATER = {401, 403, 408, 429}


def _value(attrs: dict[str, Any], tag: str) -> str:
    v = attrs.get(tag, {}).get("Value", [""])
    first = v[0] if v else ""
    if isinstance(first, dict):  # PN
        return str(first.get("Alphabetic", ""))
    return str(first)


class DicomWebConnection:
    """A DICOMweb session with authentication and TLS settings applied."""

    def __init__(self, endpoint: PacsEndpoint, credentials: PacsCredentials, settings: PacsSettings) -> None:
        self.endpoint = endpoint
        session = requests.Session()
        session.verify = settings.ca_bundle or settings.verify_tls
        if credentials.token:
            session.headers["Authorization"] = f"Bearer {credentials.token}"
        elif credentials.user:
            session.auth = requests.auth.HTTPBasicAuth(credentials.user, credentials.password)
        self._session = session
        self.client = DICOMwebClient(url=endpoint.url, session=session, timeout=settings.timeout_s)
        # dicomweb-client's default (5 attempts, 1 s exponential back-off) holds a push ~30 s on a dead server;
        # the outbox retries later anyway
        self.client.set_http_retry_params(retry=settings.max_attempts > 1, max_attempts=settings.max_attempts,
                                          wait_exponential_multiplier=settings.retry_wait_ms)

    def close(self) -> None:
        self._session.close()

    def _http_error(self, exc: requests.HTTPError, what: str) -> Exception:
        code = exc.response.status_code if exc.response is not None else 0
        msg = f"{self.endpoint.url}: {what} failed with HTTP {code}"
        if code in (401, 403):
            return StopDelivery(msg + " (authentication refused: check THERATWIN_PACS_USER/PASSWORD or TOKEN)")
        if code in _RETRY_LATER or code >= 500:
            return StopDelivery(msg)
        return PermanentFailure(msg)

    def store(self, path: Path) -> None:
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, OSError) as exc:
            raise PermanentFailure(f"{path.name}: not a readable DICOM file ({type(exc).__name__}).") from None
        try:
            resp = self.client.store_instances([ds])
        except requests.HTTPError as exc:
            raise self._http_error(exc, f"STOW-RS of {ds.SOPInstanceUID}") from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise StopDelivery(f"{self.endpoint.url}: cannot reach the server ({type(exc).__name__}).") from None
        failed = [it for it in getattr(resp, "FailedSOPSequence", [])
                  if it.get("ReferencedSOPInstanceUID") == ds.SOPInstanceUID]
        if failed:
            reason = failed[0].get("FailureReason", "unknown")
            raise PermanentFailure(f"{self.endpoint.url}: instance {ds.SOPInstanceUID} rejected "
                                   f"(FailureReason {reason}).")
        # Orthanc 1.10's DICOMweb plugin acknowledges (Referenced SOP Sequence) instances that its own
        # ReceivedInstanceFilter then drops (seen on this project's test server), so an acknowledgement is
        # confirmed by a QIDO-RS look-up before the outbox lets the instance go.
        found = self._search(self.client.search_for_instances, "QIDO-RS check of a stored instance",
                             study_instance_uid=str(ds.StudyInstanceUID),
                             search_filters={"SOPInstanceUID": str(ds.SOPInstanceUID)})
        if not any(_value(a, "00080018") == ds.SOPInstanceUID for a in found):
            raise PermanentFailure(f"{self.endpoint.url}: instance {ds.SOPInstanceUID} was acknowledged by STOW-RS "
                                   "but QIDO-RS does not find it (the server dropped or filtered it).")

    def _search(self, fn: Any, what: str, **kwargs: Any) -> list[dict[str, Any]]:
        try:
            return list(fn(**kwargs))
        except requests.HTTPError as exc:
            raise self._http_error(exc, what) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise StopDelivery(f"{self.endpoint.url}: cannot reach the server ({type(exc).__name__}).") from None

    def find_studies(self, *, patient_id: str | None, study_uid: str | None) -> Iterator[dict[str, str]]:
        filters = {}
        if patient_id:
            filters["PatientID"] = patient_id
        if study_uid:
            filters["StudyInstanceUID"] = study_uid
        for a in self._search(self.client.search_for_studies, "QIDO-RS study search", search_filters=filters):
            yield {"StudyInstanceUID": _value(a, "0020000D"), "PatientID": _value(a, "00100020"),
                   "StudyDate": _value(a, "00080020"), "StudyDescription": _value(a, "00081030")}

    def instance_uids(self, study_uid: str) -> Iterator[str]:
        for a in self._search(self.client.search_for_instances, "QIDO-RS instance search",
                              study_instance_uid=study_uid):
            yield _value(a, "00080018")

    def fetch_study(self, study_uid: str, dest: Path) -> Iterator[Path]:
        try:
            datasets = self.client.retrieve_study(study_uid)
        except requests.HTTPError as exc:
            raise self._http_error(exc, f"WADO-RS of study {study_uid}") from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise StopDelivery(f"{self.endpoint.url}: cannot reach the server ({type(exc).__name__}).") from None
        for ds in datasets:
            path = dest / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            yield path
