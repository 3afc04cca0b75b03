"""OIDC / JWT bearer tokens, verified against a JWKS from a file or a URL.

Claims become grants through ``role_map``: a claim value (e.g. a group ``ml-deployers``) maps
to grant strings (``deployer`` or ``deployer@model:churn``); values that map to nothing grant
nothing. Issuer and audience are checked when configured; expiry always is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlharbor.core.errors import AuthenticationError, ConfigError
from mlharbor.security.policy import Grant, Principal

DEFAULT_ALGORITHMS = ("RS256", "ES256", "EdDSA", "PS256")


class TokenVerifier:
    def __init__(
        self, *, jwks_file: Path | None = None, jwks_url: str | None = None,
        issuer: str | None = None, audience: str | None = None,
        role_claim: str = "roles", subject_claim: str = "sub",
        role_map: Mapping[str, Sequence[str]] | None = None,
        algorithms: Sequence[str] = DEFAULT_ALGORITHMS, leeway_s: float = 30.0,
    ) -> None:
        if (jwks_file is None) == (jwks_url is None):
            raise ConfigError("Configure exactly one of security.jwks_file and "
                              "security.jwks_url to accept bearer tokens.")
        self.issuer = issuer
        self.audience = audience
        self.role_claim = role_claim
        self.subject_claim = subject_claim
        self.algorithms = list(algorithms)
        self.leeway_s = leeway_s
        self.role_map = {k: tuple(Grant.parse(g) for g in v) for k, v in (role_map or {}).items()}
        self._jwks_file = jwks_file
        self._client: Any = None
        self._keyset: Any = None
        if jwks_url is not None:
            import jwt

            self._client = jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=300, timeout=5)
        else:
            assert jwks_file is not None
            self._keyset = _load_jwks_file(jwks_file)

    @property
    def fetches_remote(self) -> bool:
        """True when verifying may fetch the JWKS over the network (run it off the loop)."""
        return self._client is not None

    def _signing_key(self, token: str) -> Any:
        import jwt

        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise AuthenticationError("The bearer token is not a valid JWT.") from exc
        try:
            if self._client is not None:
                return self._client.get_signing_key_from_jwt(token).key
            for key in self._keyset.keys:
                if kid is None or key.key_id == kid:
                    return key.key
        except jwt.PyJWKClientError as exc:
            raise AuthenticationError(
                "The bearer token's signing key is not in the configured JWKS.",
                hint="Check security.jwks_url and the token's issuer.",
            ) from exc
        raise AuthenticationError("The bearer token's signing key is not in the configured "
                                  "JWKS.", hint="Check security.jwks_file.")

    def verify(self, token: str) -> Principal:
        """The principal a valid token names; AuthenticationError otherwise."""
        import jwt

        key = self._signing_key(token)
        options = {"require": ["exp", self.subject_claim],
                   "verify_aud": self.audience is not None,
                   "verify_iss": self.issuer is not None}
        try:
            claims = jwt.decode(
                token, key=key, algorithms=self.algorithms, audience=self.audience,
                issuer=self.issuer, leeway=self.leeway_s, options=options,  # type: ignore[arg-type]
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthenticationError("The bearer token has expired.",
                                      hint="Fetch a fresh token from your identity provider.") \
                from exc
        except jwt.PyJWTError as exc:
            raise AuthenticationError(
                f"The bearer token was refused: {type(exc).__name__}.",
                hint="Check the token's issuer, audience and signing key.",
            ) from exc
        subject = str(claims[self.subject_claim])
        return Principal(name=f"oidc:{subject}", kind="oidc", grants=self.grants_for(claims),
                         credential=f"oidc:{subject}")

    def grants_for(self, claims: Mapping[str, Any]) -> tuple[Grant, ...]:
        values = claims.get(self.role_claim, [])
        if isinstance(values, str):
            values = values.split()
        grants: list[Grant] = []
        for value in values if isinstance(values, list) else []:
            grants.extend(self.role_map.get(str(value), ()))
        return tuple(dict.fromkeys(grants))


def _load_jwks_file(path: Path) -> Any:
    import jwt

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return jwt.PyJWKSet.from_dict(data)
    except (OSError, ValueError, jwt.PyJWTError) as exc:
        raise ConfigError(f"Cannot use the JWKS file {str(path)!r}: {type(exc).__name__}.",
                          hint="It must be a JSON Web Key Set ({\"keys\": [...]}).") from exc


def verifier_from_settings(security: Any) -> TokenVerifier | None:
    """The verifier configured in ``SecuritySettings``, or None when tokens are not accepted."""
    if security.jwks_file is None and security.jwks_url is None:
        return None
    return TokenVerifier(
        jwks_file=security.jwks_file, jwks_url=security.jwks_url, issuer=security.jwt_issuer,
        audience=security.jwt_audience, role_claim=security.jwt_role_claim,
        subject_claim=security.jwt_subject_claim, role_map=security.jwt_role_map,
    )
