"""``nexpo-workflows api``: the gateway as a process of its own."""

from __future__ import annotations

import uvicorn

from nexpo_workflows.api.app import create_app
from nexpo_workflows.api.deps import GatewayState
from nexpo_workflows.client import connect
from nexpo_workflows.config import Settings
from nexpo_workflows.dev import metrics_url
from nexpo_workflows.services import Services
from nexpo_workflows.telemetry import create_runtime
from nexpo_workflows.tracing import configure_tracing


async def serve_api(settings: Settings) -> None:
    tracing = configure_tracing(settings)
    client = None
    if settings.enable_temporal:
        runtime = create_runtime(settings.api_metrics_bind_address)
        client = await connect(settings, runtime=runtime, interceptors=tracing.interceptors)
    services = Services.from_settings(settings, client)
    state = GatewayState(
        services, client, metrics_url(settings.api_metrics_bind_address) if client else None
    )
    app = create_app(state)
    tracing.instrument_app(app)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.api_host,
            port=settings.api_port,
            log_level=settings.log_level.lower(),
            lifespan="off",
        )
    )
    try:
        await server.serve()
    finally:
        await services.close()
        tracing.shutdown()
