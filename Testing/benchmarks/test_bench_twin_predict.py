"""Benchmark: PatientTwin.predict with 10 000 posterior draws for all structures (budget ≤ 1 s).

Baseline measured in the same run: the same algorithm as a per-draw Python loop (per draw and structure: the
log posterior of the draw at the observed data, which predict uses to importance-resample the Laplace draws,
then the closed-form TIA, dose and BED of every cycle), timed on a subset and scaled.
"""

from __future__ import annotations

import math
import time

import numpy as np

from theratwin.twin import PatientTwin, make_cohort

STRUCTURES = ("kidneys", "parotid_glands", "submandibular_glands", "lacrimal_glands", "liver", "spleen",
              "red_marrow", "bladder", "lesion_1", "lesion_2")


def _twin() -> PatientTwin:
    p = make_cohort(1, structures=STRUCTURES, seed=9).patients[0]
    twin = PatientTwin("Lu-177", "PSMA-617")
    for c, d in p.measurements.items():
        for s, (t, y) in d.items():
            twin.observe(c, s, t, y, 7400.0, mass_g=p.mass_g[s])
    twin.posterior()
    return twin


def _per_draw_loop(twin: PatientTwin, n_draws: int) -> float:
    """Scalar reference: loop over draws, cycles and structures with math-module arithmetic."""
    rng = np.random.default_rng(0)
    fit = twin.fitted()
    etas = fit.draw_eta([1, 2, 3], n_draws, rng)
    dpt, ab, mu = twin.structure_constants()
    lam_phys = fit.lambda_phys
    data = fit.data
    obs = [[(float(data.time_h[i, j]), float(data.log_activity[i, j]), float(data.sd_log[i, j]),
             int(data.cycle_index[i, j])) for j in range(data.mask.shape[1]) if data.mask[i, j]]
           for i in range(len(twin.structures))]
    t0 = time.perf_counter()
    for n in range(n_draws):
        for i in range(len(twin.structures)):
            log_post = 0.0  # the importance weight's data term, point by point
            for t, logy, sd, k in obs[i]:
                e = etas[k + 1][i, n]
                lw = lam_phys + math.exp(e[1])
                lu = lw + math.exp(e[2])
                a = 7400.0 * math.exp(e[0]) * (math.exp(-lw * t) - math.exp(-lu * t))
                log_post -= 0.5 * ((logy - math.log(a)) / sd) ** 2
            cum = 0.0
            for c in (1, 2, 3):
                e = etas[c][i, n]
                amp = 7400.0 * math.exp(e[0])
                lw = lam_phys + math.exp(e[1])
                lu = lw + math.exp(e[2])
                coef, rate = (amp, -amp), (lw, lu)
                tia = amp / lw - amp / lu
                num = sum(coef[a] * coef[b] / ((rate[a] + rate[b]) * (rate[a] + mu[i]))
                          for a in range(2) for b in range(2))
                g = 2 * num / (tia * tia)
                dose = tia * dpt[i]
                cum += dose + g * dose * dose / ab[i]
    return time.perf_counter() - t0


def test_predict_10000_draws_all_structures_under_1s() -> None:
    twin = _twin()
    twin.predict(3, 7400.0, n_draws=1000)  # warm-up (imports, caches)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        pred = twin.predict(3, 7400.0, n_draws=10000)
        times.append(time.perf_counter() - t0)
    best = min(times)
    n_sub = 500
    loop = _per_draw_loop(twin, n_sub) * (10000 / n_sub)
    print(f"\npredict, 10 000 draws x {len(STRUCTURES)} structures x 3 cycles: {best:.3f} s "
          f"(per-draw Python loop, scaled from {n_sub} draws: {loop:.2f} s; ratio {loop / best:.0f}x)")
    assert len(pred.structures) == len(STRUCTURES)
    assert best <= 1.0
    assert loop / best > 5.0
