"""What every resource of the FHIR bundle shares: identifiers, datetimes, numbers and the entry builder.

Each resource is created conditionally on a stable identifier (``ifNoneExist``); its ``fullUrl`` is a
``urn:uuid`` UUID v5 of that identifier, so the same results always give the same bundle.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any
from urllib.parse import quote

from .._time import aware, in_zone, wall_clock, zone_assumed
from ..results import Results
from ..study import Study
from .codes import CANONICAL_BASE, IDENTIFIER_BASE, coding, quantity, scheme_system

__all__ = ["ANALYSIS_TAG_SYSTEM", "PREDICTED_TAG", "Analysis", "Builder", "fhir_datetime", "search_token", "sct",
           "finite", "interval", "interval_component"]

_UUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, CANONICAL_BASE)
ANALYSIS_TAG_SYSTEM = f"{IDENTIFIER_BASE}/analysis"
PREDICTED_TAG = {"system": f"{CANONICAL_BASE}/CodeSystem/theratwin", "code": "twin-prediction",
                 "display": "Prediction by the TheraTwin digital twin"}


def fhir_datetime(dt: datetime, tz: tzinfo | None) -> str:
    """ISO datetime with the data's offset (FHIR dateTime with a time SHALL carry one).

    The study's datetimes are aware (:mod:`theratwin._time`); ``tz`` (the ``fhir_export`` option ``timezone``)
    only replaces an offset that was *assumed* (files without a zone), reading their wall-clock time in it.
    """
    dt = aware(dt)
    if tz is not None and zone_assumed(dt):
        dt = in_zone(wall_clock(dt), tz)
    return dt.isoformat()


def _urn(system: str, value: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_UUID_NAMESPACE, system + '|' + value)}"


def search_token(system: str, value: str) -> str:
    return f"{quote(system, safe=':/')}|{quote(value, safe='')}"


def sct(concept: Any) -> dict[str, str]:
    return {"system": scheme_system(concept.scheme), "code": concept.value, "display": concept.meaning}


def finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f == f and f not in (float("inf"), float("-inf")) else None


def interval(v: Any) -> tuple[float | None, float | None, float | None]:
    """(central, low, high) from a number or a dict such as {"mean_Gy", "low_Gy", "high_Gy"}."""
    if isinstance(v, Mapping):
        central = low = high = None
        for k, x in v.items():
            k = str(k).lower()
            if central is None and k.startswith(("mean", "median", "value", "estimate")):
                central = finite(x)
            elif low is None and k.startswith(("low", "lower", "p05", "q05")):
                low = finite(x)
            elif high is None and k.startswith(("high", "upper", "p95", "q95")):
                high = finite(x)
        return central, low, high
    return finite(v), None, None


def interval_component(code: str, unit: str, low: float, high: float, level: float | None) -> dict[str, Any]:
    display = coding(code)["display"].lower()
    if level is None or abs(level - 0.9) < 1e-9:
        head, text = coding("prediction-interval-90"), f"90 % prediction interval of {display}"
    else:
        head, text = coding("prediction-interval"), f"{100 * level:g} % prediction interval of {display}"
    return {"code": {"coding": [head], "text": text},
            "valueRange": {"low": quantity(low, unit), "high": quantity(high, unit)}}


class Builder:
    """Accumulates entries; each has a fullUrl, a resource and a conditional-create request."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def add(self, resource: dict[str, Any], *, system: str, value: str, if_none_exist: str | None = None) -> str:
        full_url = _urn(system, value)
        if_none_exist = if_none_exist or f"identifier={search_token(system, value)}"
        rt = resource["resourceType"]
        self.entries.append({
            "fullUrl": full_url,
            "resource": resource,
            "request": {"method": "POST", "url": rt, "ifNoneExist": if_none_exist},
        })
        return full_url


@dataclass
class Analysis:
    """One analysis being exported: its results, study, keys, times and the bundle's entries so far.

    Attributes
    ----------
    key
        The analysis key (see :func:`theratwin.fhir.bundle.analysis_key`).
    tag
        The ``meta.tag`` marking every result resource of the analysis.
    issued
        When the results were computed (FHIR instant, UTC when the results carry no zone).
    tz
        Zone of the study's naive DICOM datetimes (None: this computer's zone).
    patient_ref
        ``fullUrl`` of the Patient entry.
    """

    results: Results
    study: Study
    builder: Builder
    key: str
    tag: dict[str, str]
    issued: str
    tz: tzinfo | None
    patient_ref: str = ""
