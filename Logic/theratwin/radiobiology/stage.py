"""Pipeline stage "radiobiology": BED/EQD2 per structure and cycle, cumulative values, limits, voxel BED.

Per cycle and structure: ``bed_Gy`` (Dale, from the mean dose and the shape of the structure's fitted
time-activity curve, or its effective half-life),
``eqd2_Gy``, ``alpha_beta_Gy``, ``repair_half_time_h``, ``geud_Gy`` (lesions: gEUD of the voxel dose),
``cumulative_dose_Gy`` / ``cumulative_bed_Gy`` / ``cumulative_eqd2_Gy`` (sum over this and earlier cycles;
BEDs add because repair is complete between cycles weeks apart) and ``limit``. Maps: ``cycle{n}/bed`` (voxel
BED with the voxel effective half-life map ``cycle{n}/effective_half_life`` when the kinetics stage made one,
else the structure's), ``cumulative/dose`` and ``cumulative/bed``.

Options (``stage_options["radiobiology"]``): the fields of :class:`RadiobiologyOptions`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigurationError
from ..options import parse_options, suggest
from ..pipeline.core import STAGES, PipelineContext
from ..results import CUMULATIVE, map_name
from ..study import ImageVolume
from ..study.codes import structure_kind
from .bed import bed, bed_multiexponential, eqd2, geud
from .tissues import REFERENCES, TUMOUR_INDICATIONS, indication_for, tissue_parameters

__all__ = ["RadiobiologyOptions", "RadiobiologyStage"]


@dataclass(frozen=True)
class RadiobiologyOptions:
    """Options of the radiobiology stage (``RadiobiologyStage.Options``).

    Attributes
    ----------
    tissues
        Overrides of the tissue table, ``{tissue: {parameter: value}}`` (see
        :func:`~theratwin.radiobiology.tissues.tissue_parameters`, e.g. ``{"kidney": {"alpha_beta_Gy": 2.6}}``).
    indication
        Tumour alpha/beta and repair half-time: ``"auto"`` (default: from each cycle's radiopharmaceutical, e.g.
        PSMA ligands -> ``"prostate_cancer"``) or a key of ``TUMOUR_INDICATIONS``.
    risk_factors
        True, or a list of structure names, for the lower kidney limit (patients with risk factors).
    geud_a
        Volume parameter ``a`` of the lesions' gEUD (default -10, a tumour's).
    voxel_maps
        Write the voxel BED maps (``cycle{n}/bed``, ``cumulative/bed``).
    """

    tissues: dict[str, dict[str, Any]] | None = None
    indication: str = "auto"
    risk_factors: bool | list[str] = False
    geud_a: float = -10.0
    voxel_maps: bool = True

    def __post_init__(self) -> None:
        if self.indication != "auto" and self.indication not in TUMOUR_INDICATIONS:
            hint = suggest(self.indication, ["auto", *TUMOUR_INDICATIONS])
            raise ConfigurationError(f"Unknown radiobiology indication {self.indication!r}"
                                     + (f" (did you mean '{hint}'?)" if hint else "")
                                     + f"; known: 'auto', {sorted(TUMOUR_INDICATIONS)}.")

_LN2 = float(np.log(2.0))


def _dose_rate_shape(params: dict[str, float] | None) -> tuple[list[float], list[float]] | None:
    """The fitted time-activity curve as ``sum_i c_i exp(-a_i t)`` (coefficients, rates in 1/h), read from the
    kinetics stage's ``kinetic_params`` (names of ``theratwin.kinetics.models``); None if not recognised.
    The dose rate of a structure follows its activity, so this is the shape Dale's G-factor needs."""
    if not params:
        return None

    def ok(*keys: str) -> bool:
        return all(k in params and np.isfinite(params[k]) for k in keys)

    if ok("A1_MBq", "A2_MBq", "lambda_eff_per_h", "lambda_fast_per_h", "lambda_uptake_per_h"):  # tri-exponential
        a1, a2 = params["A1_MBq"], params["A2_MBq"]
        return [a1, a2, -(a1 + a2)], [params["lambda_eff_per_h"], params["lambda_fast_per_h"],
                                       params["lambda_uptake_per_h"]]
    if ok("A1_MBq", "A2_MBq", "lambda_eff_per_h", "lambda_fast_per_h"):  # bi-exponential clearance
        return [params["A1_MBq"], params["A2_MBq"]], [params["lambda_eff_per_h"], params["lambda_fast_per_h"]]
    if ok("lambda_eff_per_h", "lambda_uptake_per_h"):  # uptake and clearance
        return [1.0, -1.0], [params["lambda_eff_per_h"], params["lambda_uptake_per_h"]]
    if ok("lambda_eff_per_h"):
        return [1.0], [params["lambda_eff_per_h"]]
    return None


