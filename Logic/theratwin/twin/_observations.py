"""The twin's observations on the way in: checking one structure's data, and packing all into fit arrays.

Private helpers of :meth:`PatientTwin.observe <theratwin.twin.twin.PatientTwin.observe>` (which documents the
arguments) and :meth:`PatientTwin.posterior <theratwin.twin.twin.PatientTwin.posterior>`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from .model import FitData, log_normal_sd
from .population import MeasurementSpec
from .results import Observation

__all__ = ["checked_observation", "fit_data"]


def _as_float_list(values: Any, what: str) -> list[float]:
    arr = np.atleast_1d(np.asarray(values, dtype=float))
    if arr.ndim != 1 or arr.size == 0:
        raise InvalidInputError(f"{what} must be a non-empty 1-D sequence, got shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError(f"{what} contains non-finite values {arr.tolist()}; remove or fix them.")
    return [float(v) for v in arr]


def checked_observation(observations: dict[tuple[int, str], Observation], cycle: int, structure: str, time_h: Any,
                        activity_MBq: Any, administered_MBq: float, *, activity_sd_MBq: Any, ligand_nmol: float | None,
                        mass_g: float | None, dose_per_tia_Gy_per_MBq_h: float | None,
                        correlated_rel_sd: float | None = None) -> Observation:
    """The validated :class:`Observation`; ``observations`` (the twin's) must agree on the cycle's activity."""
    if int(cycle) != cycle or cycle < 1:
        raise InvalidInputError(f"cycle must be a positive integer, got {cycle!r}.")
    t = _as_float_list(time_h, f"time_h of '{structure}', cycle {cycle}")
    a = _as_float_list(activity_MBq, f"activity_MBq of '{structure}', cycle {cycle}")
    if len(t) != len(a):
        raise InvalidInputError(
            f"'{structure}', cycle {cycle}: {len(t)} times but {len(a)} activities; give one activity per time.")
    if min(t) <= 0:
        raise InvalidInputError(f"'{structure}', cycle {cycle}: times must be > 0 h after administration, got {t}.")
    if not (administered_MBq > 0 and math.isfinite(administered_MBq)):
        raise InvalidInputError(f"administered_MBq of cycle {cycle} must be positive, got {administered_MBq}.")
    sd = None
    if activity_sd_MBq is not None:
        sd = _as_float_list(activity_sd_MBq, f"activity_sd_MBq of '{structure}', cycle {cycle}")
        if len(sd) != len(t) or min(sd) < 0:
            raise InvalidInputError(f"'{structure}', cycle {cycle}: activity_sd_MBq needs {len(t)} values >= 0.")
    for name, val in (("ligand_nmol", ligand_nmol), ("mass_g", mass_g),
                      ("dose_per_tia_Gy_per_MBq_h", dose_per_tia_Gy_per_MBq_h)):
        if val is not None and not (val > 0 and math.isfinite(val)):
            raise InvalidInputError(f"'{structure}', cycle {cycle}: {name} must be positive, got {val}.")
    if correlated_rel_sd is not None and not (0 <= correlated_rel_sd < 1 and math.isfinite(correlated_rel_sd)):
        raise InvalidInputError(f"'{structure}', cycle {cycle}: correlated_rel_sd is a relative SD in [0, 1), "
                                f"got {correlated_rel_sd}.")
    for (c, other), ob in observations.items():
        if c == int(cycle) and other != structure and not math.isclose(ob.administered_MBq, administered_MBq,
                                                                       rel_tol=1e-6):
            raise InvalidInputError(
                f"Cycle {cycle}: administered_MBq {administered_MBq} for '{structure}' differs from "
                f"{ob.administered_MBq} given for '{other}'; one cycle has one administration.")
    return Observation(
        int(cycle), structure, t, a, float(administered_MBq), sd,
        None if ligand_nmol is None else float(ligand_nmol), None if mass_g is None else float(mass_g),
        None if dose_per_tia_Gy_per_MBq_h is None else float(dose_per_tia_Gy_per_MBq_h),
        None if correlated_rel_sd is None else float(correlated_rel_sd))


def fit_data(observations: Mapping[tuple[int, str], Observation], structures: list[str], cycles: list[int], *,
             measurement: Callable[[str], MeasurementSpec], default_ligand_nmol: Callable[[float], float],
             reference_ligand_nmol: float) -> FitData:
    """All observations of ``structures`` as padded (structure, point) arrays, cycles indexed as in ``cycles``.

    ``measurement(structure)`` gives a structure's measurement error model; ``default_ligand_nmol(MBq)`` the
    ligand amount of an administration that states none; padding uses ``reference_ligand_nmol``.
    """
    idx = {c: i for i, c in enumerate(cycles)}
    per = [[ob for (c, s), ob in sorted(observations.items()) if s == name] for name in structures]
    r_n = max(sum(len(ob.time_h) for ob in obs) for obs in per)
    shape = (len(structures), r_n)
    t = np.ones(shape)
    logy = np.zeros(shape)
    sdl = np.ones(shape)
    cyc = np.zeros(shape, dtype=int)
    adm = np.ones(shape)
    lig = np.full(shape, reference_ligand_nmol)
    mask = np.zeros(shape, bool)
    corr = np.zeros((len(structures), len(cycles)))
    for i, obs in enumerate(per):
        j = 0
        meas = measurement(structures[i])
        corr[i, :] = meas.correlated_rel_sd
        for ob in obs:
            n = len(ob.time_h)
            y = np.asarray(ob.activity_MBq)
            sd = np.asarray(ob.activity_sd_MBq) if ob.activity_sd_MBq is not None else np.zeros(n)
            t[i, j:j + n] = ob.time_h
            logy[i, j:j + n] = np.log(np.maximum(y, max(meas.additive_sd_MBq, 1e-9)))
            sdl[i, j:j + n] = log_normal_sd(y, sd, meas.random_rel_sd, meas.additive_sd_MBq)
            cyc[i, j:j + n] = idx[ob.cycle]
            adm[i, j:j + n] = ob.administered_MBq
            lig[i, j:j + n] = ob.ligand_nmol or default_ligand_nmol(ob.administered_MBq)
            mask[i, j:j + n] = True
            if ob.correlated_rel_sd is not None:  # the data's own (e.g. the kinetics stage's) correlated SD
                corr[i, idx[ob.cycle]] = ob.correlated_rel_sd
            j += n
    # relative SD -> SD of the log factor (log-normal: σ_ln² = ln(1 + CV²))
    return FitData(t, logy, sdl, cyc, adm, lig, mask, len(cycles), np.sqrt(np.log1p(corr * corr)))
