"""Dose-volume histograms and dose metrics with fractional (partial-volume) structure masks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidInputError

__all__ = ["DVH", "dvh", "dose_metrics", "weighted_quantile"]

#: Default dose levels (Gy) for which V_x (volume fraction receiving at least x Gy) is reported.
DEFAULT_VX_GY: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 20.0, 40.0)


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: np.ndarray | float) -> np.ndarray:
    """Weighted quantile(s) ``q`` (0..1) of ``values``: the smallest value with cumulative weight >= q.

    Exact for a piecewise-constant dose in each (fractional) voxel, no binning.
    """
    order = np.argsort(values, kind="stable")
    v = values[order]
    c = np.cumsum(weights[order])
    c /= c[-1]
    idx = np.searchsorted(c, np.asarray(q, dtype=float) - 1e-12, side="left")
    return v[np.clip(idx, 0, v.size - 1)]


@dataclass
class DVH:
    """A cumulative DVH: ``volume_fraction[i]`` of the structure receives at least ``dose_Gy[i]``.

    Metrics are computed from the voxel doses themselves (not from the bins).
    """

    dose_Gy: np.ndarray
    volume_fraction: np.ndarray
    bin_width_Gy: float
    volume_mL: float
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of the cumulative DVH: dose (Gy) and volume-fraction points (rounded to 1e-6), bin
        width (Gy) and volume (mL)."""
        return {
            "dose_Gy": [round(float(d), 6) for d in self.dose_Gy],
            "volume_fraction": [round(float(v), 6) for v in self.volume_fraction],
            "bin_width_Gy": self.bin_width_Gy,
            "volume_mL": self.volume_mL,
            "type": "cumulative",
        }


def dose_metrics(dose_Gy: np.ndarray, weights: np.ndarray, *, vx_Gy: tuple[float, ...] = DEFAULT_VX_GY,
                 mass_weights: np.ndarray | None = None) -> dict[str, float]:
    """Dmean, Dmin, Dmax, D2, D50, D98 (Gy) and V_x (fractions) of a dose sample with voxel weights.

    ``D_p`` is the minimum dose to the hottest ``p`` % of the volume (ICRU Report 83 convention), i.e. the
    ``1 - p/100`` weighted quantile. ``Dmean_Gy`` is mass-weighted when ``mass_weights`` is given (energy over
    mass, as MIRD defines the mean absorbed dose), volume-weighted otherwise.
    """
    d = np.asarray(dose_Gy, dtype=float).ravel()
    w = np.asarray(weights, dtype=float).ravel()
    keep = w > 0
    d, w = d[keep], w[keep]
    if d.size == 0:
        raise InvalidInputError("The structure has no voxel on the dose grid (empty mask); check the segmentation.")
    mw = w if mass_weights is None else np.asarray(mass_weights, dtype=float).ravel()[keep]
    q = weighted_quantile(d, w, np.array([0.02, 0.5, 0.98]))
    out = {
        "Dmean_Gy": float(np.sum(d * mw) / np.sum(mw)),
        "Dmin_Gy": float(d.min()),
        "Dmax_Gy": float(d.max()),
        "D98_Gy": float(q[0]),
        "D50_Gy": float(q[1]),
        "D2_Gy": float(q[2]),
    }
    tot = float(w.sum())
    for x in vx_Gy:
        out[f"V{x:g}Gy_fraction"] = float(w[d >= x].sum() / tot)
    return out


def dvh(dose_Gy: np.ndarray, mask: np.ndarray, *, voxel_volume_mL: float = 1.0, bin_width_Gy: float | None = None,
        max_bins: int = 2000, vx_Gy: tuple[float, ...] = DEFAULT_VX_GY,
        density_g_per_mL: np.ndarray | None = None) -> DVH:
    """Cumulative DVH of a structure given as a fractional mask (0..1) on the dose grid.

    Parameters
    ----------
    dose_Gy
        Dose map (Gy).
    mask
        Fractional mask (0..1) on the same grid (partial voxels count by their fraction); bool accepted.
    voxel_volume_mL
        Volume of one voxel (for the structure volume).
    bin_width_Gy
        Bin width; default 0.01 Gy, or ``Dmax / max_bins`` if that would need more than ``max_bins`` bins.
    vx_Gy
        Dose levels for the V_x metrics.
    density_g_per_mL
        Optional density map for a mass-weighted mean dose.
    """
    d = np.asarray(dose_Gy)
    m = np.asarray(mask, dtype=np.float64)
    if d.shape != m.shape:
        raise InvalidInputError(f"Dose grid {d.shape} and mask {m.shape} differ; resample the mask to the dose grid.")
    sel = m > 0
    dv = d[sel].astype(np.float64)
    w = m[sel]
    mass_w = None if density_g_per_mL is None else w * np.asarray(density_g_per_mL)[sel]
    metrics = dose_metrics(dv, w, vx_Gy=vx_Gy, mass_weights=mass_w)
    dmax = metrics["Dmax_Gy"]
    if bin_width_Gy is None:
        bin_width_Gy = 0.01 if dmax / 0.01 <= max_bins else dmax / max_bins
    if bin_width_Gy <= 0:
        raise InvalidInputError(f"bin_width_Gy must be > 0; got {bin_width_Gy}.")
    n = int(np.ceil(dmax / bin_width_Gy)) + 1
    edges = np.arange(n + 1) * bin_width_Gy
    hist, _ = np.histogram(np.clip(dv, 0.0, None), bins=edges, weights=w)
    # cumulative: fraction receiving >= the lower edge of each bin
    cum = np.cumsum(hist[::-1])[::-1] / w.sum()
    return DVH(edges[:-1], cum, float(bin_width_Gy), float(w.sum() * voxel_volume_mL), metrics)
