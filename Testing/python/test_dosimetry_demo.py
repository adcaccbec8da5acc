"""The dosimetry stage on the demo patient against the demo's independent dose truth.

The truth (``theratwin.demo.truth``) integrates the point kernels on the phantom's own label grid with
full-range photons; it shares no grid and no voxel kernel with the pipeline's 9.6 mm (fast demo) dose map.
Here the stage gets the noiseless TIA map (rebuilt from the demo's kinetics and anatomy: a perfect camera, no
blur) and each structure's true TIA, so that only the dosimetry is tested: density from the CT numbers (HU)
through the demo scanner's calibration (the phantom's documented (HU, density) pairs, as a site calibrates its CT
with a tissue-substitute phantom, Schneider et al. 2000), masks and masses from the SEG on the CT grid. At
9.6 mm the voxel averaging alone takes 15-60 % of a small lesion's dose; the partial-volume correction with a
known (here ideal, 0 mm) resolution restores it.
"""

from __future__ import annotations

import numpy as np
import pytest

import theratwin as tt
from theratwin.pipeline import PipelineConfig, PipelineContext, PipelineState

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


def _run_stage(demo_case, dosimetry_options: dict) -> tuple:
    from theratwin.dosimetry.stage import DosimetryStage

    sim, study, grid, tia_maps, calibration = demo_case
    res = tt.Results.for_study(study)
    for n, tia in tia_maps.items():
        res.maps[f"cycle{n}/tia"] = tt.ImageVolume.from_geometry(tia, grid, "Bq.h/mL")
    for tc in sim.truth["cycles"]:
        for name, e in tc["structures"].items():
            res.cycles[tc["cycle"]].structure(name).tia_MBq_h = e["tia_MBq_h"]
    options = {"hu_density_points": calibration, **dosimetry_options}
    # what the kinetics stage records: an ideal camera (no blur left in the TIA maps)
    ctx = PipelineContext(study, res, PipelineConfig(stage_options={"dosimetry": options}),
                          state=PipelineState(reference_grid=grid,
                                              partial_volume={"system_fwhm_mm": 0.0, "voxel_map_fwhm_mm": 0.0}))
    DosimetryStage().run(ctx)
    return sim, res


def test_demo_mean_doses_match_the_independent_truth(demo_case) -> None:
    """With the correction: every structure within 3 % of the truth (measured: 1.6 % at most). Without it, the
    9.6 mm map's own means: lesions 15-62 % low, kidneys 12 % low (the reason for the correction)."""
    sim, res = _run_stage(demo_case, {})
    _, raw = _run_stage(demo_case, {"partial_volume": "none"})
    if not sim.truth["dose"]["available"]:
        pytest.fail("the demo truth has no doses although theratwin.dosimetry is installed")
    checked = 0
    worst_raw = 0.0
    for tc in sim.truth["cycles"]:
        for name, e in tc["structures"].items():
            sr = res.cycles[tc["cycle"]].structures[name]
            assert sr.mean_dose_Gy == pytest.approx(e["mean_dose_Gy"], rel=0.03), (tc["cycle"], name)
            assert sr.mass_g == pytest.approx(e["mass_g"], rel=0.05), (tc["cycle"], name)
            # the uncorrected value is kept beside it, equal to the stage's output without correction
            r = raw.cycles[tc["cycle"]].structures[name]
            assert sr.mean_dose_as_imaged_Gy == pytest.approx(r.mean_dose_Gy, rel=1e-6)
            worst_raw = max(worst_raw, abs(r.mean_dose_Gy / e["mean_dose_Gy"] - 1.0))
            checked += 1
    assert checked >= 20
    assert worst_raw > 0.3
