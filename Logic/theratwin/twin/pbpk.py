"""Reduced physiologically based pharmacokinetic (PBPK) model for PSMA ligands, with receptor saturation.

Structure after Kletting P et al. PLoS One 2016;11:e0162303 ("Investigating the effect of ligand amount and
injected therapeutic activity: a simulation study for 177Lu-labeled PSMA-targeting peptides") and Begum NJ
et al. J Nucl Med 2018;59:929 (tumour volume and BED): plasma, and for each tissue (kidneys, salivary
glands, liver, spleen, tumour, rest) a free interstitial pool exchanging with plasma (flow-limited),
receptor-bound ligand, and internalised ligand that is released (excreted) slowly::

    dP/dt   = −CL_R·P/V_p − Σ_i f_i (P/V_p − F_i/V_i)
    dF_i/dt = f_i (P/V_p − F_i/V_i) − k_on (F_i/V_i)(R_i − B_i) + k_off B_i
    dB_i/dt = k_on (F_i/V_i)(R_i − B_i) − (k_off + λ_int) B_i
    dI_i/dt = λ_int B_i − λ_rel,i I_i
    dE/dt   = CL_R·P/V_p + Σ_i λ_rel,i I_i                      (excreted; total ligand is conserved)

Amounts in nmol, volumes in L, k_on in 1/(nmol/L · h). Internalised receptors are assumed to be re-expressed
at once (free receptors R_i − B_i), a simplification of Kletting 2016's recycling term.

**Hot and cold ligand.** Labelled and unlabelled molecules (and the 177Hf decay product, which still binds)
compete for the same receptors with identical rate constants, so the model is solved for the *total* ligand;
the activity of any compartment is ``A_adm/L_adm · amount(t) · e^{−λ_phys t}`` (the hot fraction is the same
everywhere). Saturation therefore depends on the ligand amount, not on the activity — doubling the ligand
at fixed activity lowers the activity fraction taken up by receptor-rich organs.

**Parameters** (:class:`PSMAPBPKParameters`): physiological volumes/flows are rounded reference values
(plasma 3 L; renal plasma flow ≈ 36 L/h and GFR ≈ 6.6 L/h for an adult, e.g. ICRP 89 / standard physiology
texts); K_D = 2.3 nmol/L for PSMA-617 (Benešová M et al. J Nucl Med 2015;56:914, K_i 2.34 nM); the receptor
amounts and release rates are **illustrative**, chosen so that at 100 nmol the uptake fractions and
effective half-lives are close to the population prior (:mod:`theratwin.twin.priors`) — they are not fitted
to patient data and should be replaced by a site's own fit. Solved with ``scipy.integrate.odeint``
(LSODA via ``odeint`` with the analytic Jacobian: the kidney exchange is stiff).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from scipy.integrate import odeint, trapezoid
from scipy.optimize import least_squares

from ..errors import FitError, InvalidInputError
from ..study.codes import structure_kind
from .model import TWIN_MODELS, BiexponentialModel

__all__ = ["PSMAPBPKParameters", "PSMAPBPKModel", "PBPKResult", "PBPKSaturationModel", "PBPKPatientFit",
           "PBPKPosterior", "TISSUES", "pbpk_tissue"]

#: PBPK tissues (order of the state vector blocks).
TISSUES = ("kidneys", "salivary_glands", "liver", "spleen", "tumour", "rest")


@dataclass(frozen=True)
class PSMAPBPKParameters:
    """Parameters of :class:`PSMAPBPKModel` (units in the names; see the module docstring for sources)."""

    plasma_volume_L: float = 3.0
    renal_clearance_L_per_h: float = 6.6
    k_on_per_nM_h: float = 3.0
    k_d_nM: float = 2.3
    internalisation_per_h: float = 0.5
    flow_L_per_h: dict[str, float] = field(default_factory=lambda: {
        "kidneys": 36.0, "salivary_glands": 0.6, "liver": 50.0, "spleen": 8.0, "tumour": 1.5, "rest": 120.0})
    interstitial_volume_L: dict[str, float] = field(default_factory=lambda: {
        "kidneys": 0.06, "salivary_glands": 0.02, "liver": 0.3, "spleen": 0.03, "tumour": 0.05, "rest": 10.0})
    receptor_nmol: dict[str, float] = field(default_factory=lambda: {
        "kidneys": 3.0, "salivary_glands": 1.2, "liver": 2.0, "spleen": 0.2, "tumour": 12.0, "rest": 0.0})
    release_per_h: dict[str, float] = field(default_factory=lambda: {
        "kidneys": 0.013, "salivary_glands": 0.0155, "liver": 0.0095, "spleen": 0.0095, "tumour": 0.0072,
        "rest": 0.05})

    def to_dict(self) -> dict[str, Any]:
        """The parameters by field name (``PSMAPBPKParameters(**d)`` rebuilds them)."""
        return asdict(self)


@dataclass
class PBPKResult:
    """Solution of one simulation: ligand amounts (nmol) per compartment and activities (MBq) per tissue."""

    time_h: np.ndarray
    plasma_nmol: np.ndarray
    tissue_nmol: dict[str, np.ndarray]  # free + bound + internalised
    excreted_nmol: np.ndarray
    activity_MBq: dict[str, np.ndarray]
    tia_MBq_h: dict[str, float]
    ligand_nmol: float
    administered_MBq: float

    def total_nmol(self) -> np.ndarray:
        """Ligand in plasma, every tissue and excreted (nmol) at each time; constant when the solution
        conserves mass."""
        return self.plasma_nmol + sum(self.tissue_nmol.values()) + self.excreted_nmol

    def activity_at(self, tissue: str, time_h: np.ndarray) -> np.ndarray:
        """Activity of ``tissue`` (MBq) at ``time_h`` (exact at times passed to ``simulate``)."""
        return np.interp(np.asarray(time_h, float), self.time_h, self.activity_MBq[tissue])


class PSMAPBPKModel:
    """The reduced PSMA PBPK model (see the module docstring)."""

    def __init__(self, parameters: PSMAPBPKParameters | None = None, *, tumour_receptor_nmol: float | None = None,
                 lambda_phys_per_h: float = float(np.log(2.0) / 159.528)) -> None:
        p = parameters or PSMAPBPKParameters()
        if tumour_receptor_nmol is not None:
            p = replace(p, receptor_nmol={**p.receptor_nmol, "tumour": float(tumour_receptor_nmol)})
        self.p = p
        self.lambda_phys_per_h = float(lambda_phys_per_h)

    def _rhs(self, _t: float, y: np.ndarray) -> np.ndarray:
        p = self.p
        n = len(TISSUES)
        cp = y[0] / p.plasma_volume_L
        free, bound, intern = y[1:1 + n], y[1 + n:1 + 2 * n], y[1 + 2 * n:1 + 3 * n]
        f = self._flow
        v = self._vint
        r = self._rec
        ci = free / v
        exch = f * (cp - ci)
        bind = p.k_on_per_nM_h * ci * (r - bound).clip(min=0.0)
        unbind = p.k_on_per_nM_h * p.k_d_nM * bound
        released = self._rel * intern
        dy = np.empty_like(y)
        dy[0] = -p.renal_clearance_L_per_h * cp - exch.sum()
        dy[1:1 + n] = exch - bind + unbind
        dy[1 + n:1 + 2 * n] = bind - unbind - p.internalisation_per_h * bound
        dy[1 + 2 * n:1 + 3 * n] = p.internalisation_per_h * bound - released
        dy[-1] = p.renal_clearance_L_per_h * cp + released.sum()
        return dy

    def _jac(self, _t: float, y: np.ndarray) -> np.ndarray:
        """Analytic Jacobian of :meth:`_rhs` (LSODA would otherwise difference 20 columns per step)."""
        p = self.p
        n = len(TISSUES)
        free, bound = y[1:1 + n], y[1 + n:1 + 2 * n]
        f, v, r, rel = self._flow, self._vint, self._rec, self._rel
        kon, koff, kint = p.k_on_per_nM_h, p.k_on_per_nM_h * p.k_d_nM, p.internalisation_per_h
        vp, cl = p.plasma_volume_L, p.renal_clearance_L_per_h
        free_rec = np.where(r - bound > 0.0, r - bound, 0.0)
        active = (r - bound > 0.0).astype(float)
        ci = free / v
        i_f, i_b, i_i = np.arange(1, 1 + n), np.arange(1 + n, 1 + 2 * n), np.arange(1 + 2 * n, 1 + 3 * n)
        jac = np.zeros((y.size, y.size))
        jac[0, 0] = -(cl + f.sum()) / vp
        jac[0, i_f] = f / v
        jac[i_f, 0] = f / vp
        jac[i_f, i_f] = -f / v - kon * free_rec / v
        jac[i_f, i_b] = kon * ci * active + koff
        jac[i_b, i_f] = kon * free_rec / v
        jac[i_b, i_b] = -kon * ci * active - koff - kint
        jac[i_i, i_b] = kint
        jac[i_i, i_i] = -rel
        jac[-1, 0] = cl / vp
        jac[-1, i_i] = rel
        return jac

    def simulate(self, ligand_nmol: float, administered_MBq: float = 7400.0, *, t_end_h: float = 2000.0,
                 time_h: np.ndarray | None = None, rtol: float = 1e-7) -> PBPKResult:
        """Simulate one administration (bolus of ``ligand_nmol`` total ligand carrying ``administered_MBq``).

        TIAs integrate the decay-corrected activity to ``t_end_h`` (trapezoid on a log-spaced grid; the tail
        beyond 2000 h is below 1e-3 of the total for 177Lu).
        """
        if not (ligand_nmol > 0 and administered_MBq > 0):
            raise InvalidInputError(f"PBPK needs positive ligand ({ligand_nmol} nmol) and activity ({administered_MBq} MBq).")
        p = self.p
        self._flow = np.array([p.flow_L_per_h[t] for t in TISSUES])
        self._vint = np.array([p.interstitial_volume_L[t] for t in TISSUES])
        self._rec = np.array([p.receptor_nmol[t] for t in TISSUES])
        self._rel = np.array([p.release_per_h[t] for t in TISSUES])
        n = len(TISSUES)
        y0 = np.zeros(2 + 3 * n)
        y0[0] = ligand_nmol
        grid = np.unique(np.concatenate([[0.0], np.geomspace(1e-3, t_end_h, 400),
                                         [] if time_h is None else np.asarray(time_h, float)]))
        # LSODA through odeint (one Fortran call; solve_ivp's step-by-step wrapper is ~10x slower here)
        # absolute tolerance relative to the ligand given (1e-9 of it): amounts below that are irrelevant
        ys, info = odeint(self._rhs, y0, grid, Dfun=self._jac, tfirst=True, rtol=rtol, atol=1e-9 * ligand_nmol,
                          full_output=True, mxstep=20000)
        if info.get("message") != "Integration successful.":
            raise FitError(f"PBPK integration failed ({info.get('message')}); check the parameters.")
        y = ys.T
        tissue = {t: y[1 + i] + y[1 + n + i] + y[1 + 2 * n + i] for i, t in enumerate(TISSUES)}
        hot = administered_MBq / ligand_nmol * np.exp(-self.lambda_phys_per_h * grid)
        act = {t: hot * a for t, a in tissue.items()}
        act["blood"] = hot * y[0]
        tia = {t: float(trapezoid(a, grid)) for t, a in act.items()}
        return PBPKResult(grid, y[0], tissue, y[-1], act, tia, float(ligand_nmol), float(administered_MBq))


def pbpk_tissue(structure: str) -> str | None:
    """PBPK tissue of a structure name (None: not modelled, no ligand dependence)."""
    kind = structure_kind(structure)
    if kind.role.value == "lesion":
        return "tumour"
    return {"kidneys": "kidneys", "parotid_glands": "salivary_glands", "submandibular_glands": "salivary_glands",
            "liver": "liver", "spleen": "spleen"}.get(kind.key)


class PBPKSaturationModel(BiexponentialModel):
    """Twin model ``"pbpk_psma"``: the uptake–washout model with a ligand-amount-dependent amplitude.

    ``ln U`` gets the offset ``ln(τ_s(L)/τ_s(L_ref))`` where τ_s(L) is the PBPK time-integrated activity
    fraction of the structure's tissue after ``L`` nmol (tabulated on a log grid and interpolated in
    log–log), so the patient's fitted kinetics (from the observed cycles at their ligand amounts) are
    transferred to another ligand amount by the mechanistic saturation curve. Structures the PBPK model does
    not contain scale linearly. By default the curve is the population one; pass the parameters of a
    :class:`PBPKPatientFit` (``PBPKSaturationModel(posterior.parameters)``) to use the patient's own
    receptor amounts and release rates.
    """

    name = "pbpk_psma"

    def __init__(self, parameters: PSMAPBPKParameters | None = None, reference_ligand_nmol: float = 100.0) -> None:
        self.pbpk = PSMAPBPKModel(parameters)
        self.reference_ligand_nmol = float(reference_ligand_nmol)
        self._grid_log: np.ndarray | None = None
        self._table: dict[str, np.ndarray] = {}

    def to_dict(self) -> dict[str, Any]:
        """Settings for the twin state (restored by :meth:`from_dict`)."""
        return {"parameters": self.pbpk.p.to_dict(), "reference_ligand_nmol": self.reference_ligand_nmol}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PBPKSaturationModel:
        """The model from its :meth:`to_dict` form (as stored in a twin state)."""
        return cls(PSMAPBPKParameters(**d["parameters"]), float(d.get("reference_ligand_nmol", 100.0)))

    def _tabulate(self) -> None:
        if self._grid_log is not None:
            return
        grid = np.geomspace(5.0, 5000.0, 25)
        rows = [self.pbpk.simulate(float(g), 1.0) for g in grid]
        self._grid_log = np.log(grid)
        for t in TISSUES:
            self._table[t] = np.log(np.array([r.tia_MBq_h[t] for r in rows]))

    def log_tia_fraction(self, tissue: str, ligand_nmol: np.ndarray) -> np.ndarray:
        """ln of the PBPK TIA per administered MBq of ``tissue`` at ``ligand_nmol`` (interpolated)."""
        self._tabulate()
        assert self._grid_log is not None
        lg = np.log(np.clip(np.asarray(ligand_nmol, float), 5.0, 5000.0))
        return np.interp(lg, self._grid_log, self._table[tissue])

    def log_amplitude_offset(self, ligand_nmol: np.ndarray, structures: list[str], shape: tuple[int, ...]) -> np.ndarray:
        """``ln U`` offset of each structure from the ligand amount: ``ln TIA_PBPK(ligand) − ln
        TIA_PBPK(reference ligand)`` per MBq (0 for a structure without a PBPK tissue)."""
        lig = np.broadcast_to(np.asarray(ligand_nmol, float), shape)
        out = np.zeros(shape)
        for i, s in enumerate(structures):
            tissue = pbpk_tissue(s)
            if tissue is None:
                continue
            ref = self.log_tia_fraction(tissue, np.asarray(self.reference_ligand_nmol))
            out[i] = self.log_tia_fraction(tissue, lig[i]) - ref
        return out


TWIN_MODELS.register("pbpk_psma", PBPKSaturationModel)


@dataclass
class PBPKPosterior:
    """Laplace posterior of a patient's PBPK scale factors.

    ``mode`` and ``cov`` are over x = (ln receptor scale, ln release scale) per fitted tissue (in ``tissues``
    order, receptor first); ``parameters`` is the PBPK parameter set at the mode.
    """

    tissues: list[str]
    mode: np.ndarray
    cov: np.ndarray
    parameters: PSMAPBPKParameters
    administered_MBq: float
    ligand_nmol: float
    cost: float

    def scales(self) -> dict[str, dict[str, float]]:
        """Posterior-mode scale factors relative to the population parameters."""
        return {t: {"receptor": float(np.exp(self.mode[2 * i])), "release": float(np.exp(self.mode[2 * i + 1]))}
                for i, t in enumerate(self.tissues)}


class PBPKPatientFit:
    """Patient-specific PBPK: MAP + Laplace fit of receptor amount and release rate per tissue.

    For every PBPK tissue with data (kidneys, salivary glands = parotid + submandibular, liver, spleen,
    tumour = all lesions) two parameters are fitted: ``ln(R_i/R_i,pop)`` and ``ln(λ_rel,i/λ_rel,i,pop)``, with
    independent Gaussian priors of SD ``receptor_sd_log`` and ``release_sd_log`` around the population set
    (assumed values: inter-patient PSMA expression varies widely, Begum 2018 — unpublished as an SD here).
    Data enter through the same log-normal proportional + additive error model as the twin; the whole-body
    ODE couples the tissues through plasma, so they are fitted jointly (``scipy.optimize.least_squares`` with
    finite-difference Jacobian; Laplace covariance ``(JᵀJ)⁻¹``). Predictions at another ligand amount use the
    fitted ODE, and their intervals the delta method on ln TIA (one extra solve per parameter).
    """

    def __init__(self, parameters: PSMAPBPKParameters | None = None, *, receptor_sd_log: float = 0.5,
                 release_sd_log: float = 0.3, proportional_sd: float = 0.05, additive_sd_MBq: float = 0.05,
                 lambda_phys_per_h: float = float(np.log(2.0) / 159.528)) -> None:
        self.population = parameters or PSMAPBPKParameters()
        self.receptor_sd_log = float(receptor_sd_log)
        self.release_sd_log = float(release_sd_log)
        self.proportional_sd = float(proportional_sd)
        self.additive_sd_MBq = float(additive_sd_MBq)
        self.lambda_phys_per_h = float(lambda_phys_per_h)

    def _parameters(self, tissues: list[str], x: np.ndarray) -> PSMAPBPKParameters:
        rec = dict(self.population.receptor_nmol)
        rel = dict(self.population.release_per_h)
        for i, t in enumerate(tissues):
            rec[t] = rec[t] * math.exp(x[2 * i])
            rel[t] = rel[t] * math.exp(x[2 * i + 1])
        return replace(self.population, receptor_nmol=rec, release_per_h=rel)

    def _model(self, tissues: list[str], x: np.ndarray) -> PSMAPBPKModel:
        return PSMAPBPKModel(self._parameters(tissues, x), lambda_phys_per_h=self.lambda_phys_per_h)

    def fit(self, observations: dict[str, tuple[Any, Any]], administered_MBq: float, ligand_nmol: float) -> PBPKPosterior:
        """Fit the structures' measured activities ``{structure: (time_h, activity_MBq)}`` of one cycle.

        Structures of the same PBPK tissue (e.g. parotid and submandibular glands, several lesions) are summed
        and must share their sampling times; structures the PBPK model does not contain are ignored.
        """
        grouped: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for s, (t, a) in observations.items():
            tissue = pbpk_tissue(s)
            if tissue is None:
                continue
            t_arr, a_arr = np.asarray(t, float), np.asarray(a, float)
            if tissue in grouped:
                t0, a0 = grouped[tissue]
                if t0.shape != t_arr.shape or not np.allclose(t0, t_arr):
                    raise InvalidInputError(
                        f"Structures of PBPK tissue '{tissue}' need the same sampling times to be summed; "
                        f"got {t0.tolist()} and {t_arr.tolist()} ('{s}').")
                grouped[tissue] = (t0, a0 + a_arr)
            else:
                grouped[tissue] = (t_arr, a_arr)
        if not grouped:
            raise InvalidInputError(
                f"None of the structures {sorted(observations)} is a PBPK tissue ({', '.join(TISSUES[:-1])}).")
        tissues = [t for t in TISSUES if t in grouped]
        times = np.unique(np.concatenate([grouped[t][0] for t in tissues]))
        t_end = float(times.max()) * 1.01
        logy = {t: np.log(np.maximum(grouped[t][1], self.additive_sd_MBq)) for t in tissues}
        sd = {t: np.sqrt(self.proportional_sd**2 + (self.additive_sd_MBq / np.maximum(grouped[t][1], self.additive_sd_MBq))**2)
              for t in tissues}
        prior_sd = np.tile([self.receptor_sd_log, self.release_sd_log], len(tissues))

        def residuals(x: np.ndarray) -> np.ndarray:
            r = self._model(tissues, x).simulate(ligand_nmol, administered_MBq, t_end_h=t_end, time_h=times, rtol=1e-8)
            parts = [(logy[t] - np.log(np.maximum(r.activity_at(t, grouped[t][0]), 1e-12))) / sd[t] for t in tissues]
            return np.concatenate(parts + [x / prior_sd])

        sol = least_squares(residuals, np.zeros(2 * len(tissues)), method="trf", diff_step=1e-3, x_scale=1.0)
        if not sol.success:
            raise FitError(f"PBPK patient fit did not converge ({sol.message}); check the activities (MBq) and times (h).")
        jac = sol.jac
        cov = np.linalg.inv(jac.T @ jac + 1e-12 * np.eye(jac.shape[1]))
        return PBPKPosterior(tissues, sol.x, 0.5 * (cov + cov.T), self._parameters(tissues, sol.x),
                             float(administered_MBq), float(ligand_nmol), float(sol.cost))

    def predict_tia(self, posterior: PBPKPosterior, administered_MBq: float, ligand_nmol: float,
                    level: float = 0.9) -> dict[str, dict[str, float]]:
        """TIA per fitted tissue (MBq·h) at another administration: mode value and log-normal interval.

        ``ln TIA`` is linearised around the mode (gradient by forward differences), ``SD = √(g Σ gᵀ)``, the
        interval is ``exp(ln TIA ± z·SD)`` with z the ``(1 + level)/2`` normal quantile.
        """
        from scipy.special import ndtri

        tissues = posterior.tissues
        base = self._model(tissues, posterior.mode).simulate(ligand_nmol, administered_MBq)
        log_base = np.array([math.log(base.tia_MBq_h[t]) for t in tissues])
        grad = np.empty((len(tissues), posterior.mode.size))
        h = 1e-3
        for j in range(posterior.mode.size):
            x = posterior.mode.copy()
            x[j] += h
            r = self._model(tissues, x).simulate(ligand_nmol, administered_MBq)
            grad[:, j] = (np.array([math.log(r.tia_MBq_h[t]) for t in tissues]) - log_base) / h
        sd = np.sqrt(np.einsum("ij,jk,ik->i", grad, posterior.cov, grad))
        z = float(ndtri(0.5 + level / 2.0))
        return {t: {"tia_MBq_h": float(np.exp(log_base[i])), "sd_log": float(sd[i]),
                    "low_MBq_h": float(np.exp(log_base[i] - z * sd[i])),
                    "high_MBq_h": float(np.exp(log_base[i] + z * sd[i])), "level": level}
                for i, t in enumerate(tissues)}
