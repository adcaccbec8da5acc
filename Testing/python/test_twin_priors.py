"""The twin's population priors as a file (schema ``theratwin-priors/1``): format, conversion, reading errors.

The built-in set is converted from published summary statistics; the checks here go back to those
statistics by closed forms (log-normal moments, the local-deposition S-value) rather than to the converter.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jsonschema
import numpy as np
import pytest

import theratwin as tt
from theratwin.twin.population import (
    PARAMETERS,
    PRIORS_SCHEMA,
    PopulationPriors,
    builtin_priors,
    load_priors,
    priors_json_schema,
)
from theratwin.twin.priors import PRIOR_SPECS

LAM_LU = tt.nuclides.get("Lu-177").decay_constant_per_h
E_E = tt.nuclides.get("Lu-177").electron_energy_MeV


class TestFileFormat:
    @pytest.mark.parametrize("rph", ["PSMA-617", "DOTATATE"])
    def test_builtin_sets_validate_against_the_published_json_schema(self, rph: str) -> None:
        data = json.loads(builtin_priors(rph).to_json())
        jsonschema.Draft202012Validator.check_schema(priors_json_schema())
        jsonschema.validate(data, priors_json_schema())
        assert data["schema"] == PRIORS_SCHEMA and data["parameters"] == list(PARAMETERS)
        # every structure cites its sources, and every reference key used is resolved
        for key, st in data["structures"].items():
            assert {"mean", "iiv_cov", "iov_cov"} <= set(st["sources"]), key
        assert "ICRP89" in data["references"]

    def test_round_trip_through_a_file(self, tmp_path: Path) -> None:
        pri = builtin_priors("PSMA-617")
        path = pri.save(tmp_path / "site-priors.json")
        back = load_priors(path)
        assert back.origin == str(path)
        assert back.to_dict() == pri.to_dict()

    def test_per_gram_mean_reproduces_the_published_dose_per_activity(self) -> None:
        """At the reference mass the prior's mean U gives back the published Gy/GBq (closed form, mono-exp.)."""
        spec = PRIOR_SPECS["psma-617"]["kidneys"]
        pr = builtin_priors("PSMA-617").lookup("kidneys")[0]
        s_u2 = pr.iiv_cov[0, 0]
        u_mean = math.exp(pr.mean[0] + s_u2 / 2) * spec.reference_mass_g  # log-normal mean, per gram -> organ
        lam_eff = math.log(2) / spec.effective_half_life_h
        s_value = 0.1602176634 * E_E / spec.reference_mass_g  # mGy/(MBq s), local deposition (MIRD 21)
        dose_per_activity = u_mean / lam_eff * s_value * 3600.0  # mGy/MBq = Gy/GBq
        assert dose_per_activity == pytest.approx(spec.dose_per_activity_Gy_per_GBq, rel=1e-9)
        assert s_u2 == pytest.approx(math.log1p(spec.cv_uptake_amplitude ** 2))
        assert math.exp(pr.mean[1]) == pytest.approx(lam_eff - LAM_LU)

    def test_amplitude_prior_scales_with_the_structure_mass(self) -> None:
        pr = builtin_priors("PSMA-617").lookup("red_marrow")[0]
        at_ref = pr.structure_prior()
        at_90 = pr.structure_prior(90.0)
        assert at_ref.mass_g == 1170.0 and at_90.mass_g == 90.0
        assert math.exp(at_ref.mean[0] - at_90.mean[0]) == pytest.approx(1170.0 / 90.0)
        np.testing.assert_array_equal(at_ref.mean[1:], at_90.mean[1:])

    def test_lookup_by_name_then_kind_then_other_then_fallback(self, tmp_path: Path) -> None:
        data = builtin_priors("PSMA-617").to_dict()
        site = {**data, "structures": {"kidneys": data["structures"]["kidneys"],
                                       "lesion_node_1": data["structures"]["lesion"]}}
        path = tmp_path / "site.json"
        path.write_text(json.dumps(site))
        pri = load_priors(path)
        assert pri.lookup("Kidney_L")[1] == f"{path}: kidneys"
        assert pri.lookup("lesion_node_1")[1] == f"{path}: lesion_node_1"
        src = pri.lookup("liver")[1]
        assert src.startswith("built-in: liver") and str(path) in src


class TestReadingErrors:
    def _write(self, tmp_path: Path, mutate) -> Path:
        data = builtin_priors("PSMA-617").to_dict()
        mutate(data)
        path = tmp_path / "bad-priors.json"
        path.write_text(json.dumps(data))
        return path

    @pytest.mark.parametrize(("mutate", "message"), [
        (lambda d: d.update(schema="theratwin-priors/9"), "theratwin-priors/1"),
        (lambda d: d["structures"]["kidneys"].update(iiv_cov=[[1, 2, 0], [2, 1, 0], [0, 0, 1]]), "positive definite"),
        (lambda d: d["structures"]["kidneys"].update(iov_cov=[[1, 0.5, 0], [0, 1, 0], [0, 0, 1]]), "symmetric"),
        (lambda d: d["structures"]["kidneys"].update(mean=[1, 2]), "'mean' must be 3"),
        (lambda d: d["structures"]["kidneys"].update(reference_mass_g=0), "reference_mass_g"),
        (lambda d: d["structures"]["kidneys"]["measurement"].update(random_rel_sd=1.5), "must be < 1"),
        (lambda d: d["structures"]["kidneys"].update(colour="red"), "unknown field"),
        (lambda d: d.update(parameters=["a", "b", "c"]), "'parameters' must be"),
        (lambda d: d.update(nuclide="Xx-999"), "nuclide"),
        (lambda d: d.pop("structures"), "missing 'structures'"),
    ])
    def test_bad_files_name_the_file_structure_and_field(self, tmp_path: Path, mutate, message: str) -> None:
        path = self._write(tmp_path, mutate)
        with pytest.raises(tt.InvalidInputError, match=message) as info:
            load_priors(path)
        assert str(path) in str(info.value)
        assert "\n" not in str(info.value)

    def test_schema_rejects_what_the_reader_rejects(self, tmp_path: Path) -> None:
        """The published JSON Schema and the reader agree on the structural errors."""
        data = builtin_priors("PSMA-617").to_dict()
        data["structures"]["kidneys"]["mean"] = [1.0, 2.0]
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(data, priors_json_schema())
        with pytest.raises(tt.InvalidInputError):
            PopulationPriors.from_dict(data)

    def test_unreadable_and_non_json_files(self, tmp_path: Path) -> None:
        with pytest.raises(tt.InvalidInputError, match="cannot read"):
            load_priors(tmp_path / "missing.json")
        bad = tmp_path / "x.json"
        bad.write_text("{")
        with pytest.raises(tt.InvalidInputError, match="not valid JSON"):
            load_priors(bad)

    def test_priors_for_another_radiopharmaceutical_are_refused(self) -> None:
        pri = builtin_priors("DOTATATE")
        with pytest.raises(tt.ConfigurationError, match="DOTATATE"):
            pri.check_matches("PSMA-617", "Lu-177")
        pri.check_matches("177Lu-DOTATATE", "177Lu")
