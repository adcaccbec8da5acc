"""Shared builders for the FHIR tests: a synthetic study and results, DICOM output files, the test server.

(Named test_fhir_* so that it lives with the FHIR tests; it holds no tests itself.)
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import subprocess
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import theratwin as tt
from theratwin.study import SourceRef

REPO = Path(__file__).resolve().parents[2]
SERVER_DIR = REPO / "Testing" / "fhir_server"

STUDY_UID = "1.2.826.0.1.3680043.8.498.11111111111111111111"  # cycle 1 imaging, reference CT, TheraTwin outputs
STUDY_UID_2 = "1.2.826.0.1.3680043.8.498.22222222222222222222"  # cycle 2 imaging session
RTDOSE_CLASS = "1.2.840.10008.5.1.4.1.1.481.2"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR


def make_study(patient_id: str = "TT-FHIR-1") -> tt.Study:
    """Two cycles of 177Lu-PSMA-617 (cycle 1: 4 time points, cycle 2: 1), three structures, DICOM sources."""
    geom = tt.Geometry(shape=(6, 8, 10), spacing_mm=(4.8, 4.8, 4.8))
    cycles = []
    for n, (start, hours) in enumerate([(datetime(2026, 3, 2, 9, 0), (4, 24, 48, 168)),
                                        (datetime(2026, 4, 27, 9, 30), (48,))], start=1):
        adm = tt.Administration("PSMA-617", "Lu-177", 7400.0 if n == 1 else 7300.0, start)
        tps = []
        for h in hours:
            img = tt.ImageVolume.from_geometry(np.ones(geom.shape, np.float32), geom, "Bq/mL")
            src = SourceRef(study_uid=STUDY_UID if n == 1 else STUDY_UID_2, series_uid=generate_uid(), modality="NM",
                            sop_instance_uids=(generate_uid(),), sop_class_uid="1.2.840.10008.5.1.4.1.1.20",
                            series_description=f"SPECT cycle {n} {h} h")
            tps.append(tt.TimePoint(img, start + timedelta(hours=h), 1200.0, source=src))
        cycles.append(tt.Cycle(n, adm, tps))
    masks = {k: np.zeros(geom.shape, bool) for k in ("kidneys", "parotid_glands", "lesion_bone_1")}
    masks["kidneys"][1:3, 2:4, 2:5] = True
    masks["parotid_glands"][4, 5, 5:7] = True
    masks["lesion_bone_1"][3, 1, 1] = True
    seg = tt.Segmentation(geom, [tt.Structure(k, i + 1) for i, k in enumerate(masks)], masks)
    patient = tt.Patient(patient_id, "Doe^Jane^Q", date(1955, 6, 1), "F")
    return tt.Study(patient, cycles, seg, study_uid=STUDY_UID)


# per-structure numbers of the synthetic results (cycle 1; cycle 2 scales them by 0.9)
NUMBERS = {
    "kidneys": dict(mean_dose_Gy=3.7, bed_Gy=4.6, eqd2_Gy=3.8, tia_MBq_h=51000.0, tia_sd_MBq_h=2500.0,
                    effective_half_life_h=38.5, mass_g=310.0),
    "parotid_glands": dict(mean_dose_Gy=4.1, bed_Gy=5.2, eqd2_Gy=4.0, tia_MBq_h=14000.0, tia_sd_MBq_h=900.0,
                           effective_half_life_h=30.1, mass_g=48.0),
    "lesion_bone_1": dict(mean_dose_Gy=21.5, bed_Gy=27.0, eqd2_Gy=18.5, tia_MBq_h=9000.0, tia_sd_MBq_h=700.0,
                          effective_half_life_h=95.0, mass_g=12.0),
}


def _iv(mean: float, low: float, high: float) -> dict[str, float]:
    """An interval as the twin writes it (``theratwin.twin.twin.Interval.to_dict``)."""
    return {"mean": mean, "sd": (high - low) / 3.29, "median": mean, "low": low, "high": high, "level": 0.9}


def make_results(out_dir: Path | None = None, *, patient_id: str = "TT-FHIR-1",
                 with_dicom: bool = True) -> tt.Results:
    """Results with doses, a twin block, methods, and (when ``out_dir``) DICOM outputs and reports."""
    study = make_study(patient_id)
    res = tt.Results.for_study(study)
    res.created = datetime(2026, 5, 1, 12, 0, 0).astimezone()
    for n, scale in ((1, 1.0), (2, 0.9)):
        for name, vals in NUMBERS.items():
            sr = res.cycles[n].structure(name)
            for k, v in vals.items():
                setattr(sr, k, v * scale if k != "mass_g" else v)
            sr.tia_method = "model_average" if n == 1 else "twin"
            sr.dose_method = "dvk"
            sr.dvh_metrics = {"Dmean_Gy": sr.mean_dose_Gy, "Dmin_Gy": 0.5 * sr.mean_dose_Gy,
                              "Dmax_Gy": 2.0 * sr.mean_dose_Gy, "D2_Gy": 1.8 * sr.mean_dose_Gy,
                              "D50_Gy": sr.mean_dose_Gy, "D98_Gy": 0.6 * sr.mean_dose_Gy}
        # cumulative BED of the kidneys against the 40 Gy limit (as the radiobiology stage records it)
        kid = res.cycles[n].structure("kidneys")
        kid.cumulative_bed_Gy = 4.6 if n == 1 else 4.6 + 4.6 * 0.9
        kid.limit = {"quantity": "BED", "value_Gy": 40.0 if n == 1 else 8.0, "risk_factors": False,
                     "reference": "Bodei 2008 EJNMMI 35:1847"}
    res.cycles[2].structure("kidneys").estimated_by_twin = {"tia_MBq_h": 45900.0, "sd": 2000.0,
                                                            "low": 42600.0, "high": 49200.0}
    # the layout of the twin stage's output (theratwin.twin.stage: Prediction/Recommendation.to_dict, forecast)
    res.twin = {
        "prediction": {"cycle": 3, "administered_MBq": 7400.0, "interval_level": 0.9, "structures": {
            "kidneys": {"structure": "kidneys",
                        "tia_MBq_h": _iv(50000.0, 44000.0, 56000.0), "dose_Gy": _iv(3.6, 3.1, 4.2),
                        "bed_Gy": _iv(4.5, 3.8, 5.3), "cumulative_dose_Gy": _iv(10.5, 9.6, 11.5),
                        "cumulative_bed_Gy": _iv(13.3, 12.0, 14.8), "cumulative_eqd2_Gy": _iv(10.9, 9.8, 12.1),
                        "dose_per_tia_Gy_per_MBq_h": 7.2e-5, "alpha_beta_Gy": 2.6, "repair_half_time_h": 2.8},
            "lesion_bone_1": {"structure": "lesion_bone_1", "dose_Gy": _iv(20.0, 15.0, 26.0)},
        }},
        "recommendation": {"cycle": 3, "administered_MBq": 8200.0, "confidence": 0.9,
                           "limiting_structure": "kidneys", "status": "ok",
                           "remaining_cycles_at_standard_activity": 2, "standard_activity_MBq": 7400.0},
        "forecast": {
            "cycle": 3,
            "toxicity": {"kidneys": {"model": {"type": "lkb", "name": "lkb_kidney_burman1991", "td50_Gy": 28.0,
                                               "m": 0.1, "quantity": "eqd2", "reference": "Burman 1991"},
                                     "probability": _iv(0.03, 0.01, 0.07)}},
            "response": {"model": {"type": "logistic", "name": "logistic_psma_violet2019", "d50_Gy": 10.0},
                         "probability": _iv(0.72, 0.55, 0.85),
                         "quantity": "per-cycle whole-tumour mean absorbed dose"},
        },
    }
    res.record_method("kinetics", "AICc model averaging", {"models": "mono,biexp"}, ["Kletting 2013"])
    res.record_method("dosimetry", "DVK convolution", {"voxel_mm": 4.8}, ["MIRD Pamphlet 17"])
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "report.html").write_text("<html><body><h1>TheraTwin report</h1></body></html>")
        res.outputs["report_html"] = "report.html"
        if with_dicom:
            res.outputs["dicom"] = write_dicom_outputs(out_dir / "dicom")
    return res


def write_dicom_outputs(folder: Path) -> list[str]:
    """Three header-only DICOM objects (RT Dose, SEG, SR) in the study, as the DICOM stage would list them."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, (modality, cls, desc) in enumerate([("RTDOSE", RTDOSE_CLASS, "Dose cycle 1"),
                                               ("SEG", SEG_CLASS, "Structures"),
                                               ("SR", SR_CLASS, "Dosimetry SR")], start=1):
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = cls
        ds.SOPClassUID = cls
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID = STUDY_UID
        ds.SeriesInstanceUID = generate_uid()
        ds.Modality = modality
        ds.SeriesNumber = 900 + i
        ds.InstanceNumber = 1
        ds.SeriesDescription = desc
        ds.PatientID = "TT-FHIR-1"
        name = f"{modality.lower()}.dcm"
        ds.save_as(folder / name, enforce_file_format=True)
        names.append(f"dicom/{name}")
    return names


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (it is its own CA): (cert.pem, key.pem)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "theratwin-test-fhir")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _strip_server_fields(resource: dict) -> dict:
    r = copy.deepcopy(resource)
    r.pop("id", None)
    meta = r.pop("meta", {}) or {}
    if meta.get("tag"):
        r["meta"] = {"tag": meta["tag"]}
    return r


