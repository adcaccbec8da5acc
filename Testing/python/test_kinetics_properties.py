"""Property tests of the kinetic fits (hypothesis draws the curves and the schedules).

The reference is the closed form the fit does not compute: for ``A(t) = A0 exp(-lambda t)`` sampled without noise,
the time-integrated activity is ``A0 / lambda`` and the effective half-life ``ln 2 / lambda`` (MIRD Pamphlet No. 21);
for a sum of two exponentials ``A1 / l1 + A2 / l2``. Whatever the drawn amplitude, clearance and clinical schedule,
the fit must recover them.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import theratwin as tt

LAMBDA_LU_PER_H = math.log(2) / tt.nuclides.get("Lu-177").half_life_h

#: Clinical imaging schedules (h after the start of administration): 3-, 4- and 5-scan protocols.
SCHEDULES = [(4.0, 24.0, 96.0), (4.0, 24.0, 48.0, 168.0), (2.0, 6.0, 24.0, 48.0, 168.0), (24.0, 48.0, 96.0, 168.0)]


@settings(max_examples=40, deadline=None)
@given(a0_MBq=st.floats(1.0, 5000.0), k_bio_per_h=st.floats(1e-3, 0.2), schedule=st.sampled_from(SCHEDULES))
def test_mono_exponential_tia_and_half_life(a0_MBq: float, k_bio_per_h: float, schedule: tuple[float, ...]) -> None:
    t = np.array(schedule)
    lam = LAMBDA_LU_PER_H + k_bio_per_h
    fit = tt.kinetics.fit_tac(t, a0_MBq * np.exp(-lam * t), nuclide="Lu-177", model="mono_exp")
    assert math.isclose(fit.tia_MBq_h, a0_MBq / lam, rel_tol=1e-3)
    assert math.isclose(fit.effective_half_life_h, math.log(2) / lam, rel_tol=1e-3)
    assert np.allclose(fit.predict(t), a0_MBq * np.exp(-lam * t), rtol=1e-3)


@settings(max_examples=25, deadline=None)
@given(a1_MBq=st.floats(50.0, 2000.0), ratio=st.floats(0.1, 1.0), k_fast_per_h=st.floats(0.08, 0.4),
       k_slow_per_h=st.floats(0.002, 0.03))
def test_bi_exponential_washout_tia(a1_MBq: float, ratio: float, k_fast_per_h: float, k_slow_per_h: float) -> None:
    """Fast + slow washout on a 5-scan schedule: the bi-exponential fit recovers A1/l1 + A2/l2."""
    t = np.array([1.0, 4.0, 24.0, 72.0, 168.0])
    l1, l2 = LAMBDA_LU_PER_H + k_fast_per_h, LAMBDA_LU_PER_H + k_slow_per_h
    a2 = ratio * a1_MBq
    activity = a1_MBq * np.exp(-l1 * t) + a2 * np.exp(-l2 * t)
    fit = tt.kinetics.fit_tac(t, activity, nuclide="Lu-177", model="biexp")
    assert math.isclose(fit.tia_MBq_h, a1_MBq / l1 + a2 / l2, rel_tol=0.01)


@settings(max_examples=30, deadline=None)
@given(scale=st.floats(0.01, 1000.0), k_bio_per_h=st.floats(1e-3, 0.1))
def test_tia_scales_with_activity(scale: float, k_bio_per_h: float) -> None:
    """The TIA is linear in the activity: scaling every point scales the TIA and keeps the half-life."""
    t = np.array([4.0, 24.0, 48.0, 168.0])
    curve = 100.0 * np.exp(-(LAMBDA_LU_PER_H + k_bio_per_h) * t)
    base = tt.kinetics.fit_tac(t, curve, nuclide="Lu-177", model="mono_exp")
    scaled = tt.kinetics.fit_tac(t, scale * curve, nuclide="Lu-177", model="mono_exp")
    assert math.isclose(scaled.tia_MBq_h, scale * base.tia_MBq_h, rel_tol=1e-4)
    assert math.isclose(scaled.effective_half_life_h, base.effective_half_life_h, rel_tol=1e-4)
