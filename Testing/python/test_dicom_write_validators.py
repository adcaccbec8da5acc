"""Every exported RT Dose, SEG and SR passes the validators PACS engineers use: dciodvfy (dicom3tools), dsrdump
(dcmtk) and pixelmed's DicomSRValidator (TID 1500)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from dicom_synth import make_results, make_study

from theratwin.dicom.export import export_dicom

PIXELMED_JARS = [Path("/usr/share/java/pixelmed.jar")]
JDK17_XPATH_LIMITS = ["-Djdk.xml.xpathExprOpLimit=0", "-Djdk.xml.xpathExprGrpLimit=0",
                      "-Djdk.xml.xpathTotalOpLimit=0"]

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("validate")
    study = make_study(out / "input", n_cycles=2)
    rep = export_dicom(make_results(study), out)
    return out, rep


def _errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip().startswith("Error")]


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
def test_dciodvfy_finds_no_error(exported) -> None:
    out, rep = exported
    files = [*rep.rtdose, *rep.seg, *rep.sr]
    assert len(files) == 10  # 6 RT Dose, 1 SEG, 3 SR (cycle 1, cycle 2, predictions)
    for rel in files:
        proc = subprocess.run(["dciodvfy", str(out / rel)], capture_output=True, text=True, timeout=120)
        text = proc.stdout + proc.stderr
        assert proc.returncode == 0 or not _errors(text), text
        assert not _errors(text), f"{rel}:\n{text}"
        iod = text.strip().splitlines()[0]
        assert iod in ("RTDose", "Segmentation", "Comprehensive3DSR"), text  # it recognised the IOD


@pytest.mark.skipif(shutil.which("dsrdump") is None, reason="dcmtk not installed")
def test_dsrdump_reads_sr_without_error(exported) -> None:
    out, rep = exported
    assert len(rep.sr) == 3
    for rel in rep.sr:
        proc = subprocess.run(["dsrdump", str(out / rel)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert not [line for line in proc.stderr.splitlines() if line.startswith(("E:", "F:"))], proc.stderr
        assert "Comprehensive 3D SR Document" in proc.stdout
        assert '"Imaging Measurement Report"' in proc.stdout and "kidneys cycle" in proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(not all(p.exists() for p in PIXELMED_JARS) or shutil.which("java") is None,
                    reason="pixelmed / java not installed")
def test_pixelmed_finds_tid1500_without_error(exported) -> None:
    out, rep = exported
    for rel in rep.sr:
        text = pixelmed_validate(out / rel)
        assert "Found Root Template TID_1500 (MeasurementReport)" in text, text[-3000:]
        assert "Root Template Validation Complete" in text, text[-3000:]
        assert not [line for line in text.splitlines() if "Error:" in line], text[-5000:]


def pixelmed_validate(path: Path) -> str:
    """Output of pixelmed's DicomSRValidator (it exits 0 whatever it finds, so callers read "Error:")."""
    cp = ":".join(str(p) for p in PIXELMED_JARS)
    # -Xmx: the validator holds the SR as an XML tree and needs ~5 GB for 850 content items
    proc = subprocess.run(["java", "-Xmx8g", *JDK17_XPATH_LIMITS, "-cp", cp, "com.pixelmed.validate.DicomSRValidator",
                           str(path)], capture_output=True, text=True, timeout=900)
    return proc.stdout + proc.stderr
