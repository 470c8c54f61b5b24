"""Gateway authentication: every route but the probes and metrics needs an API key or JWT."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import AsyncIterator, Callable

import httpx
import jwt
import pytest
from fastapi import FastAPI

from nexpo_workflows.api.app import create_app
from nexpo_workflows.api.deps import GatewayState
from nexpo_workflows.config import ConfigError, Settings, load_settings
from nexpo_workflows.services import Services
from tests.conftest import API_KEY, run_cli

JWT_SECRET = "a-test-secret-of-at-least-32-bytes-long!"
OPEN = {
    "/healthz",
    "/readyz",
    "/metrics",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
    "/openapi.json",
}


@pytest.fixture
async def app(make_settings: Callable[..., Settings]) -> AsyncIterator[FastAPI]:
    settings = make_settings(
        enable_temporal=False, auth_jwt_secret=JWT_SECRET, auth_jwt_audience="nexpo"
    )
    services = Services.from_settings(settings)
    yield create_app(GatewayState(services, None, metrics_url=None))
    await services.close()


@pytest.fixture
async def gateway(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        yield http


def token(**claims: object) -> str:
    payload = {"sub": "tester", "aud": "nexpo", "exp": int(time.time()) + 60, **claims}
    return jwt.encode(payload, JWT_SECRET, algorithm="HS256")


async def test_every_route_but_probes_and_metrics_refuses_anonymous_requests(
    app: FastAPI, gateway: httpx.AsyncClient
) -> None:
    paths = app.openapi()["paths"]
    protected = [
        (path, method) for path, ops in paths.items() if path not in OPEN for method in ops
    ]
    assert len(protected) >= 4
    for path, method in protected:
        response = await gateway.request(method, re.sub(r"\{[^}]+\}", "some-id", path))
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
    assert (await gateway.get("/healthz")).status_code == 200
    assert (await gateway.get("/readyz")).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        lambda: {"X-API-Key": API_KEY},
        lambda: {"Authorization": f"Bearer {API_KEY}"},
        # Made when the test runs: a token made at collection may have expired by then.
        lambda: {"Authorization": f"Bearer {token()}"},
    ],
    ids=["api-key-header", "api-key-bearer", "jwt"],
)
async def test_valid_credentials_are_accepted(
    gateway: httpx.AsyncClient, headers: Callable[[], dict[str, str]]
) -> None:
    response = await gateway.get("/api/users/nobody", headers=headers())
    assert response.status_code == 404  # past authentication: the user does not exist


@pytest.mark.parametrize(
    "headers",
    [
        {"X-API-Key": API_KEY + "x"},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": f"Bearer {token(exp=int(time.time()) - 10)}"},
        {"Authorization": f"Bearer {token(aud='someone-else')}"},
        {"Authorization": "Bearer " + jwt.encode({"aud": "nexpo", "exp": 2**40}, "x" * 40)},
        {"Authorization": "Bearer " + jwt.encode({"aud": "nexpo"}, JWT_SECRET)},
    ],
    ids=["wrong-key", "garbage", "expired", "audience", "signature", "no-expiry"],
)
async def test_invalid_credentials_are_refused(
    gateway: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    response = await gateway.get("/api/users/nobody", headers=headers)
    assert response.status_code == 401


async def test_api_key_command_prints_a_key_and_its_hash(
    cli: list[str], cli_env: dict[str, str]
) -> None:
    result = await run_cli([*cli, "api-key"], cli_env)
    assert result.returncode == 0
    key = re.search(r"API key \(shown once\): (\S+)", result.stdout)
    digest = re.search(r"API_KEY_HASHES entry: ([0-9a-f]{64})", result.stdout)
    assert key is not None
    assert digest is not None
    assert hashlib.sha256(key.group(1).encode()).hexdigest() == digest.group(1)


def test_a_malformed_hash_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEY_HASHES", "nxp_this-is-a-key-not-a-hash")
    with pytest.raises(ConfigError, match="API_KEY_HASHES"):
        load_settings(_env_file=None)
