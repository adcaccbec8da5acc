"""SMART Backend Services authorisation (client-credentials grant with a signed JWT assertion).

Implements the client side of HL7 SMART App Launch 2.x, "Backend Services": the client signs a short-lived JWT
(``iss`` = ``sub`` = client_id, ``aud`` = token URL, ``exp`` <= 5 min, unique ``jti``) with its private key
(RS384, as the specification requires every server to support) and exchanges it at the token endpoint for an
access token (``grant_type=client_credentials``,
``client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer``).

The JWS is made here with ``cryptography`` (RSASSA-PKCS1-v1_5 with SHA-384 = JOSE "RS384", RFC 7518 §3.3)
because PyJWT is not a dependency; compact serialisation per RFC 7515 §7.1.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError, PushError

__all__ = ["sign_rs384_jwt", "SmartBackendAuth", "public_jwk"]

_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _load_private_key(pem: bytes) -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigurationError("SMART backend services: the private key must be an RSA key (RS384).")
    return key


def sign_rs384_jwt(claims: dict[str, Any], private_key_pem: bytes, *, kid: str | None = None) -> str:
    """Compact JWS of ``claims`` signed with RS384 (RSASSA-PKCS1-v1_5, SHA-384).

    Parameters
    ----------
    claims
        JWT claims (JSON-serialisable).
    private_key_pem
        PEM-encoded RSA private key (unencrypted).
    kid
        Key id put in the JOSE header, so the server can pick the key from the client's JWK set.
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    key = _load_private_key(private_key_pem)
    header: dict[str, Any] = {"alg": "RS384", "typ": "JWT"}
    if kid:
        header["kid"] = kid
    signing_input = (_b64url(json.dumps(header, separators=(",", ":")).encode())
                     + "." + _b64url(json.dumps(claims, separators=(",", ":")).encode()))
    sig = key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA384())
    return signing_input + "." + _b64url(sig)


def public_jwk(private_key_pem: bytes, *, kid: str) -> dict[str, str]:
    """The public JWK (RFC 7517) of an RSA private key, for registering the client with a server."""
    key = _load_private_key(private_key_pem)
    nums = key.public_key().public_numbers()

    def b64int(i: int) -> str:
        return _b64url(i.to_bytes((i.bit_length() + 7) // 8, "big"))

    return {"kty": "RSA", "alg": "RS384", "use": "sig", "kid": kid, "n": b64int(nums.n), "e": b64int(nums.e)}


@dataclass
class SmartBackendAuth:
    """Access tokens from a SMART backend-services token endpoint, cached until shortly before expiry.

    Parameters
    ----------
    token_url
        The server's token endpoint; empty: discovered from ``[base]/.well-known/smart-configuration``
        (``token_endpoint``) on first use, as SMART App Launch 2.x specifies.
    client_id
        The client id registered with the server.
    private_key_pem
        The client's RSA private key (PEM). Never logged.
    kid
        Key id of the registered public key.
    scope
        Requested scopes, e.g. ``"system/*.write system/*.read"``.
    """

    token_url: str
    client_id: str
    private_key_pem: bytes = field(repr=False)
    kid: str | None = None
    scope: str = "system/*.read system/*.write"
    _token: str | None = field(default=None, repr=False)
    _expires_s: float = 0.0

    @classmethod
    def from_env(cls, env: dict[str, str]) -> SmartBackendAuth | None:
        """From ``THERATWIN_FHIR_CLIENT_ID``, ``THERATWIN_FHIR_PRIVATE_KEY`` (path to PEM), optional
        ``THERATWIN_FHIR_TOKEN_URL`` (default: discovered), ``THERATWIN_FHIR_KID`` and ``THERATWIN_FHIR_SCOPE``."""
        cid = env.get("THERATWIN_FHIR_CLIENT_ID")
        key_path = env.get("THERATWIN_FHIR_PRIVATE_KEY")
        url = env.get("THERATWIN_FHIR_TOKEN_URL", "")
        if not (cid or key_path or url):
            return None
        if not (cid and key_path):
            raise ConfigurationError(
                "SMART backend services needs THERATWIN_FHIR_CLIENT_ID and THERATWIN_FHIR_PRIVATE_KEY (PEM file) "
                "together (THERATWIN_FHIR_TOKEN_URL is optional); some are missing."
            )
        try:
            pem = Path(key_path).read_bytes()
        except OSError as exc:
            raise ConfigurationError(f"Cannot read the SMART private key {key_path}: {exc.strerror}.") from exc
        return cls(url, cid, pem, env.get("THERATWIN_FHIR_KID"),
                   env.get("THERATWIN_FHIR_SCOPE", "system/*.read system/*.write"))

    def assertion(self) -> str:
        """A fresh signed client assertion (valid for 5 minutes, the specification's maximum)."""
        now = int(time.time())
        claims = {"iss": self.client_id, "sub": self.client_id, "aud": self.token_url,
                  "exp": now + 300, "iat": now, "jti": str(uuid.uuid4())}
        return sign_rs384_jwt(claims, self.private_key_pem, kid=self.kid)

    def discover(self, session: Any, base_url: str, *, verify: bool | str = True, timeout_s: float = 30.0) -> str:
        """Set ``token_url`` from ``[base]/.well-known/smart-configuration`` (when it is not set yet)."""
        import requests

        if self.token_url:
            return self.token_url
        url = base_url.rstrip("/") + "/.well-known/smart-configuration"
        try:
            r = session.get(url, verify=verify, timeout=timeout_s, headers={"Accept": "application/json"})
            conf = r.json() if r.status_code == 200 else {}
        except (requests.RequestException, ValueError) as exc:
            raise PushError(f"SMART discovery at {url} failed: {exc}") from exc
        token_url = conf.get("token_endpoint") if isinstance(conf, dict) else None
        if not token_url:
            raise PushError(f"{url} names no token_endpoint (HTTP {r.status_code}); set THERATWIN_FHIR_TOKEN_URL.")
        if "client_credentials" not in conf.get("grant_types_supported", ["client_credentials"]):
            raise PushError(f"The FHIR server at {base_url} does not offer the client_credentials grant "
                            "(SMART backend services).")
        self.token_url = str(token_url)
        return self.token_url

    def token(self, session: Any, *, verify: bool | str = True, timeout_s: float = 30.0) -> str:
        """A valid access token (fetched when none is cached or it expires within 30 s)."""
        if self._token and time.time() < self._expires_s - 30:
            return self._token
        import requests

        if not self.token_url:
            raise PushError("SMART token endpoint unknown: call discover() or set THERATWIN_FHIR_TOKEN_URL.")
        form = {"grant_type": "client_credentials", "scope": self.scope,
                "client_assertion_type": _ASSERTION_TYPE, "client_assertion": self.assertion()}
        try:
            r = session.post(self.token_url, data=form, verify=verify, timeout=timeout_s,
                             headers={"Accept": "application/json"})
        except requests.RequestException as exc:
            raise PushError(f"SMART token request to {self.token_url} failed: {exc}") from exc
        if r.status_code != 200:
            try:
                err = r.json()
                why = f"{err.get('error')}: {err.get('error_description', '')}"
            except ValueError:
                why = r.text[:200]
            raise PushError(f"SMART token endpoint {self.token_url} refused the client assertion "
                            f"(HTTP {r.status_code}, {why}). Check the client id and the registered key.")
        body = r.json()
        self._token = str(body["access_token"])
        self._expires_s = time.time() + float(body.get("expires_in", 300))
        return self._token
