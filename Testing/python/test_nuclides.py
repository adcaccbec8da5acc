"""Nuclide data come from ICRP-107: checked against the values the ICRP-107 files give and physics identities."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import theratwin as tt


def _icrp_file(name: str) -> dict:
    import icrp107_database

    raw = json.loads((Path(icrp107_database.__file__).parent / "icrp107" / f"{name}.json").read_text())
    return json.loads(raw) if isinstance(raw, str) else raw


class TestNames:
    @pytest.mark.parametrize("alias", ["Lu-177", "177Lu", "Lu177", "lu-177", "177-Lu"])
    def test_aliases(self, alias: str) -> None:
        assert tt.nuclides.get(alias).name == "Lu-177"

    @pytest.mark.parametrize("bad", ["", "Lutetium", "177", "Xx-999"])
    def test_bad_names_raise_clear_error(self, bad: str) -> None:
        with pytest.raises(tt.InvalidInputError, match="nuclide|Nuclide"):
            tt.nuclides.get(bad)


class TestLu177:
    def test_half_life_matches_icrp107_file(self) -> None:
        data = _icrp_file("Lu-177")
        assert data["time_unit"] == "d"
        lu = tt.nuclides.get("Lu-177")
        assert lu.half_life_h == pytest.approx(data["half_life"] * 24.0, rel=1e-12)
        # ICRP-107 gives 6.647 d for Lu-177
        assert lu.half_life_h == pytest.approx(159.528, abs=1e-3)
        assert lu.decay_constant_per_h == pytest.approx(math.log(2) / lu.half_life_h)

    def test_mean_energies_are_yield_weighted_sums(self) -> None:
        em = _icrp_file("Lu-177")["emissions"]
        electrons = sum(e * y for k in ("beta-", "IE", "auger") for e, y in em[k])
        photons = sum(e * y for k in ("gamma", "X") for e, y in em[k])
        lu = tt.nuclides.get("Lu-177")
        assert lu.electron_energy_MeV == pytest.approx(electrons, rel=1e-12)
        assert lu.photon_energy_MeV == pytest.approx(photons, rel=1e-12)
        # published ICRP-107 means for Lu-177: electrons 0.1479 MeV, photons 0.0351 MeV per decay
        assert lu.electron_energy_MeV == pytest.approx(0.1479, abs=5e-4)
        assert lu.photon_energy_MeV == pytest.approx(0.0351, abs=5e-4)

    def test_main_gamma_lines(self) -> None:
        lines = tt.nuclides.get("Lu-177").gamma_lines(0.05)
        energies = sorted(round(e.energy_MeV * 1000) for e in lines)
        assert energies == [113, 208]

    def test_beta_spectrum_is_normalised_and_has_the_right_mean(self) -> None:
        lu = tt.nuclides.get("Lu-177")
        e, p = lu.beta_spectrum_MeV, lu.beta_spectrum_per_MeV
        assert np.trapezoid(p, e) == pytest.approx(1.0, rel=1e-6)  # one beta per decay
        beta_mean = sum(en * y for en, y in _icrp_file("Lu-177")["emissions"]["beta-"])
        assert np.trapezoid(p * e, e) == pytest.approx(beta_mean, rel=0.02)


class TestChains:
    def test_ac225_includes_daughters_at_equilibrium(self) -> None:
        ac = tt.nuclides.get("Ac-225")
        chain = dict(ac.chain)
        for d in ("Fr-221", "At-217", "Bi-213", "Pb-209"):
            assert d in chain
        # Bi-213 branches to Po-213 and Tl-209; their decays add to Bi-213's
        assert chain["Po-213"] + chain["Tl-209"] == pytest.approx(chain["Bi-213"], rel=1e-9)
        # four alphas per decay chain: Ac-225, Fr-221, At-217 and (Po-213 or Bi-213)
        n_alpha = sum(e.yield_per_decay for e in ac.emissions if e.kind == "alpha")
        assert n_alpha == pytest.approx(4.0, abs=0.01)
        assert 27.0 < ac.alpha_energy_MeV < 29.0

    @pytest.mark.parametrize("name", ["Lu-177", "Y-90", "I-131", "Tb-161", "Ac-225"])
    def test_supported_nuclides_load(self, name: str) -> None:
        n = tt.nuclides.get(name)
        assert n.half_life_h > 0
        assert n.electron_energy_MeV > 0
        assert name in tt.nuclides.available()

    def test_y90_is_a_pure_beta_emitter(self) -> None:
        y = tt.nuclides.get("Y-90")
        assert y.photon_energy_MeV < 1e-3
        assert y.electron_energy_MeV == pytest.approx(0.933, abs=0.005)
