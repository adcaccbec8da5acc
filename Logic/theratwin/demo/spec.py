"""Who the demo generator simulates: the patient's identity, cycles, schedules, kinetics and body size.

:data:`DEMO_PATIENT_SPEC` is the built-in demo patient; :mod:`theratwin.cohort` draws other patients of the same
phantom family from a known population (``theratwin demo-cohort``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInputError
from .kinetics import Kinetics

__all__ = ["CycleSpec", "PatientSpec", "DEMO_PATIENT_SPEC"]

_PATIENT = {
    "id": "TT-DEMO-0001",
    "name": "Demo^Theratwin",
    "issuer": "THERATWIN-DEMO",
    "birth_date": "19560612",
    "sex": "M",
    "age": "068Y",
    "weight_kg": 82.0,
    "height_m": 1.76,
}
_RADIOPHARMACEUTICAL = "PSMA-617"
_NUCLIDE = "Lu-177"
_ADMINISTERED_MBQ = 7400.0
# Nominal imaging schedule (h after the start of administration) and acquisition settings per time point:
# (nominal time, jitter SD in h, number of projections over both heads, seconds per projection).
_SCHEDULE: dict[int, list[tuple[float, float, int, float]]] = {
    1: [(4.0, 0.25, 120, 15.0), (24.0, 0.8, 120, 20.0), (48.0, 1.2, 120, 20.0), (168.0, 2.5, 120, 30.0)],
    2: [(48.0, 1.2, 120, 20.0)],
}
_CYCLE_INTERVAL_DAYS = 42.0


@dataclass(frozen=True)
class CycleSpec:
    """One therapy cycle of a simulated patient.

    Attributes
    ----------
    administered_MBq
        Administered activity, MBq.
    schedule
        Imaging time points: ``(nominal time in h after the start of administration, SD of its seeded jitter in h,
        number of projections over both heads, seconds per projection)``.
    days_after_previous
        Nominal days between this cycle's administration and the previous one (ignored for the first cycle);
        a seeded jitter of -1 h to +1.5 h is added.
    kinetics
        Kinetics per compartment (every key of ``CYCLE1_KINETICS``). ``None``: the demo's literature table for
        the first cycle, and for later cycles the first cycle's kinetics with the demo's inter-occasion
        variability (``theratwin.demo.kinetics.cycle2_kinetics``).
    """

    administered_MBq: float
    schedule: tuple[tuple[float, float, int, float], ...]
    days_after_previous: float = _CYCLE_INTERVAL_DAYS
    kinetics: dict[str, Kinetics] | None = None


@dataclass(frozen=True)
class PatientSpec:
    """Who is simulated: identity, radiopharmaceutical, body size and the cycles with their kinetics.

    The default (:data:`DEMO_PATIENT_SPEC`) is the built-in demo patient; :mod:`theratwin.cohort` draws others
    from a known population.

    Attributes
    ----------
    patient
        DICOM patient module values: ``id``, ``name``, ``issuer``, ``birth_date``, ``sex``, ``age``,
        ``weight_kg``, ``height_m``.
    radiopharmaceutical
        Name written to the DICOM administration and the truth (the nuclide is Lu-177).
    cycles
        The cycles, in order.
    anatomy_scale
        Scale factors (x, y, z) of the phantom's anatomy about :data:`ANATOMY_SCALE_CENTER_MM` (body habitus: 1 is
        the reference man of :mod:`theratwin.demo.phantom`). Keep z <= 1: the field of view ends just below the
        bladder.
    """

    patient: dict[str, Any]
    radiopharmaceutical: str
    cycles: tuple[CycleSpec, ...]
    anatomy_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if not self.cycles:
            raise InvalidInputError("A simulated patient needs at least one cycle.")
        if any(not c.schedule for c in self.cycles):
            raise InvalidInputError("Every simulated cycle needs at least one imaging time point.")
        if any(not 0.5 <= s <= 1.5 for s in self.anatomy_scale) or self.anatomy_scale[2] > 1.0:
            raise InvalidInputError(f"Anatomy scale {self.anatomy_scale} is outside 0.5-1.5 (z at most 1, the field "
                                    "of view ends below the bladder).")


#: The built-in demo patient: two cycles of 7.4 GBq six weeks apart, imaged at about 4, 24, 48, 168 h and 48 h.
DEMO_PATIENT_SPEC = PatientSpec(
    patient=_PATIENT, radiopharmaceutical=_RADIOPHARMACEUTICAL,
    cycles=tuple(CycleSpec(_ADMINISTERED_MBQ, tuple(_SCHEDULE[n])) for n in sorted(_SCHEDULE)),
)
