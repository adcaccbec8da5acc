"""Fuzz the reader and the pipeline with damaged real-layout studies (see ``fuzz_support``).

2000 cases of single-file and folder damage on two multi-file studies (an NM SPECT and a PET slice series, each with
CT slices and a SEG), each read and run through the fast pipeline stages (one in 100 also through ``theratwin
run``): zero tracebacks, zero hangs, every refusal one printable line naming a file of the study, and zero accepted
runs whose numbers differ from the undamaged run without a warning. A larger run is in
``Testing/benchmarks/test_bench_fuzz.py``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import fuzz_support as fz
import pytest

from theratwin.dicom import read_study
from theratwin.errors import TheraTwinError

N_CASES = 2000
SEED = 20260105


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory):
    """A scratch folder in memory when the system has one (thousands of rewrites), else a temporary folder."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        with tempfile.TemporaryDirectory(dir=shm, prefix="theratwin-fuzz-") as d:
            yield Path(d)
    else:  # pragma: no cover - systems without /dev/shm
        yield tmp_path_factory.mktemp("fuzz")


def test_fuzz_reader_and_pipeline(fuzz_dir: Path) -> None:
    studies = fz.make_studies(fuzz_dir)
    for s in studies:  # the undamaged studies read and give numbers
        assert len(s.baseline) == 2 and all(t > 0 and d > 0 for t, d in s.baseline.values())
    rep = fz.run(studies, N_CASES, SEED, cli_every=100)
    print(rep.line())
    assert rep.cases == N_CASES
    bad = {k: rep.outcomes[k] for k in ("wrong", "traceback", "hang", "bad_message")}
    assert not any(bad.values()), f"{bad}:\n" + "\n".join(rep.findings[:20])
    # the mutations reach every branch: refusals, unchanged results and folder damage all occur
    assert rep.outcomes["refused"] > N_CASES // 4 and rep.outcomes["same"] > N_CASES // 10
    assert rep.kinds["folder"] > N_CASES // 10 and rep.kinds["via CLI"] >= N_CASES // 100


@pytest.mark.parametrize("size", [0, 1, 127, 128, 131, 132, 200])
def test_tiny_files_are_refused_cleanly(tmp_path: Path, size: int) -> None:
    (tmp_path / "x.dcm").write_bytes(b"\x00" * max(size - 4, 0) + (b"DICM" if size >= 132 else b"")[: size])
    with pytest.raises(TheraTwinError) as info:
        read_study(tmp_path)
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)
