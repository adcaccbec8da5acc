"""Benchmark-style fuzz run: more cases and more layouts than ``Testing/python/test_fuzz_pipeline.py``.

``THERATWIN_FUZZ_CASES`` cases (default 5000) over four real-layout studies (NM multi-frame, NM single-frame stack,
PET slices, Legacy Converted Enhanced PET, each with CT slices and a SEG), every case read and run through the fast
pipeline stages. Same criteria as the CI test (zero tracebacks, hangs, wrong-but-accepted results and bad
messages); the figure printed is the CPU time per case against the baseline measured in the same run, one
undamaged read + pipeline.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

import fuzz_support as fz  # noqa: E402

LAYOUTS = ("siemens_rwvm", "nm_stack", "pt_start", "pt_enhanced")


def test_fuzz_large_run() -> None:
    n = int(os.environ.get("THERATWIN_FUZZ_CASES", "5000"))
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(dir=shm, prefix="theratwin-fuzz-bench-") as d:
        studies = fz.make_studies(Path(d), LAYOUTS)
        c0 = time.process_time()
        for s in studies:
            fz.run_case(s.root)
        baseline_cpu = (time.process_time() - c0) / len(studies)
        rep = fz.run(studies, n, seed=7, cli_every=250)
    print(rep.line())
    print(f"fuzz benchmark: {rep.cpu_seconds / rep.cases * 1000:.0f} ms CPU per case = "
          f"{rep.cpu_seconds / rep.cases / baseline_cpu:.2f} x one undamaged read + pipeline "
          f"({baseline_cpu * 1000:.0f} ms CPU)")
    bad = {k: rep.outcomes[k] for k in ("wrong", "traceback", "hang", "bad_message")}
    assert not any(bad.values()), f"{bad}:\n" + "\n".join(rep.findings[:30])
    assert rep.cases == n
