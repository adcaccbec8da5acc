"""DIMSE side of :class:`theratwin.dicom.pacs.PacsClient`: C-STORE, C-FIND and C-GET (PS3.4, PS3.7) with
pynetdicom.

One association is opened on first use and reused for every C-STORE of a push. Status codes (PS3.4 B.2.3):
0x0000 success and 0xB000/0xB006/0xB007 warnings count as stored once a C-FIND on the same association
finds the instance; any other status means this instance was
rejected (:class:`PermanentFailure`); a refused or aborted association means the PACS is unreachable now
(:class:`StopDelivery`). DIMSE has no password: access control is by AE title and, with ``dimse+tls://``,
by TLS (certificates verified unless the settings say otherwise; a refused certificate is named).

Network limits (:mod:`theratwin._http`): ``connect_timeout_s`` bounds the TCP connection, ``read_timeout_s``
the ACSE, DIMSE and network timeouts, and ``total_timeout_s`` one instance's store and check: when it is up,
the association is aborted (a watchdog) and the push stops with the outbox keeping the rest.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    CTImageStorage,
    EncapsulatedPDFStorage,
    EnhancedPETImageStorage,
    EnhancedSRStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    NuclearMedicineImageStorage,
    ParametricMapStorage,
    PositronEmissionTomographyImageStorage,
    RTDoseStorage,
    RTStructureSetStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)
from pynetdicom import AE, build_role, evt

from .._files import atomic_path
from .._http import Deadline, tls_problem
from .outbox import PermanentFailure, StopDelivery
from .pacs_settings import PacsCredentials, PacsEndpoint, PacsSettings

__all__ = ["DimseConnection"]

_OK_STATUS = {0x0000, 0xB000, 0xB006, 0xB007}
# Study Root Query/Retrieve Information Model FIND and GET (PS3.4 C.6.2, Table B.5-1)
StudyRootQueryRetrieveInformationModelFind = "1.2.840.10008.5.1.4.1.2.2.1"
StudyRootQueryRetrieveInformationModelGet = "1.2.840.10008.5.1.4.1.2.2.3"
#: Storage classes accepted during C-GET (what TheraTwin reads and writes).
_GET_STORAGE = [CTImageStorage, NuclearMedicineImageStorage, PositronEmissionTomographyImageStorage, EnhancedPETImageStorage,
                SegmentationStorage, RTDoseStorage, RTStructureSetStorage, Comprehensive3DSRStorage,
                ComprehensiveSRStorage, EnhancedSRStorage, EncapsulatedPDFStorage, ParametricMapStorage,
                SecondaryCaptureImageStorage]
#: Storage classes proposed for C-STORE (the same: results plus the images they derive from).
_STORE_CLASSES = _GET_STORAGE


class DimseConnection:
    """DIMSE access to one remote AE."""

    def __init__(self, endpoint: PacsEndpoint, credentials: PacsCredentials, settings: PacsSettings) -> None:
        self.endpoint = endpoint
        self.settings = settings
        self._assoc: Any = None

    # -- plumbing ----------------------------------------------------------------------------------------------
    def _tls(self) -> tuple[ssl.SSLContext, str] | None:
        if not self.endpoint.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.settings.ca_bundle)
        if not self.settings.verify_tls:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx, self.endpoint.host

    def _associate(self, ae: AE, **kwargs: Any) -> Any:
        limits = self.settings.limits
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = limits.read_timeout_s
        ae.connection_timeout = limits.connect_timeout_s
        assoc = ae.associate(self.endpoint.host, self.endpoint.port, ae_title=self.endpoint.ae_title,
                             tls_args=self._tls(), **kwargs)
        if not assoc.is_established:
            if self.endpoint.tls and (problem := self._tls_problem()):
                raise StopDelivery(f"{self.endpoint.url}: TLS verification of the PACS failed ({problem}); give the "
                                   "PACS's CA certificate in THERATWIN_PACS_CA_BUNDLE (or \"ca_bundle\" in the config "
                                   "file).")
            if assoc.is_rejected:
                raise StopDelivery(f"{self.endpoint.url}: association rejected by the PACS (check the called AE "
                                   f"title {self.endpoint.ae_title!r} and that the PACS knows ours, "
                                   f"{self.settings.calling_ae_title!r}).")
            raise StopDelivery(f"{self.endpoint.url}: association not established: no answer within "
                               f"{limits.read_timeout_s:g} s, aborted by the PACS, or unreachable within "
                               f"{limits.connect_timeout_s:g} s.")
        return assoc

    def _tls_problem(self) -> str:
        """Why the TLS handshake fails, found by one handshake of our own (pynetdicom only logs it)."""
        tls = self._tls()
        if tls is None:
            return ""
        try:
            with socket.create_connection((self.endpoint.host, self.endpoint.port),
                                          timeout=self.settings.limits.connect_timeout_s) as raw, \
                    tls[0].wrap_socket(raw, server_hostname=tls[1]):
                return ""
        except ssl.SSLError as exc:
            return tls_problem(exc)
        except OSError:
            return ""

    def _watchdog(self, deadline: Deadline) -> threading.Timer:
        """Abort the association when ``deadline`` passes (the total time of one instance)."""

        def abort() -> None:
            assoc = self._assoc
            if assoc is not None and assoc.is_established:
                assoc.abort()

        timer = threading.Timer(max(0.0, deadline.remaining()), abort)
        timer.daemon = True
        timer.start()
        return timer

    def close(self) -> None:
        """Release the association if one is established."""
        if self._assoc is not None and self._assoc.is_established:
            self._assoc.release()
        self._assoc = None

    # -- C-STORE -----------------------------------------------------------------------------------------------
    def store(self, path: Path) -> None:
        """C-STORE the file at ``path``, confirmed by a C-FIND on the same association.

        A failure status (or an unreadable file) raises ``PermanentFailure``; no association, a lost connection
        or the total time limit raises ``StopDelivery``.
        """
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, OSError) as exc:
            raise PermanentFailure(f"{path.name}: not a readable DICOM file ({type(exc).__name__}).") from None
        deadline = Deadline(self.settings.limits.total_timeout_s)
        timer = self._watchdog(deadline)
        try:
            self._store(ds)
        except StopDelivery as exc:
            if deadline.remaining() <= 0:
                raise StopDelivery(f"{self.endpoint.url}: C-STORE of {ds.SOPInstanceUID} stopped after "
                                   f"{deadline.elapsed():.1f} s, the total time limit "
                                   "(THERATWIN_PACS_TOTAL_TIMEOUT_S).") from None
            raise exc
        finally:
            timer.cancel()

    def _store(self, ds: Dataset) -> None:
        if self._assoc is None or not self._assoc.is_established:
            ae = AE(ae_title=self.settings.calling_ae_title)
            for uid in _STORE_CLASSES:
                ae.add_requested_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
            self._assoc = self._associate(ae)
        try:
            status = self._assoc.send_c_store(ds)
        except (RuntimeError, ValueError) as exc:  # no accepted presentation context for this SOP class
            raise PermanentFailure(f"{self.endpoint.url}: cannot send {ds.SOPClassUID} ({exc}).") from None
        if not status:  # empty Dataset: association aborted, timed out or connection lost
            self._assoc = None
            raise StopDelivery(f"{self.endpoint.url}: connection lost during C-STORE.")
        code = int(status.Status)
        if code not in _OK_STATUS:
            raise PermanentFailure(f"{self.endpoint.url}: C-STORE of {ds.SOPInstanceUID} failed with status "
                                   f"0x{code:04X}.")
        # Orthanc 1.10 answers Success to a C-STORE its ReceivedInstanceFilter then drops (seen on this
        # project's test server): confirm with a C-FIND on the same association before counting it delivered
        q = Dataset()
        q.QueryRetrieveLevel = "IMAGE"
        q.StudyInstanceUID = ds.StudyInstanceUID
        q.SeriesInstanceUID = ds.SeriesInstanceUID
        q.SOPInstanceUID = ds.SOPInstanceUID
        found = False
        for st, ident in self._assoc.send_c_find(q, StudyRootQueryRetrieveInformationModelFind):
            if not st:
                self._assoc = None
                raise StopDelivery(f"{self.endpoint.url}: connection lost during the C-FIND check.")
            if st.Status in (0xFF00, 0xFF01) and ident is not None and ident.get("SOPInstanceUID") == ds.SOPInstanceUID:
                found = True
        if not found:
            raise PermanentFailure(f"{self.endpoint.url}: C-STORE of {ds.SOPInstanceUID} was acknowledged but C-FIND "
                                   "does not find it (the PACS dropped or filtered it).")

    # -- C-FIND ------------------------------------------------------------------------------------------------
    def _find(self, query: Dataset) -> list[Dataset]:
        ae = AE(ae_title=self.settings.calling_ae_title)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = self._associate(ae)
        found = []
        try:
            for status, ident in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
                if not status:
                    raise StopDelivery(f"{self.endpoint.url}: connection lost during C-FIND.")
                if status.Status in (0xFF00, 0xFF01) and ident is not None:
                    found.append(ident)
                elif status.Status not in (0x0000, 0xFF00, 0xFF01):
                    raise PermanentFailure(f"{self.endpoint.url}: C-FIND failed with status 0x{status.Status:04X}.")
        finally:
            assoc.release()
        return found

    def find_studies(self, *, patient_id: str | None, study_uid: str | None) -> Iterator[dict[str, str]]:
        """C-FIND at STUDY level by ``PatientID`` and/or ``StudyInstanceUID``; yields ``{StudyInstanceUID,
        PatientID, StudyDate, StudyDescription}``."""
        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.StudyInstanceUID = study_uid or ""
        q.PatientID = patient_id or ""
        q.StudyDate = ""
        q.StudyDescription = ""
        for ident in self._find(q):
            yield {k: str(ident.get(k, "")) for k in ("StudyInstanceUID", "PatientID", "StudyDate", "StudyDescription")}

    def instance_uids(self, study_uid: str) -> Iterator[str]:
        """C-FIND at IMAGE level in study ``study_uid``; yields the SOP Instance UIDs."""
        q = Dataset()
        q.QueryRetrieveLevel = "IMAGE"
        q.StudyInstanceUID = study_uid
        q.SeriesInstanceUID = ""
        q.SOPInstanceUID = ""
        for ident in self._find(q):
            yield str(ident.SOPInstanceUID)

    # -- C-GET -------------------------------------------------------------------------------------------------
    def fetch_study(self, study_uid: str, dest: Path) -> Iterator[Path]:
        """C-GET of study ``study_uid``; each instance received is written to ``dest/<SOPInstanceUID>.dcm``
        (atomically) and its path yielded."""
        written: list[Path] = []

        def on_store(event: Any) -> int:
            ds = event.dataset
            ds.file_meta = event.file_meta
            path = dest / f"{ds.SOPInstanceUID}.dcm"
            with atomic_path(path) as tmp:
                ds.save_as(tmp, enforce_file_format=True)
            written.append(path)
            return 0x0000

        ae = AE(ae_title=self.settings.calling_ae_title)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        for uid in _GET_STORAGE:
            ae.add_requested_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        roles = [build_role(uid, scp_role=True) for uid in _GET_STORAGE]
        assoc = self._associate(ae, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.StudyInstanceUID = study_uid
        try:
            for status, _ident in assoc.send_c_get(q, StudyRootQueryRetrieveInformationModelGet):
                if not status:
                    raise StopDelivery(f"{self.endpoint.url}: connection lost during C-GET.")
                if status.Status not in (0x0000, 0xFF00, 0xB000):
                    raise PermanentFailure(f"{self.endpoint.url}: C-GET failed with status 0x{status.Status:04X}.")
        finally:
            assoc.release()
        yield from written
