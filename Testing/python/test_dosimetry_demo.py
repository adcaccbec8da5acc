"""The dosimetry stage on the demo patient reproduces the demo truth's mean doses within 5 %.

The demo generator computes its truth by ``dose_map(method="dvk")`` on the noiseless TIA map with the phantom's
density map, and the mean dose as the structure-mass-weighted mean. Here the stage gets the same noiseless TIA
map (rebuilt from the demo's kinetics and anatomy) and has to find the rest itself: density from the CT numbers
(HU) through a calibration, structure masks and masses from the SEG on the CT grid. The calibration is the
demo scanner's: the phantom's documented (HU, density) pairs, as a site would calibrate its CT with a
tissue-substitute phantom (Schneider et al. 2000). This isolates the dosimetry stage from the kinetic fits.
"""

from __future__ import annotations

import numpy as np
import pytest

import theratwin as tt
from theratwin.pipeline import PipelineConfig, PipelineContext

demo = pytest.importorskip("theratwin.demo")


@pytest.fixture(scope="module")
def demo_case() -> tuple:
    from theratwin.demo import DemoOptions, simulate
    from theratwin.demo import build as db
    from theratwin.demo.phantom import lookup_tables, paint_labels

    opts = DemoOptions(fast=True, noise=False, blur=False, misalign=False)
    sim = simulate(None, opts)
    # the demo's private helpers (this test follows the generator's own construction of its truth)
    spect_geo, fine, _, _ = db._grids(opts)

    def attr(name: str):
        return fine[name] if isinstance(fine, dict) else getattr(fine, name)

    labels = paint_labels(attr("shape"), attr("origin"), attr("spacing"))
    luts, _ = db._compartment_luts(labels, attr("spacing") ** 3 / 1000.0)
    ct = tt.ImageVolume.from_geometry(sim.cycles[0].time_points[0].ct_hu.astype(np.float32), sim.ct_geometry, "HU")
    structures = [tt.Structure(name, i + 1) for i, name in enumerate(sim.seg_masks)]
    seg = tt.Segmentation(sim.ct_geometry, structures, dict(sim.seg_masks))
    cycles = []
    tia_maps = {}
    for sc in sim.cycles:
        adm = tt.Administration("PSMA-617", "Lu-177", sc.administered_MBq, sc.administration_start)
        tps = [tt.TimePoint(tt.ImageVolume.from_geometry(tp.spect_Bq_per_mL, spect_geo, "Bq/mL"),
                            tp.acquisition_start, tp.acquisition_duration_s) for tp in sc.time_points]
        cycles.append(tt.Cycle(sc.number, adm, tps))
        lut = db._tia_lut_Bq_h_per_mL(sc.kinetics, luts, sc.administered_MBq)
        tia_maps[sc.number] = db._block_mean(lut[labels].astype(np.float64)).astype(np.float32)
    study = tt.Study(tt.Patient("DEMO"), cycles, seg, reference_ct=ct)
    hu, rho = lookup_tables()
    pairs: dict[float, list[float]] = {}
    for h, r in zip(hu[1:], rho[1:], strict=True):
        pairs.setdefault(float(h), []).append(float(r))
    calibration = [(-1000.0, 0.0012)] + [(h, float(np.mean(v))) for h, v in sorted(pairs.items())]
    return sim, study, spect_geo, tia_maps, calibration


def test_demo_mean_doses_within_5_percent_of_truth(demo_case) -> None:
    from theratwin.dosimetry.stage import DosimetryStage

    sim, study, grid, tia_maps, calibration = demo_case
    if not sim.truth["dose"]["available"]:
        pytest.fail("the demo truth has no doses although theratwin.dosimetry is installed")
    res = tt.Results.for_study(study)
    for n, tia in tia_maps.items():
        res.maps[f"cycle{n}/tia"] = tt.ImageVolume.from_geometry(tia, grid, "Bq.h/mL")
    ctx = PipelineContext(study, res, PipelineConfig(stage_options={"dosimetry": {"hu_density_points": calibration}}),
                          state={"reference_grid": grid})
    DosimetryStage().run(ctx)
    checked = 0
    for tc in sim.truth["cycles"]:
        for name, e in tc["structures"].items():
            sr = res.cycles[tc["cycle"]].structures[name]
            assert sr.mean_dose_Gy == pytest.approx(e["mean_dose_Gy"], rel=0.05), (tc["cycle"], name)
            assert sr.mass_g == pytest.approx(e["mass_g"], rel=0.05), (tc["cycle"], name)
            checked += 1
    assert checked >= 20
