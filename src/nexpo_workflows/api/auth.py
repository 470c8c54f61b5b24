"""Gateway authentication: API keys (stored only as SHA-256 hashes) or bearer JWTs (HS256).

Keys are random tokens of 32 bytes, so one SHA-256 is enough to store them safely: unlike
passwords, they cannot be guessed from a dictionary.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Annotated

import jwt
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from nexpo_workflows.config import Settings

API_KEY_PREFIX = "nxp_"

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="ApiKey")
_bearer = HTTPBearer(auto_error=False, scheme_name="Bearer")


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self._hashes = [h.lower() for h in settings.api_key_hashes]
        secret = settings.auth_jwt_secret
        self._jwt_secret = secret.get_secret_value() if secret else None
        self._audience = settings.auth_jwt_audience
        self._issuer = settings.auth_jwt_issuer

    def _valid_api_key(self, key: str) -> bool:
        digest = hash_api_key(key)
        # Compare against every hash, so the time taken does not say which one matched.
        matches = [hmac.compare_digest(digest, known) for known in self._hashes]
        return any(matches)

    def _valid_jwt(self, token: str) -> bool:
        if self._jwt_secret is None:
            return False
        try:
            jwt.decode(
                token,
                self._jwt_secret,
                algorithms=["HS256"],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp"]},
            )
        except jwt.InvalidTokenError:
            return False
        return True

    def accepts(self, api_key: str | None, bearer: str | None) -> bool:
        if api_key is not None and self._valid_api_key(api_key):
            return True
        if bearer is None:
            return False
        return self._valid_api_key(bearer) or self._valid_jwt(bearer)


def has_credentials(request: Request) -> bool:
    """Whether the request carries a valid API key or JWT, for an open route that says more
    to a caller with credentials (read from the headers: the route declares no security
    scheme, since it answers without one)."""
    authenticator: Authenticator = request.app.state.authenticator
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    bearer = token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return authenticator.accepts(request.headers.get("X-API-Key"), bearer)


async def require_auth(
    request: Request,
    api_key: Annotated[str | None, Depends(_api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Refuse the request with 401 unless it carries a valid API key or JWT."""
    authenticator: Authenticator = request.app.state.authenticator
    if not authenticator.accepts(api_key, bearer.credentials if bearer else None):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a valid API key (X-API-Key or Authorization: Bearer) or JWT is required",
            headers={"WWW-Authenticate": "Bearer"},
        )
