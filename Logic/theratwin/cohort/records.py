"""What a cohort run is made of: its folder layout, default stages and the record of a run (shared by the runner,
the table, the report and the priors fit without importing each other)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._version import __version__

__all__ = ["COHORT_STAGES", "TASK_FILE", "ERROR_FILE", "PATIENTS_DIR", "CohortRun"]

#: Stages a cohort runs by default: the numbers. Per-patient reports and DICOM/FHIR objects are opt-in
#: (``--stages``) — an archive re-analysis rarely wants thousands of them, and they cost a third of the time.
COHORT_STAGES: tuple[str, ...] = ("registration", "kinetics", "dosimetry", "radiobiology", "twin")
TASK_FILE = "cohort-task.json"
ERROR_FILE = "cohort-error.txt"
PATIENTS_DIR = "patients"


@dataclass
class CohortRun:
    """What a cohort run did: counts, per-patient records and the files written."""

    out_dir: Path
    records: dict[str, dict[str, Any]]
    computed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    cluster: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def done(self) -> list[str]:
        """Keys of the patients whose run finished, sorted."""
        return sorted(k for k, r in self.records.items() if r.get("status") == "done")

    @property
    def failed(self) -> list[str]:
        """Keys of the patients whose run failed (or did not finish), sorted."""
        return sorted(k for k, r in self.records.items() if r.get("status") != "done")

    def describe(self) -> str:
        """A summary for the CLI: patients done and failed (with each failure's error), and where the table
        and the report are."""
        lines = [f"TheraTwin {__version__} cohort — research use only",
                 f"{len(self.records)} patients: {len(self.done)} done, {len(self.failed)} failed "
                 f"({len(self.computed)} run now, {len(self.skipped)} already done or failed before)"]
        for k in self.failed:
            lines.append(f"  failed {k}: {self.records[k].get('error')}")
        lines.append(f"table: {self.outputs.get('table_csv')}, report: {self.outputs.get('report_html')}")
        return "\n".join(lines)
