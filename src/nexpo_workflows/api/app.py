"""The HTTP gateway: FastAPI application and its server."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from nexpo_workflows import __version__
from nexpo_workflows.api.deps import GatewayState
from nexpo_workflows.api.routes import health, users, workflows


def create_app(state: GatewayState) -> FastAPI:
    app = FastAPI(
        title="nexpo-workflows gateway",
        version=__version__,
        description="Start and inspect durable workflows running on Temporal.",
    )
    app.state.gateway = state
    app.include_router(health.router)
    app.include_router(workflows.router)
    app.include_router(users.router)
    app.add_exception_handler(RequestValidationError, _validation_error)
    return app


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
