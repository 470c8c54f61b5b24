"""The HTTP gateway: FastAPI application and its server."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from nexpo_workflows import __version__
from nexpo_workflows.api.auth import Authenticator, require_auth
from nexpo_workflows.api.deps import GatewayState
from nexpo_workflows.api.routes import (
    cloud,
    codec,
    content,
    decisions,
    health,
    sync,
    users,
    workflows,
)
from nexpo_workflows.edge_errors import EDGE_ERRORS, RETRY_AFTER_SECONDS, classify


def create_app(state: GatewayState) -> FastAPI:
    app = FastAPI(
        title="nexpo-workflows gateway",
        version=__version__,
        description="Start and inspect durable workflows running on Temporal.",
    )
    app.state.gateway = state
    app.state.authenticator = Authenticator(state.services.settings)
    app.state.readiness = health.ReadinessProbe(state)
    # /healthz, /readyz and /metrics stay open for probes and scrapers; the rest need a key.
    app.include_router(health.router)
    authenticated = [Depends(require_auth)]
    for router in (
        workflows.router,
        users.router,
        cloud.router,
        decisions.router,
        sync.router,
        content.router,
    ):
        app.include_router(router, dependencies=authenticated, responses=_EDGE_RESPONSES)
    # Authenticated by its own router; the Web UI calls it from the browser, hence CORS
    # (a preflight carries no credentials and is answered by the middleware).
    app.include_router(codec.router, responses=_EDGE_RESPONSES)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=state.services.settings.codec_cors_origins,
        allow_credentials=True,
        allow_methods=["POST"],
        allow_headers=["Content-Type", "X-Namespace", "Authorization"],
    )
    app.add_exception_handler(RequestValidationError, _validation_error)
    for error_type in EDGE_ERRORS:
        app.add_exception_handler(error_type, _edge_error)
    return app


_EDGE_STATUS = {
    "unavailable": status.HTTP_503_SERVICE_UNAVAILABLE,
    "refused": status.HTTP_422_UNPROCESSABLE_CONTENT,
    "not_found": status.HTTP_404_NOT_FOUND,
    "conflict": status.HTTP_409_CONFLICT,
}
_EDGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    503: {
        "description": "A dependency (temporal, database, object store) is down, or too "
        "many passwords wait to be hashed; the body names it, Retry-After says when to try "
        "again"
    },
}


async def _edge_error(request: Request, error: Exception) -> JSONResponse:
    """A dependency down or refusing: its status, the dependency named, never a 500."""
    failure = classify(error)
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if failure.kind == "unavailable" else None
    return JSONResponse(
        {"detail": failure.message, "dependency": failure.dependency},
        status_code=_EDGE_STATUS[failure.kind],
        headers=headers,
    )


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    """422 with each field's error, without echoing the input (it may be a password)."""
    assert isinstance(error, RequestValidationError)
    details = [
        {key: value for key, value in problem.items() if key not in ("input", "ctx", "url")}
        for problem in error.errors()
    ]
    return JSONResponse({"detail": details}, status_code=422)


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the process that embeds it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def embedded_server(app: FastAPI, host: str, port: int, log_level: str) -> EmbeddedServer:
    return EmbeddedServer(
        uvicorn.Config(app, host=host, port=port, log_level=log_level.lower(), lifespan="off")
    )
