"""The twin state as versioned JSON data: :data:`SCHEMA`, writing (``to_dict``) and reading (``from_dict``).

Private helpers of :meth:`PatientTwin.to_dict <theratwin.twin.twin.PatientTwin.to_dict>` and
:meth:`PatientTwin.from_dict <theratwin.twin.twin.PatientTwin.from_dict>`. The state holds the inputs
(observations, plan, settings); the posterior is saved for reference and recomputed on reading.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any, Protocol, TypeVar

from .._version import __version__
from ..errors import ConfigurationError, InvalidInputError
from ..results import RESEARCH_USE_NOTICE
from ._posterior import TwinPosterior
from .model import TWIN_MODELS
from .population import PopulationPriors, builtin_priors
from .priors import KineticPriorSpec
from .protocol import TreatmentProtocol
from .results import MeasurementErrorModel, Observation
from .tissues import OrganLimit, TissueParameters


class _SavedTwin(Protocol):
    """What the state holds of a twin (``PatientTwin`` implements it)."""

    patient_id: str | None
    nuclide: str
    radiopharmaceutical: str
    model_name: str
    model: Any
    reference_ligand_nmol: float
    seed: int
    measurement: MeasurementErrorModel | None
    prior_overrides: dict[str, KineticPriorSpec]
    priors: PopulationPriors | None
    conflict_sd: float
    conflict_handling: str
    protocol: TreatmentProtocol
    tissues: dict[str, TissueParameters]
    limits: dict[str, Any]
    observations: dict[tuple[int, str], Observation]
    planned: dict[int, tuple[float, float | None]]

    def fitted(self) -> TwinPosterior: ...

    def observe(self, cycle: int, structure: str, time_h: Any, activity_MBq: Any, administered_MBq: float, *,
                activity_sd_MBq: Any = None, ligand_nmol: float | None = None, mass_g: float | None = None,
                dose_per_tia_Gy_per_MBq_h: float | None = None, correlated_rel_sd: float | None = None) -> None: ...

    def plan(self, cycle: int, administered_MBq: float, ligand_nmol: float | None = None) -> None: ...


_T = TypeVar("_T", bound=_SavedTwin)

__all__ = ["SCHEMA", "state_to_dict", "state_from_dict"]

#: Versioned schema of the twin state (``to_json``); ``from_json`` reads every version listed in _READABLE.
SCHEMA = "theratwin-twin/2"
_READABLE = ("theratwin-twin/1", "theratwin-twin/2")


def state_to_dict(twin: _SavedTwin) -> dict[str, Any]:
    """The state of ``twin`` as plain JSON data (schema :data:`SCHEMA`)."""
    post = None
    if twin.observations:
        fit = twin.fitted()
        post = {"structures": fit.structures, "cycles": fit.cycles,
                "mode": fit.laplace.mode.tolist(), "cov": fit.laplace.cov.tolist()}
    return {
        "schema": SCHEMA,
        "software": {"name": "TheraTwin", "version": __version__},
        "saved": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "notice": RESEARCH_USE_NOTICE,
        "patient_id": twin.patient_id,
        "nuclide": twin.nuclide,
        "radiopharmaceutical": twin.radiopharmaceutical,
        "model": twin.model_name,
        "model_config": twin.model.to_dict() if hasattr(twin.model, "to_dict") else None,
        "reference_ligand_nmol": twin.reference_ligand_nmol,
        "seed": twin.seed,
        "measurement": None if twin.measurement is None else asdict(twin.measurement),
        "prior_overrides": {k: v.to_dict() for k, v in twin.prior_overrides.items()},
        # a site's priors travel with the twin, so that it restores to the same posterior anywhere
        "priors": None if twin.priors is None else {"origin": twin.priors.origin, "data": twin.priors.to_dict()},
        "conflict_sd": twin.conflict_sd,
        "conflict_handling": twin.conflict_handling,
        "protocol": twin.protocol.to_dict(),
        "tissues": {k: asdict(v) for k, v in twin.tissues.items()},
        "limits": {k: (v.to_dict() if isinstance(v, OrganLimit) else v) for k, v in twin.limits.items()},
        "observations": [ob.to_dict() for _, ob in sorted(twin.observations.items())],
        "planned": {str(c): {"administered_MBq": a, "ligand_nmol": lg} for c, (a, lg) in sorted(twin.planned.items())},
        "posterior": post,
    }


def state_from_dict(cls: Callable[..., _T], d: dict[str, Any]) -> _T:
    """A new ``cls`` twin restored from :func:`state_to_dict` data (observations replayed, posterior refitted)."""
    schema = d.get("schema")
    if schema not in _READABLE:
        raise InvalidInputError(
            f"Twin state schema '{schema}' is not readable by TheraTwin {__version__} (reads {list(_READABLE)}); "
            "upgrade TheraTwin or re-create the twin from the observations.")
    model: Any = d.get("model", "biexp")
    if d.get("model_config") is not None:
        entry = TWIN_MODELS.get(model)
        if hasattr(entry, "from_dict"):
            model = entry.from_dict(d["model_config"])
    # version 1 always had a measurement model (its defaults had no correlated part)
    meas = d.get("measurement", {}) if schema == "theratwin-twin/1" else d.get("measurement")
    if schema == "theratwin-twin/1":
        meas = {"correlated_sd": 0.0, "lesion_correlated_sd": 0.0, **(meas or {})}
    priors = None
    if d.get("priors"):
        priors = PopulationPriors.from_dict(d["priors"]["data"], origin=str(d["priors"].get("origin", "twin state")))
        try:
            priors.fallback = builtin_priors(priors.radiopharmaceutical, priors.nuclide)
        except ConfigurationError:
            priors.fallback = None
    twin = cls(
        d["nuclide"], d["radiopharmaceutical"], model=model,
        prior_overrides={k: KineticPriorSpec.from_dict(v) for k, v in d.get("prior_overrides", {}).items()},
        measurement=None if meas is None else MeasurementErrorModel(**meas),
        tissues={k: TissueParameters(**v) for k, v in d.get("tissues", {}).items()},
        limits={k: (OrganLimit(**v) if isinstance(v, dict) else v) for k, v in d.get("limits", {}).items()},
        reference_ligand_nmol=float(d.get("reference_ligand_nmol", 100.0)),
        patient_id=d.get("patient_id"), seed=int(d.get("seed", 20240617)), priors=priors,
        conflict_sd=float(d.get("conflict_sd", 3.0)), conflict_handling=str(d.get("conflict_handling", "widen")),
        protocol=TreatmentProtocol.from_dict(d["protocol"]) if d.get("protocol") else None)
    for ob in d.get("observations", []):
        twin.observe(ob["cycle"], ob["structure"], ob["time_h"], ob["activity_MBq"], ob["administered_MBq"],
                     activity_sd_MBq=ob.get("activity_sd_MBq"), ligand_nmol=ob.get("ligand_nmol"),
                     mass_g=ob.get("mass_g"), dose_per_tia_Gy_per_MBq_h=ob.get("dose_per_tia_Gy_per_MBq_h"),
                     correlated_rel_sd=ob.get("correlated_rel_sd"))
    for c, v in d.get("planned", {}).items():
        twin.plan(int(c), v["administered_MBq"], v.get("ligand_nmol"))
    return twin