def _replace_refs(v: Any, mapping: dict[str, str]) -> Any:
    if isinstance(v, dict):
        return {k: (mapping.get(x, x) if k == "reference" else _replace_refs(x, mapping)) for k, x in v.items()}
    if isinstance(v, list):
        return [_replace_refs(x, mapping) for x in v]
    return v


def assert_stored_as_sent(client: Any, bundle: dict, response: dict) -> None:
    """Read every resource of a transaction back and compare it with what was sent.

    The server may add ``id`` and ``meta.versionId/lastUpdated`` and must resolve each ``urn:uuid`` to the
    stored resource (mapping taken from the transaction response, which is in request order); everything
    else must be identical (JSON round trip of what was sent).
    """
    mapping = {e["fullUrl"]: r["response"]["location"].split("/_history")[0]
               for e, r in zip(bundle["entry"], response["entry"], strict=True)}
    for entry in bundle["entry"]:
        rt, rid = mapping[entry["fullUrl"]].split("/")
        stored = client.read(rt, rid)
        sent = _replace_refs(entry["resource"], mapping)
        assert _strip_server_fields(stored) == json.loads(json.dumps(sent)), rt


# ------------------------------------------------------------------------------------ test server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FhirTestServer:
    """The Node test server (Testing/fhir_server/server.mjs) as a subprocess on 127.0.0.1."""

    def __init__(self, *args: str, data: Path | None = None, port: int = 0, env: dict[str, str] | None = None,
                 prefix: tuple[str, ...] = ()):
        self.prefix = list(prefix)  # e.g. ("ip", "netns", "exec", NAME): serve inside a network namespace
        self.args = list(args)
        self.data = data
        self.port = port
        self.env = env or {}
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        scheme = "https" if "--tls-cert" in self.args else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def start(self) -> FhirTestServer:
        if not (SERVER_DIR / "node_modules" / "@medplum" / "fhir-router").is_dir():
            raise RuntimeError(f"Run `npm ci` in {SERVER_DIR} first (scripts/bootstrap.sh does).")
        cmd = [*self.prefix, shutil.which("node") or "node", "server.mjs", "--port", str(self.port)]
        if self.data is not None:
            cmd += ["--data", str(self.data)]
        cmd += self.args
        self.proc = subprocess.Popen(cmd, cwd=SERVER_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env={**os.environ, **self.env})
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("LISTENING"):
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"FHIR test server did not start: {line!r} {err[-2000:]}")
        self.port = int(line.split()[1])
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc is not None:
            for s in (self.proc.stdout, self.proc.stderr):
                if s is not None:
                    s.close()

    def wait_exit(self, timeout_s: float = 10.0) -> int | None:
        assert self.proc is not None
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                return self.proc.returncode
            time.sleep(0.05)
        return None

    def __enter__(self) -> FhirTestServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
