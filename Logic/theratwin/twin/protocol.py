"""Treatment protocols: what activities, how often and how many cycles the plan may use.

The twin's plan (:meth:`PatientTwin.plan_treatment <theratwin.twin.twin.PatientTwin.plan_treatment>`) stays
inside a :class:`TreatmentProtocol`: every planned cycle gets an activity between ``min_activity_MBq`` and
``max_activity_MBq`` (or is not given), and no more than ``max_cycles`` cycles are given in total. The
defaults are the labelled regimens; a site sets its own bounds (e.g. the label's reduced activity, or
dosimetry-guided escalation as in its own protocol) with :meth:`TreatmentProtocol.from_dict` or the pipeline
option ``twin.protocol``.

==========================  =================================================================================
radiopharmaceutical         default protocol (source)
==========================  =================================================================================
177Lu-PSMA-617              7.4 GBq ± 10 % every 6 weeks, up to 6 cycles (Pluvicto prescribing information,
                            Novartis 2022: "7.4 GBq (200 mCi ± 10 %)", "every 6 weeks for up to 6 doses";
                            VISION, Sartor O et al. N Engl J Med 2021;385:1091)
177Lu-DOTATATE              7.4 GBq every 8 weeks, 4 cycles (Lutathera prescribing information, 2018; NETTER-1,
                            Strosberg J et al. N Engl J Med 2017;376:125); the ± 10 % band is this module's
                            assumption (the label states no tolerance)
other                       7.4 GBq ± 10 % every 6 weeks, up to 4 cycles (assumption; set your own)
==========================  =================================================================================
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import ConfigurationError

__all__ = ["TreatmentProtocol", "default_protocol", "PLAN_SHAPES"]

#: Plan shapes: the same activity in every remaining cycle (``"equal"``), or front-loaded (``"adapted"``: each
#: cycle as high as keeps the later ones possible at the minimum activity). Both give the same number of cycles.
PLAN_SHAPES = ("equal", "adapted")


@dataclass(frozen=True)
class TreatmentProtocol:
    """A treatment regimen the plan must respect.

    Attributes
    ----------
    name
        Short description (shown in the report).
    activity_MBq
        The standard activity per cycle.
    min_activity_MBq, max_activity_MBq
        Bounds of a planned cycle's activity (a cycle below the minimum is not given).
    interval_weeks
        Time between cycles (informative: the twin assumes full repair between cycles).
    max_cycles
        Most cycles in total (given + planned).
    plan_shape
        ``"equal"``, ``"adapted"`` or ``"best"`` (see :data:`PLAN_SHAPES`).
    reference
        Where the regimen comes from.
    """

    name: str = "177Lu-PSMA-617 label: 7.4 GBq ± 10 % every 6 weeks, up to 6 cycles"
    activity_MBq: float = 7400.0
    min_activity_MBq: float = 6660.0
    max_activity_MBq: float = 8140.0
    interval_weeks: float = 6.0
    max_cycles: int = 6
    plan_shape: str = "equal"
    reference: str = ("Pluvicto prescribing information (Novartis 2022); Sartor O et al. N Engl J Med "
                      "2021;385:1091 (VISION)")

    def __post_init__(self) -> None:
        for k in ("activity_MBq", "min_activity_MBq", "max_activity_MBq", "interval_weeks"):
            v = getattr(self, k)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ConfigurationError(f"Protocol {k} must be a positive number, got {v!r}.")
        if not self.min_activity_MBq <= self.activity_MBq <= self.max_activity_MBq:
            raise ConfigurationError(
                f"Protocol activities must satisfy min <= standard <= max; got {self.min_activity_MBq}, "
                f"{self.activity_MBq}, {self.max_activity_MBq} MBq.")
        if not (isinstance(self.max_cycles, int) and self.max_cycles >= 1):
            raise ConfigurationError(f"Protocol max_cycles must be an integer >= 1, got {self.max_cycles!r}.")
        if self.plan_shape not in PLAN_SHAPES:
            raise ConfigurationError(f"Protocol plan_shape must be one of {PLAN_SHAPES}, got {self.plan_shape!r}.")

    @classmethod
    def labelled(cls, activity_MBq: float, tolerance: float, interval_weeks: float, max_cycles: int, *,
                 name: str, reference: str, plan_shape: str = "equal") -> TreatmentProtocol:
        """A regimen of a standard activity with a symmetric relative tolerance (e.g. 0.10 for ± 10 %)."""
        if not 0 <= tolerance < 1:
            raise ConfigurationError(f"Protocol tolerance must be in [0, 1), got {tolerance}.")
        return cls(name, activity_MBq, activity_MBq * (1 - tolerance), activity_MBq * (1 + tolerance),
                   interval_weeks, max_cycles, plan_shape, reference)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (:meth:`from_dict` reads it back)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], base: TreatmentProtocol | None = None) -> TreatmentProtocol:
        """A protocol from plain data; fields not given come from ``base`` (default: the PSMA-617 label).

        ``tolerance`` (relative, e.g. 0.1) may replace the two bounds around ``activity_MBq``.
        """
        known = {f.name for f in fields(cls)} | {"tolerance"}
        unknown = set(d) - known
        if unknown:
            raise ConfigurationError(f"Unknown protocol field(s) {sorted(unknown)}; known: {sorted(known)}.")
        values = (base or cls()).to_dict()
        values.update({k: v for k, v in d.items() if k != "tolerance"})
        if "tolerance" in d:
            tol = float(d["tolerance"])
            if not 0 <= tol < 1:
                raise ConfigurationError(f"Protocol tolerance must be in [0, 1), got {tol}.")
            values["min_activity_MBq"] = values["activity_MBq"] * (1 - tol)
            values["max_activity_MBq"] = values["activity_MBq"] * (1 + tol)
        elif "activity_MBq" in d and not {"min_activity_MBq", "max_activity_MBq"} & set(d):
            # a new standard activity keeps the base's relative band
            b = base or cls()
            values["min_activity_MBq"] = values["activity_MBq"] * b.min_activity_MBq / b.activity_MBq
            values["max_activity_MBq"] = values["activity_MBq"] * b.max_activity_MBq / b.activity_MBq
        if "max_cycles" in values:
            values["max_cycles"] = int(values["max_cycles"])
        return cls(**values)


def default_protocol(radiopharmaceutical: str) -> TreatmentProtocol:
    """The labelled regimen of ``radiopharmaceutical`` (see the module table)."""
    from .priors import radiopharmaceutical_key

    try:
        key = radiopharmaceutical_key(radiopharmaceutical)
    except ConfigurationError:
        key = ""
    if key == "psma-617":
        return TreatmentProtocol()
    if key == "dotatate":
        return TreatmentProtocol.labelled(
            7400.0, 0.10, 8.0, 4, name="177Lu-DOTATATE label: 7.4 GBq every 8 weeks, 4 cycles",
            reference="Lutathera prescribing information (2018); Strosberg J et al. N Engl J Med 2017;376:125 "
                      "(NETTER-1); the +/- 10 % band is an assumption")
    return TreatmentProtocol.labelled(
        7400.0, 0.10, 6.0, 4, name="generic: 7.4 GBq ± 10 % every 6 weeks, up to 4 cycles (assumption)",
        reference="assumption (no labelled regimen known to TheraTwin for this radiopharmaceutical)")
