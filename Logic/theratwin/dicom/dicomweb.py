"""DICOMweb side of :class:`theratwin.dicom.pacs.PacsClient`: STOW-RS, QIDO-RS, WADO-RS (PS3.18).

Instances are stored one request each, so the outbox can account for every instance separately, and each
acknowledged instance is looked up by QIDO-RS before it counts as delivered. Each request runs under the
network limits of :mod:`theratwin._http` (connect, read and total time; HTTP 408/429/5xx and lost connections
retried by its one bounded policy; dicomweb-client's own retries are off). Errors are mapped onto the outbox's
two kinds: :class:`PermanentFailure` (this instance was rejected: HTTP 4xx other than 401/403/408/429, or a
Failed SOP Sequence in the STOW-RS response, PS3.18 10.5.3) and :class:`StopDelivery` (the server is down,
overloaded, too slow, refuses our credentials or its certificate is not trusted: nothing else will get
through now), each with one line saying what happened and how often it was tried.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.errors import InvalidDicomError

from .._files import atomic_path
from .._http import (
    RETRY_STATUSES,
    Deadline,
    DeadlineExceeded,
    DeadlineSession,
    RetryPolicy,
    retry_after_s,
    tls_problem,
)
from .outbox import PermanentFailure, StopDelivery
from .pacs_settings import PacsCredentials, PacsEndpoint, PacsSettings

__all__ = ["DicomWebConnection"]

log = logging.getLogger(__name__)
T = TypeVar("T")


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
        self.limits = settings.limits
        self._policy = RetryPolicy(self.limits)
        session = DeadlineSession(self.limits)
        session.verify = settings.ca_bundle or settings.verify_tls
        if credentials.token:
            session.headers["Authorization"] = f"Bearer {credentials.token}"
        elif credentials.user:
            session.auth = requests.auth.HTTPBasicAuth(credentials.user, credentials.password)
        self._session = session
        self.client = DICOMwebClient(url=endpoint.url, session=session, timeout=settings.timeout_s)
        # one retry policy for every protocol (theratwin._http); dicomweb-client's own would end in a RetryError
        self.client.set_http_retry_params(retry=False)

    def close(self) -> None:
        """Close the HTTP session (its pooled connections)."""
        self._session.close()

    def _call(self, what: str, fn: Callable[..., T], **kwargs: Any) -> T:
        """``fn(**kwargs)`` under the total time limit, retried by the policy; errors mapped for the outbox."""
        with self._session.operation() as deadline:
            attempt = 0
            while True:
                attempt += 1
                try:
                    return fn(**kwargs)
                except requests.HTTPError as exc:
                    code = exc.response.status_code if exc.response is not None else 0
                    after = retry_after_s(exc.response.headers.get("Retry-After")) if exc.response is not None else None
                    wait = self._policy.next_wait(attempt, deadline, after) if code in RETRY_STATUSES else None
                    if wait is None:
                        raise self._http_error(exc, what, attempt, deadline) from None
                    log.info("%s: %s answered HTTP %d; try %d in %.2f s", self.endpoint.url, what, code, attempt + 1, wait)
                except requests.exceptions.SSLError as exc:  # a certificate problem does not go away by retrying
                    raise StopDelivery(
                        f"{self.endpoint.url}: TLS verification of the PACS failed ({tls_problem(exc)}); give the "
                        "PACS's CA certificate in THERATWIN_PACS_CA_BUNDLE (or \"ca_bundle\" in the config file)."
                    ) from None
                except DeadlineExceeded as exc:
                    raise StopDelivery(f"{self.endpoint.url}: {what} stopped after {deadline.elapsed():.1f} s: {exc} "
                                       "(THERATWIN_PACS_TOTAL_TIMEOUT_S).") from None
                except (requests.ConnectionError, requests.Timeout) as exc:
                    wait = self._policy.next_wait(attempt, deadline)
                    if wait is None:
                        kind = "no answer in time" if isinstance(exc, requests.Timeout) else "cannot reach the server"
                        raise StopDelivery(f"{self.endpoint.url}: {what}: {kind} ({type(exc).__name__}); tried "
                                           f"{attempt} time(s) in {deadline.elapsed():.1f} s.") from None
                    log.info("%s: %s: %s; try %d in %.2f s", self.endpoint.url, what, type(exc).__name__, attempt + 1,
                             wait)
                time.sleep(wait)

    def _http_error(self, exc: requests.HTTPError, what: str, attempts: int, deadline: Deadline) -> Exception:
        resp = exc.response
        code = resp.status_code if resp is not None else 0
        reason = f" ({resp.reason})" if resp is not None and resp.reason else ""
        msg = f"{self.endpoint.url}: {what} failed with HTTP {code}{reason}"
        if code in (401, 403):
            return StopDelivery(msg + " (authentication refused: check THERATWIN_PACS_USER/PASSWORD or TOKEN)")
        if code in RETRY_STATUSES:
            return StopDelivery(f"{msg}, {attempts} time(s) in {deadline.elapsed():.1f} s: the server is overloaded "
                                "or down.")
        if code >= 500:
            return StopDelivery(msg + ".")
        return PermanentFailure(msg + ".")

    def store(self, path: Path) -> None:
        """STOW-RS the file at ``path``; a ``FailedSOPSequence`` entry for it is a ``PermanentFailure``, an
        unreachable server or refused credentials ``StopDelivery``."""
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, OSError) as exc:
            raise PermanentFailure(f"{path.name}: not a readable DICOM file ({type(exc).__name__}).") from None
        resp = self._call(f"STOW-RS of {ds.SOPInstanceUID}", self.client.store_instances, datasets=[ds])
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
        return list(self._call(what, fn, **kwargs))

    def find_studies(self, *, patient_id: str | None, study_uid: str | None) -> Iterator[dict[str, str]]:
        """QIDO-RS study search by ``PatientID`` and/or ``StudyInstanceUID``; yields ``{StudyInstanceUID,
        PatientID, StudyDate, StudyDescription}``."""
        filters = {}
        if patient_id:
            filters["PatientID"] = patient_id
        if study_uid:
            filters["StudyInstanceUID"] = study_uid
        for a in self._search(self.client.search_for_studies, "QIDO-RS study search", search_filters=filters):
            yield {"StudyInstanceUID": _value(a, "0020000D"), "PatientID": _value(a, "00100020"),
                   "StudyDate": _value(a, "00080020"), "StudyDescription": _value(a, "00081030")}

    def instance_uids(self, study_uid: str) -> Iterator[str]:
        """QIDO-RS instance search in study ``study_uid``; yields the SOP Instance UIDs."""
        for a in self._search(self.client.search_for_instances, "QIDO-RS instance search",
                              study_instance_uid=study_uid):
            yield _value(a, "00080018")

    def fetch_study(self, study_uid: str, dest: Path) -> Iterator[Path]:
        """WADO-RS retrieve of study ``study_uid``; writes each instance to ``dest/<SOPInstanceUID>.dcm``
        (atomically) and yields its path."""
        datasets = self._call(f"WADO-RS of study {study_uid}", self.client.retrieve_study, study_instance_uid=study_uid)
        for ds in datasets:
            path = dest / f"{ds.SOPInstanceUID}.dcm"
            with atomic_path(path) as tmp:
                ds.save_as(tmp, enforce_file_format=True)
            yield path
