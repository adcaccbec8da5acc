"""The digital twin of a radioligand-therapy patient (research use).

A Bayesian radiopharmacokinetic model per structure (population priors per gram for 177Lu-PSMA-617 and
177Lu-DOTATATE, or a site's own priors file; inter-individual and inter-occasion variability; random per-scan
and correlated per-cycle measurement error), updated with every cycle's data, that estimates sparsely imaged
cycles, flags priors the patient's data contradict, predicts TIA, dose and BED with prediction intervals,
plans the remaining cycles of the protocol so that all organ-at-risk limits hold jointly at a chosen
confidence, and forecasts response and toxicity.

Main entry point: :class:`PatientTwin`; what the ``twin`` stage stores in ``Results.twin`` and every export
reads: :class:`TwinResults`. Priors file: :mod:`theratwin.twin.population` (schema
``theratwin-priors/1``). Protocols: :class:`TreatmentProtocol`. Extension points: :data:`TWIN_MODELS`
(``theratwin.twin_models``) and :data:`OUTCOME_MODELS` (``theratwin.outcome_models``).
"""

from ._conflicts import PriorConflict
from .cohort import VirtualCohort, VirtualPatient, hanscheid_tia, madsen_tia, make_cohort
from .model import (
    TWIN_MODELS,
    BiexponentialModel,
    LaplacePosterior,
    TwinModel,
    fit_map_laplace,
    lea_catcheside_g,
    tia_from_exponentials,
)
from .outcome import OUTCOME_MODELS, LKBModel, LogisticDoseResponse, OutcomeModel
from .output import Forecast, TwinEstimate, TwinResults, TwinTrajectory
from .pbpk import PBPKPatientFit, PBPKPosterior, PBPKSaturationModel, PSMAPBPKModel, PSMAPBPKParameters
from .population import (
    PRIORS_SCHEMA,
    MeasurementSpec,
    PopulationPrior,
    PopulationPriors,
    builtin_priors,
    load_priors,
    priors_json_schema,
)
from .priors import PRIOR_SPECS, KineticPriorSpec, StructurePrior, structure_prior
from .protocol import TreatmentProtocol, default_protocol
from .results import PREDICTED_QUANTITIES
from .tissues import DEFAULT_LIMITS, OrganLimit, TissueParameters
from .twin import (
    SCHEMA,
    Interval,
    MeasurementErrorModel,
    Observation,
    PatientTwin,
    Prediction,
    Recommendation,
    StructurePrediction,
    TIAEstimate,
    TreatmentPlan,
)

__all__ = [
    "PatientTwin",
    "TwinResults",
    "TwinEstimate",
    "TwinTrajectory",
    "Forecast",
    "PREDICTED_QUANTITIES",
    "TIAEstimate",
    "Interval",
    "Prediction",
    "StructurePrediction",
    "Recommendation",
    "TreatmentPlan",
    "TreatmentProtocol",
    "default_protocol",
    "PriorConflict",
    "Observation",
    "MeasurementErrorModel",
    "SCHEMA",
    "TWIN_MODELS",
    "TwinModel",
    "BiexponentialModel",
    "LaplacePosterior",
    "fit_map_laplace",
    "lea_catcheside_g",
    "tia_from_exponentials",
    "OUTCOME_MODELS",
    "OutcomeModel",
    "LKBModel",
    "LogisticDoseResponse",
    "PRIOR_SPECS",
    "KineticPriorSpec",
    "StructurePrior",
    "structure_prior",
    "PRIORS_SCHEMA",
    "PopulationPriors",
    "PopulationPrior",
    "MeasurementSpec",
    "builtin_priors",
    "load_priors",
    "priors_json_schema",
    "DEFAULT_LIMITS",
    "OrganLimit",
    "TissueParameters",
    "PSMAPBPKModel",
    "PSMAPBPKParameters",
    "PBPKSaturationModel",
    "PBPKPatientFit",
    "PBPKPosterior",
    "VirtualCohort",
    "VirtualPatient",
    "make_cohort",
    "hanscheid_tia",
    "madsen_tia",
]