class RadiobiologyStage:
    """The "radiobiology" stage (see the module docstring)."""

    name = "radiobiology"
    requires: tuple[str, ...] = ("dosimetry",)
    Options = RadiobiologyOptions

    def run(self, ctx: PipelineContext) -> None:
        """Compute BED and EQD2 per structure and cycle, the cumulative values against each organ's limit,
        and the voxel BED maps (see the module docstring)."""
        opts = parse_options(self.Options, ctx.config.options(self.name), stage=self.name)
        overrides: dict[str, dict[str, Any]] = dict(opts.tissues or {})
        risk = opts.risk_factors
        geud_a = opts.geud_a
        voxel_maps = opts.voxel_maps
        indication_opt = opts.indication
        res = ctx.results
        seg = ctx.study.segmentation
        masks: dict[str, np.ndarray] = ctx.state.dose_masks or ctx.state.masks or {}

        def tissue_of(name: str) -> str:
            return seg.structure(name).tissue if (seg is not None and name in seg.names) else structure_kind(name).tissue

        def has_risk(name: str) -> bool:
            return bool(risk) if isinstance(risk, bool) else name in set(risk)

        cum_dose: dict[str, float] = {}
        last_teff: dict[str, float] = {}
        cum_bed: dict[str, float] = {}
        cum_dose_map: np.ndarray | None = None
        cum_bed_map: np.ndarray | None = None
        grid = None
        indications: dict[int, str] = {}
        for c in ctx.study.cycles:
            n = c.number
            dose_vol = res.maps.get(map_name(n, "dose"))
            if dose_vol is None:
                continue
            indication = indication_for(c.administration.radiopharmaceutical) if indication_opt == "auto" \
                else indication_opt
            indications[n] = indication
            grid = dose_vol.geometry
            phys_t_h = self._physical_half_life_h(c.administration.nuclide)
            cyc = res.cycles[n]
            for name, sr in cyc.structures.items():
                if sr.mean_dose_Gy is None:
                    continue
                tp = tissue_parameters(tissue_of(name), overrides, indication=indication)
                teff = sr.effective_half_life_h
                if teff is None or not np.isfinite(teff) or teff <= 0:
                    if name in last_teff:
                        # e.g. a single-time-point cycle: the same structure's kinetics in the previous cycle
                        teff = last_teff[name]
                        res.warn("radiobiology", f"No effective half-life for '{name}' in cycle {n}; BED uses the one "
                                 f"of an earlier cycle ({teff:.1f} h).", structure=name, cycle=n, severity="info")
                    else:
                        teff = phys_t_h
                        res.warn("radiobiology", f"No effective half-life for '{name}'; BED uses the physical "
                                 f"half-life ({phys_t_h:.1f} h), which gives the lowest BED for this dose.",
                                 structure=name, cycle=n)
                else:
                    last_teff[name] = float(teff)
                sr.alpha_beta_Gy = tp.alpha_beta_Gy
                sr.repair_half_time_h = tp.repair_half_time_h
                shape = _dose_rate_shape(sr.kinetic_params)
                if shape is not None and all(r > 0 for r in shape[1]):
                    sr.bed_Gy = float(bed_multiexponential(sr.mean_dose_Gy, np.asarray(shape[0]),
                                                           _LN2 / np.asarray(shape[1]),
                                                           alpha_beta_Gy=tp.alpha_beta_Gy,
                                                           repair_half_time_h=tp.repair_half_time_h))
                else:
                    sr.bed_Gy = float(bed(sr.mean_dose_Gy, tp.alpha_beta_Gy, tp.repair_half_time_h, teff))
                sr.eqd2_Gy = float(eqd2(sr.bed_Gy, tp.alpha_beta_Gy))
                cum_dose[name] = cum_dose.get(name, 0.0) + sr.mean_dose_Gy
                cum_bed[name] = cum_bed.get(name, 0.0) + sr.bed_Gy
                sr.cumulative_dose_Gy = cum_dose[name]
                sr.cumulative_bed_Gy = cum_bed[name]
                sr.cumulative_eqd2_Gy = float(eqd2(cum_bed[name], tp.alpha_beta_Gy))
                sr.limit = tp.limit(risk_factors=has_risk(name))
                if sr.limit is not None:
                    value = {"BED": sr.cumulative_bed_Gy, "EQD2": sr.cumulative_eqd2_Gy,
                             "dose": sr.cumulative_dose_Gy}[sr.limit["quantity"]]
                    sr.limit["cumulative_value_Gy"] = value
                    sr.limit["fraction_of_limit"] = value / sr.limit["value_Gy"]
                    if value > sr.limit["value_Gy"]:
                        res.warn("radiobiology", f"Cumulative {sr.limit['quantity']} of '{name}' after cycle {n} is "
                                 f"{value:.1f} Gy, above the limit of {sr.limit['value_Gy']:g} Gy.",
                                 structure=name, cycle=n)
                if name in masks and seg is not None and name in seg.names and seg.structure(name).is_lesion:
                    m = masks[name]
                    sel = m > 0
                    if np.any(sel):
                        sr.geud_Gy = geud(dose_vol.array[sel], m[sel], a=geud_a)
            if voxel_maps:
                bed_map = self._voxel_bed(ctx, n, dose_vol.array, masks, tissue_of, overrides, phys_t_h, indication)
                res.maps[map_name(n, "bed")] = ImageVolume.from_geometry(bed_map, grid, "Gy")
                cum_dose_map = dose_vol.array.astype(np.float32) if cum_dose_map is None else cum_dose_map + dose_vol.array
                cum_bed_map = bed_map if cum_bed_map is None else cum_bed_map + bed_map
        if grid is not None and cum_dose_map is not None and cum_bed_map is not None:
            for kind, total in (("dose", cum_dose_map), ("bed", cum_bed_map)):
                res.maps[map_name(CUMULATIVE, kind)] = ImageVolume.from_geometry(total.astype(np.float32), grid, "Gy")
        res.record_method(
            "radiobiology",
            "BED by Dale's linear-quadratic formalism for exponentially varying dose rates; EQD2; gEUD; tumour "
            "alpha/beta and repair half-time per indication ("
            + ", ".join(f"cycle {n}: {ind}" for n, ind in sorted(indications.items())) + ")",
            {
                "structure_bed": "from the structure mean dose and the shape of its fitted time-activity curve "
                                 "(sum of exponentials: mono, uptake, bi- or tri-exponential), else its effective "
                                 "half-life; cumulative BED = sum over cycles",
                "voxel_bed": "voxel dose with the voxel effective half-life map when available, else the structure's",
                "geud_a": geud_a,
                "tissue_overrides": overrides,
                "risk_factors": risk,
                "tumour_indication": {str(n): {"indication": ind,
                                               **{k: v for k, v in tissue_parameters("tumour", overrides,
                                                                                     indication=ind).to_dict().items()
                                                  if k in ("alpha_beta_Gy", "repair_half_time_h", "note",
                                                           "references")}}
                                      for n, ind in indications.items()},
            },
            [
                "Dale RG. Br J Radiol 1985;58:515-528",
                "Dale RG. Phys Med Biol 1996;41:1871-1884",
                "Baechler S et al. Med Phys 2008;35:1123-1134",
                "Niemierko A. Med Phys 1999;26:1100 (gEUD)",
                *sorted(set(REFERENCES.values())),
            ],
        )

    @staticmethod
    def _structure_half_life_h(sr: Any, default_h: float) -> float:
        t = getattr(sr, "effective_half_life_h", None)
        return float(t) if (t is not None and np.isfinite(t) and t > 0) else default_h

    @staticmethod
    def _physical_half_life_h(nuclide: str) -> float:
        from ..nuclides import get

        return float(get(nuclide).half_life_h)

    def _voxel_bed(self, ctx: PipelineContext, n: int, dose: np.ndarray, masks: dict[str, np.ndarray],
                   tissue_of: Any, overrides: dict[str, dict[str, Any]], phys_t_h: float,
                   indication: str | None = None) -> np.ndarray:
        res = ctx.results
        cyc = res.cycles[n]
        seg = ctx.study.segmentation
        soft = tissue_parameters("soft_tissue", overrides)
        shape = dose.shape
        # default: the body's effective half-life (when measured), else the physical half-life
        body_t = None
        for name, sr in cyc.structures.items():
            if seg is not None and name in seg.names and seg.structure(name).role.value == "body":
                body_t = sr.effective_half_life_h
        default_t = body_t if (body_t and np.isfinite(body_t) and body_t > 0) else phys_t_h
        names = [k for k in masks if not (seg is not None and k in seg.names and seg.structure(k).role.value == "body")]
        ab = np.full(shape, soft.alpha_beta_Gy, np.float32)
        trep = np.full(shape, soft.repair_half_time_h, np.float32)
        teff = np.full(shape, default_t, np.float32)
        if names:
            # each voxel takes the parameters of the structure covering most of it (>= half a voxel)
            stack = np.stack([masks[k] for k in names])
            best = np.argmax(stack, axis=0)
            covered = np.take_along_axis(stack, best[None], axis=0)[0] >= 0.5
            tp = [tissue_parameters(tissue_of(k), overrides, indication=indication) for k in names]
            ab_lut = np.array([t.alpha_beta_Gy for t in tp], np.float32)
            tr_lut = np.array([t.repair_half_time_h for t in tp], np.float32)
            te_lut = np.array([self._structure_half_life_h(cyc.structures.get(k), default_t) for k in names],
                              np.float32)
            ab = np.where(covered, ab_lut[best], ab)
            trep = np.where(covered, tr_lut[best], trep)
            teff = np.where(covered, te_lut[best], teff)
        t_map = res.maps.get(map_name(n, "effective_half_life"))
        if t_map is not None and t_map.shape == shape:
            tv = np.asarray(t_map.array, dtype=np.float32)
            ok = np.isfinite(tv) & (tv > 0)
            # voxel fits may exceed the physical half-life only through noise; cap at it
            teff = np.where(ok, np.minimum(tv, phys_t_h), teff)
        d = np.clip(np.nan_to_num(dose, nan=0.0), 0.0, None)
        return np.asarray(bed(d, ab, trep, teff), dtype=np.float32)


STAGES.register("radiobiology", RadiobiologyStage)
