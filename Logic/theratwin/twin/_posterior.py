"""The fitted twin the queries work on: :class:`TwinPosterior` (posterior, draws, per-cycle quantities) and
:class:`PlanningTwin`, what the planner reads of the twin besides it.

:meth:`PatientTwin.fitted <theratwin.twin.twin.PatientTwin.fitted>` returns the :class:`TwinPosterior` of its
current observations (refitted lazily after new data). The planner (:mod:`theratwin.twin._planning`) draws from it
and reads the twin only through :class:`PlanningTwin` (schedule, dose constants, limits, protocol, seed), so no
module of the package needs :class:`~theratwin.twin.twin.PatientTwin` itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .model import FitData, LaplacePosterior, lea_catcheside_g, log_posterior_draws, tia_from_exponentials
from .priors import StructurePrior
from .protocol import TreatmentProtocol
from .results import Prediction

__all__ = ["TwinPosterior", "PlanningTwin"]


@dataclass
class TwinPosterior:
    """The twin's posterior given all its observations, and its draws.

    Attributes
    ----------
    model
        The twin model (:class:`~theratwin.twin.model.TwinModel`).
    structures, cycles
        Structures (rows of every array) and observed cycles (columns of the cycle deviations) of the fit.
    priors
        Each structure's prior after prior–data conflict handling (what the posterior was fitted with).
    data
        The observations as padded arrays (:class:`~theratwin.twin.model.FitData`).
    laplace
        MAP and Laplace covariance of (θ, κ_1..κ_K, δ_1..δ_K) per structure.
    lambda_phys
        Physical decay constant of the nuclide, 1/h.
    """

    model: Any
    structures: list[str]
    cycles: list[int]
    priors: list[StructurePrior]
    data: FitData
    laplace: LaplacePosterior
    lambda_phys: float

    def draw_eta(self, cycles: list[int], n_draws: int, rng: np.random.Generator,
                 rows: list[int] | None = None) -> dict[int, np.ndarray]:
        """Joint posterior(-predictive) draws of η (S, N, p) for each requested cycle (``rows``: structures).

        An observed cycle's η is the patient's θ plus that cycle's fitted deviation κ_k; any other cycle draws a
        fresh κ from the IOV prior.
        """
        post = self.laplace
        idx = list(range(post.mode.shape[0])) if rows is None else list(rows)
        mode, cov = post.mode[idx], post.cov[idx]
        s_n, n_x = mode.shape
        p = post.n_params
        chol = np.linalg.cholesky(cov + 1e-12 * np.eye(n_x))
        z = rng.standard_normal((s_n, n_draws, n_x))
        x = mode[:, None, :] + np.einsum("sij,snj->sni", chol, z)
        priors = [self.priors[i] for i in idx]
        x = self._importance_resample(x, z, idx, priors, rng)
        theta = x[..., :p]
        out: dict[int, np.ndarray] = {}
        for c in cycles:
            if c in self.cycles:
                k = self.cycles.index(c)
                out[c] = theta + x[..., p * (1 + k): p * (2 + k)]
            else:
                l_iov = np.stack([np.linalg.cholesky(pr.iov_cov) for pr in priors])
                out[c] = theta + np.einsum("sij,snj->sni", l_iov, rng.standard_normal((s_n, n_draws, p)))
        return out

    def _importance_resample(self, x: np.ndarray, z: np.ndarray, idx: list[int], priors: list[StructurePrior],
                             rng: np.random.Generator) -> np.ndarray:
        """Laplace draws corrected towards the exact posterior by sampling-importance-resampling.

        The Laplace Gaussian is the proposal; each draw is weighted by exact posterior / proposal
        (:func:`~theratwin.twin.model.log_posterior_draws`) and the draws are resampled by these weights
        (systematic resampling; Rubin DB, J Am Stat Assoc 1987;82:543, "SIR"). This removes what the Gaussian
        misses where the model is curved (e.g. one late scan fixing amplitude × washout along a curved ridge).
        A structure whose weights degenerate (effective sample size below 10 %) keeps its Laplace draws.
        """
        data = self.data
        sub = FitData(data.time_h[idx], data.log_activity[idx], data.sd_log[idx], data.cycle_index[idx],
                      data.administered_MBq[idx], data.ligand_nmol[idx], data.mask[idx], data.n_cycles,
                      None if data.correlated_sd is None else data.correlated_sd[idx])
        log_p = log_posterior_draws(self.model, [self.structures[i] for i in idx], priors, sub,
                                    self.lambda_phys, x)
        log_w = log_p + 0.5 * np.sum(z * z, axis=-1)  # − log q up to a constant
        log_w -= np.max(log_w, axis=1, keepdims=True)
        w = np.exp(log_w)
        w /= np.sum(w, axis=1, keepdims=True)
        n = x.shape[1]
        ess = 1.0 / np.sum(w * w, axis=1)
        out = x.copy()
        for i in range(x.shape[0]):
            if not np.isfinite(ess[i]) or ess[i] < 0.1 * n:
                continue
            cdf = np.cumsum(w[i])
            cdf[-1] = 1.0
            pick = np.searchsorted(cdf, (rng.random() + np.arange(n)) / n)
            out[i] = x[i, rng.permutation(pick)]
        return out

    def cycle_quantities(self, eta: np.ndarray, administered_MBq: float, ligand_nmol: float,
                         dpt: np.ndarray, ab: np.ndarray, mu: np.ndarray) -> dict[str, np.ndarray]:
        """TIA (MBq·h), dose and BED (Gy) and the Lea–Catcheside factor g of one cycle for draws ``eta``.

        ``dpt`` dose per TIA (Gy/(MBq·h)), ``ab`` α/β (Gy) and ``mu`` repair rate (1/h) per structure; BED =
        D + g·D²/(α/β) (Dale 1985).
        """
        coef, rate = self.model.exponentials(eta, np.asarray(administered_MBq, float), np.asarray(ligand_nmol, float),
                                             self.structures, self.lambda_phys)
        tia = tia_from_exponentials(coef, rate)
        g = lea_catcheside_g(coef, rate, mu[:, None])
        dose = tia * dpt[:, None]
        bed = dose + g * dose * dose / ab[:, None]
        return {"tia": tia, "dose": dose, "bed": bed, "g": g}


class PlanningTwin(Protocol):
    """What the planner reads of a twin besides its :class:`TwinPosterior` (``PatientTwin`` implements it)."""

    limits: dict[str, Any]
    protocol: TreatmentProtocol
    seed: int
    reference_ligand_nmol: float
    planned: dict[int, tuple[float, float | None]]

    @property
    def observed_cycles(self) -> list[int]: ...

    @property
    def radiopharmaceutical_key(self) -> str: ...

    def fitted(self) -> TwinPosterior: ...

    def schedule(self, cycle: int, administered_MBq: float | None, ligand_nmol: float | None
                 ) -> dict[int, tuple[float, float]]: ...

    def structure_constants(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    def structure_mass_g(self, structure: str) -> float | None: ...

    def predict(self, cycle: int, administered_MBq: float | None = None, *, ligand_nmol: float | None = None,
                n_draws: int = 10000, level: float = 0.9, keep_draws: bool = False,
                seed: int | None = None) -> Prediction: ...
