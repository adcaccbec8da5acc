"""FHIR client pieces that need no server: settings from the environment, TLS policy, JWT signing."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from theratwin.errors import ConfigurationError
from theratwin.fhir import FhirAuth, FhirClient, outcome_summary, public_jwk, sign_rs384_jwt


def test_smart_settings_from_environment(tmp_path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    p = tmp_path / "key.pem"
    p.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    auth = FhirAuth.from_env({"THERATWIN_FHIR_CLIENT_ID": "c1", "THERATWIN_FHIR_PRIVATE_KEY": str(p),
                              "THERATWIN_FHIR_TOKEN_URL": "https://ehr.example/token"})
    assert auth.smart is not None and auth.describe() == "SMART backend services (client c1)"
    assert "PRIVATE" not in repr(auth)
    with pytest.raises(ConfigurationError, match="THERATWIN_FHIR_PRIVATE_KEY"):
        FhirAuth.from_env({"THERATWIN_FHIR_CLIENT_ID": "c1"})
    with pytest.raises(ConfigurationError, match="TLS verification"):
        FhirClient("https://ehr.example/fhir", auth=FhirAuth(), verify=False)
    assert FhirClient("https://ehr.example/fhir", auth=FhirAuth()).verify is True


def test_rs384_jwt_verifies_with_the_public_key():
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    token = sign_rs384_jwt({"iss": "a", "sub": "a"}, pem, kid="k")
    h, c, s = token.split(".")

    def dec(x: str) -> bytes:
        return base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))

    assert json.loads(dec(h)) == {"alg": "RS384", "typ": "JWT", "kid": "k"}
    assert json.loads(dec(c)) == {"iss": "a", "sub": "a"}
    key.public_key().verify(dec(s), f"{h}.{c}".encode(), padding.PKCS1v15(), hashes.SHA384())
    jwk = public_jwk(pem, kid="k")
    assert int.from_bytes(dec(jwk["n"]), "big") == key.public_key().public_numbers().n
    tampered = f"{h}.{c[:-2]}xx.{s}"
    from cryptography.exceptions import InvalidSignature

    with pytest.raises(InvalidSignature):
        key.public_key().verify(dec(s), tampered.rsplit(".", 1)[0].encode(), padding.PKCS1v15(), hashes.SHA384())


def test_outcome_summary_names_issue_and_place():
    oo = {"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "structure", "details": {"text": "Invalid JSON type"},
         "expression": ["Observation.value[x].value"]}]}
    assert outcome_summary(oo) == "error structure at Observation.value[x].value: Invalid JSON type"
    assert outcome_summary({"resourceType": "Patient"}) == ""


def test_credentials_in_the_url_are_refused():
    with pytest.raises(ConfigurationError, match="user information") as err:
        FhirClient("https://user:hunter2@ehr.example/fhir", auth=FhirAuth())
    assert "hunter2" not in str(err.value)
