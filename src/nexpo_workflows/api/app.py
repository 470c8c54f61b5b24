"""The HTTP gateway: FastAPI application and its server."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from nexpo_workflows import __version__
from nexpo_workflows.api.deps import GatewayState
from nexpo_workflows.api.routes import health, workflows


def create_app(state: GatewayState) -> FastAPI:
    app = FastAPI(
        title="nexpo-workflows gateway",
        version=__version__,
        description="Start and inspect durable workflows running on Temporal.",
    )
    app.state.gateway = state
    app.include_router(health.router)
    app.include_router(workflows.router)
    return app


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the process that embeds it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def embedded_server(app: FastAPI, host: str, port: int, log_level: str) -> EmbeddedServer:
    return EmbeddedServer(
        uvicorn.Config(app, host=host, port=port, log_level=log_level.lower(), lifespan="off")
    )
