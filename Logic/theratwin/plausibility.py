"""Physical plausibility checks: nothing physically impossible leaves the program unnoticed.

Every check compares a result with a bound that physics sets independently of how the result was computed:

=============================  ========================================================================  ==========
Check                          Bound                                                                     Default
=============================  ========================================================================  ==========
activity in the field of view  sum of the image (Bq/mL x voxel volume) <= (1 + ``activity_margin``) x    stop
                               the administered activity decayed to the acquisition start (no more can
                               be in the patient), and >= ``min_activity_fraction`` of it
time since injection           <= ``max_half_lives`` physical half-lives (beyond, less than 0.1 % is      stop
                               left: a wrong date, or the wrong nuclide)
administered activity          <= ``max_administered_MBq`` (no radioligand therapy uses more)             warn
all-zero or non-finite maps    a TIA or dose map that is zero everywhere, or holds NaN/inf                stop
structure TIA                  <= administered activity x physical mean life (all of it in the structure  stop
                               forever, no biological clearance)
structure mean dose            <= administered activity x total emitted energy per decay x physical mean  stop
                               life / structure mass (all energy of all decays absorbed in it)
=============================  ========================================================================  ==========

``action = "stop"`` (default) ends the run before any output is written (:class:`~theratwin.errors.
ImplausibleResultError`, or a :class:`~theratwin.errors.DicomReadError` naming the file for input checks);
``action = "warn"`` lets a physicist proceed knowingly: each finding is then a warning of stage
``"plausibility"`` in the CLI summary, results.json, the report's first page, the SR and the FHIR bundle.
Checks marked "warn" above never stop.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ._config import checked_fields
from .errors import ConfigurationError
from .results import parse_map_name

if TYPE_CHECKING:  # pragma: no cover
    from .results import Results
    from .study import Study

__all__ = ["PlausibilityConfig", "Finding", "check_study", "check_results", "MeV_TO_J"]

MeV_TO_J = 1.602176634e-13  # CODATA 2018 (exact, SI 2019)


@dataclass
class PlausibilityConfig:
    """Thresholds of the plausibility checks (see the module docstring)."""

    action: str = "stop"
    activity_margin: float = 0.5
    min_activity_fraction: float = 1e-3
    max_half_lives: float = 10.0
    max_administered_MBq: float = 50_000.0

    def __post_init__(self) -> None:
        if self.action not in ("stop", "warn"):
            raise ConfigurationError(f"plausibility.action must be 'stop' or 'warn'; got {self.action!r}.")
        for name in ("activity_margin", "min_activity_fraction", "max_half_lives", "max_administered_MBq"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ConfigurationError(f"plausibility.{name} must be a positive number; got {v!r}.")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (the ``plausibility`` section of a pipeline configuration)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> PlausibilityConfig:
        """The settings from their JSON form (None or empty: the defaults).

        Raises
        ------
        ConfigurationError
            A key is not a plausibility setting (the message lists the known ones).
        """
        return cls(**checked_fields(cls, d, "plausibility settings"))


@dataclass
class Finding:
    """One failed check: what, where, and whether it may stop the run."""

    check: str
    message: str
    cycle: int | None = None
    structure: str | None = None
    stops: bool = True
    path: str | None = None
    tag: str | None = None


def check_study(study: Study, config: PlausibilityConfig | None = None) -> list[Finding]:
    """Input checks on a study read from DICOM: administered activity, time since injection, field-of-view activity.

    Images must be in Bq/mL at their acquisition start (what :func:`~theratwin.dicom.read_study` returns).
    """
    from . import nuclides

    cfg = config or PlausibilityConfig()
    out: list[Finding] = []
    for c in study.cycles:
        adm = c.administration
        nuc = nuclides.get(adm.nuclide)
        first = c.time_points[0].source.files[0] if c.time_points and c.time_points[0].source.files else None
        if adm.activity_MBq > cfg.max_administered_MBq:
            out.append(Finding("administered_activity", f"cycle {c.number}: administered activity "
                               f"{adm.activity_MBq:.6g} MBq exceeds {cfg.max_administered_MBq:g} MBq, more than any "
                               "radioligand therapy gives; check RadionuclideTotalDose (MBq in NM, Bq in PET).",
                               c.number, stops=False, path=first, tag="RadionuclideTotalDose"))
        for i, tp in enumerate(c.time_points, start=1):
            path = tp.source.files[0] if tp.source.files else None
            t_h = tp.time_h(adm)
            n_half = t_h / nuc.half_life_h
            if n_half > cfg.max_half_lives:
                out.append(Finding("time_since_injection", f"cycle {c.number} time point {i}: acquired {t_h:.1f} h "
                                   f"after the injection, {n_half:.1f} half-lives of {nuc.name} (limit "
                                   f"{cfg.max_half_lives:g}): less than {100 * 0.5 ** n_half:.2g} % is left. The "
                                   "injection or acquisition datetime, or the nuclide, is wrong.", c.number,
                                   path=path, tag="RadiopharmaceuticalStartDateTime"))
                continue
            arr = np.asarray(tp.image.array, dtype=np.float64)
            total = float(arr.sum())
            if not math.isfinite(total):
                out.append(Finding("field_of_view_activity", f"cycle {c.number} time point {i}: the image holds "
                                   "NaN or infinite values.", c.number, path=path, tag="PixelData"))
                continue
            fov_MBq = total * tp.image.geometry.voxel_volume_mL / 1e6
            expected_MBq = adm.activity_MBq * 0.5 ** n_half
            ratio = fov_MBq / expected_MBq
            scale = tp.calibration_note or "the image scaling"
            if ratio > 1.0 + cfg.activity_margin:
                out.append(Finding(
                    "field_of_view_activity",
                    f"cycle {c.number} time point {i}: the image holds {fov_MBq:.4g} MBq, {ratio:.3g} x the "
                    f"administered {adm.activity_MBq:.4g} MBq decayed to the scan ({expected_MBq:.4g} MBq; margin "
                    f"{100 * cfg.activity_margin:g} %). The patient cannot hold more than was given: {scale} or "
                    "RadionuclideTotalDose is wrong.", c.number, path=path, tag="RadionuclideTotalDose"))
            elif ratio < cfg.min_activity_fraction:
                out.append(Finding(
                    "field_of_view_activity",
                    f"cycle {c.number} time point {i}: the image holds {fov_MBq:.4g} MBq, only {ratio:.3g} of the "
                    f"administered {adm.activity_MBq:.4g} MBq decayed to the scan ({expected_MBq:.4g} MBq; limit "
                    f"{cfg.min_activity_fraction:g}): {scale} or RadionuclideTotalDose is wrong, or the image is "
                    "empty.", c.number, path=path, tag="RadionuclideTotalDose"))
    return out


def check_results(results: Results, config: PlausibilityConfig | None = None, *,
                  stage: str | None = None) -> list[Finding]:
    """Output checks: all-zero/non-finite TIA and dose maps, structure TIA and dose above their physical ceilings."""
    from . import nuclides

    cfg = config or PlausibilityConfig()
    out: list[Finding] = []
    for name, vol in results.maps.items():
        parsed = parse_map_name(name)
        kind = parsed.kind if parsed is not None else name.rsplit("/", 1)[-1]
        if kind not in ("tia", "dose"):
            continue
        arr = np.asarray(vol.array)
        finite = np.isfinite(arr)
        cycle = parsed.cycle if parsed is not None else None
        what = "time-integrated activity" if kind == "tia" else "absorbed dose"
        if not finite.all():
            out.append(Finding("map_values", f"the {what} map '{name}' holds {int((~finite).sum())} NaN or "
                               "infinite voxels.", cycle))
        elif not np.any(arr != 0):
            out.append(Finding("map_values", f"the {what} map '{name}' is zero everywhere: nothing would be "
                               "reported. Check the body mask (CT), the segmentation and the images.", cycle))
    for cr in results.cycles.values():
        nuc = nuclides.get(cr.nuclide)
        mean_life_h = nuc.half_life_h / math.log(2.0)
        tia_ceiling = cr.administered_MBq * mean_life_h * (1.0 + cfg.activity_margin)
        energy_J = nuc.total_energy_MeV * MeV_TO_J
        tias = []
        for s in cr.structures.values():
            if s.tia_MBq_h is not None:
                tias.append(s.tia_MBq_h)
                if not math.isfinite(s.tia_MBq_h) or s.tia_MBq_h < 0:
                    out.append(Finding("structure_tia", f"cycle {cr.cycle} {s.structure}: TIA {s.tia_MBq_h} MBq h "
                                       "is not a finite non-negative number.", cr.cycle, s.structure))
                elif s.tia_MBq_h > tia_ceiling:
                    out.append(Finding("structure_tia", f"cycle {cr.cycle} {s.structure}: TIA {s.tia_MBq_h:.4g} "
                                       f"MBq h exceeds the physical ceiling {tia_ceiling:.4g} MBq h (all "
                                       f"{cr.administered_MBq:.4g} MBq in it forever, mean life {mean_life_h:.4g} "
                                       f"h, margin {100 * cfg.activity_margin:g} %).", cr.cycle, s.structure))
            d = s.mean_dose_Gy
            if d is None:
                continue
            if not math.isfinite(d) or d < 0:
                out.append(Finding("structure_dose", f"cycle {cr.cycle} {s.structure}: mean dose {d} Gy is not a "
                                   "finite non-negative number.", cr.cycle, s.structure))
            elif s.mass_g and s.mass_g > 0:
                ceiling = (cr.administered_MBq * 1e6 * energy_J * mean_life_h * 3600.0 / (s.mass_g / 1000.0)
                           * (1.0 + cfg.activity_margin))
                if d > ceiling:
                    out.append(Finding("structure_dose", f"cycle {cr.cycle} {s.structure}: mean dose {d:.4g} Gy "
                                       f"exceeds the physical ceiling {ceiling:.4g} Gy (every decay of "
                                       f"{cr.administered_MBq:.4g} MBq of {nuc.name} depositing all "
                                       f"{nuc.total_energy_MeV:.4g} MeV in its {s.mass_g:.4g} g).", cr.cycle,
                                       s.structure))
        if tias and all(math.isfinite(t) and t == 0 for t in tias):
            out.append(Finding("structure_tia", f"cycle {cr.cycle}: every structure has a TIA of zero.", cr.cycle))
    return out
