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
to patient data and should be replaced by a site's own fit. Solved with ``scipy.integrate.solve_ivp``
(LSODA: the kidney exchange is stiff).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from scipy.integrate import solve_ivp, trapezoid

from ..errors import FitError, InvalidInputError
from ..study.codes import structure_kind
from .model import TWIN_MODELS, BiexponentialModel

__all__ = ["PSMAPBPKParameters", "PSMAPBPKModel", "PBPKResult", "PBPKSaturationModel", "TISSUES"]

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
        return self.plasma_nmol + sum(self.tissue_nmol.values()) + self.excreted_nmol


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
        bind = p.k_on_per_nM_h * ci * np.maximum(r - bound, 0.0)
        unbind = p.k_on_per_nM_h * p.k_d_nM * bound
        dy = np.empty_like(y)
        dy[0] = -p.renal_clearance_L_per_h * cp - np.sum(exch)
        dy[1:1 + n] = exch - bind + unbind
        dy[1 + n:1 + 2 * n] = bind - unbind - p.internalisation_per_h * bound
        dy[1 + 2 * n:1 + 3 * n] = p.internalisation_per_h * bound - self._rel * intern
        dy[-1] = p.renal_clearance_L_per_h * cp + np.sum(self._rel * intern)
        return dy

    def simulate(self, ligand_nmol: float, administered_MBq: float = 7400.0, *, t_end_h: float = 2000.0,
                 time_h: np.ndarray | None = None) -> PBPKResult:
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
        sol = solve_ivp(self._rhs, (0.0, t_end_h), y0, method="LSODA", t_eval=grid, rtol=1e-7, atol=1e-10)
        if not sol.success:
            raise FitError(f"PBPK integration failed ({sol.message}); check the parameters.")
        y = sol.y
        tissue = {t: y[1 + i] + y[1 + n + i] + y[1 + 2 * n + i] for i, t in enumerate(TISSUES)}
        hot = administered_MBq / ligand_nmol * np.exp(-self.lambda_phys_per_h * sol.t)
        act = {t: hot * a for t, a in tissue.items()}
        act["blood"] = hot * y[0]
        tia = {t: float(trapezoid(a, sol.t)) for t, a in act.items()}
        return PBPKResult(sol.t, y[0], tissue, y[-1], act, tia, float(ligand_nmol), float(administered_MBq))


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
    not contain scale linearly.
    """

    name = "pbpk_psma"

    def __init__(self, parameters: PSMAPBPKParameters | None = None, reference_ligand_nmol: float = 100.0) -> None:
        self.pbpk = PSMAPBPKModel(parameters)
        self.reference_ligand_nmol = float(reference_ligand_nmol)
        self._grid_log: np.ndarray | None = None
        self._table: dict[str, np.ndarray] = {}

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
