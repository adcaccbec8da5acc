"""Cohorts: the pipeline over many patients on Dask, the cohort table and report, synthetic cohorts, and a site's
own population priors fitted to its cohort (research use).

- :func:`run_cohort` — one Dask task per patient (embedded ``LocalCluster`` or an existing scheduler), resumable,
  failures recorded; writes ``cohort-table.parquet``/``.csv`` and ``cohort-report.html``.
- :func:`build_demo_cohort` — synthetic patients drawn from a known population, as DICOM with their truth.

Dask and pyarrow are the optional extra ``theratwin[cohort]``; this package imports them only when it runs.
"""

from .demo import DemoCohort, build_demo_cohort
from .population import DEMO_COHORT_POPULATION, Population, StructurePopulation
from .runner import COHORT_STAGES, CohortRun, PatientSource, discover_patients, pacs_patients, run_cohort
from .table import COLUMNS, read_table_csv

__all__ = [
    "run_cohort",
    "CohortRun",
    "PatientSource",
    "COHORT_STAGES",
    "discover_patients",
    "pacs_patients",
    "build_demo_cohort",
    "DemoCohort",
    "Population",
    "StructurePopulation",
    "DEMO_COHORT_POPULATION",
    "COLUMNS",
    "read_table_csv",
]
