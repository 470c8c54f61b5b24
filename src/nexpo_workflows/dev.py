"""``nexpo-workflows dev``: embedded Temporal dev server, worker and gateway in one command."""

from __future__ import annotations

import asyncio
import logging
import os

from nexpo_workflows.api.app import create_app, embedded_server
from nexpo_workflows.api.auth import hash_api_key, new_api_key
from nexpo_workflows.api.deps import GatewayState
from nexpo_workflows.client import connect
from nexpo_workflows.config import Settings
from nexpo_workflows.dev_record import (
    DevStackRecord,
    remove_record,
    running_dev_stack,
    write_record,
)
from nexpo_workflows.devserver import DevServerError, start_dev_server
from nexpo_workflows.ports import ensure_free, split_host_port
from nexpo_workflows.services import Services
from nexpo_workflows.telemetry import create_runtime
from nexpo_workflows.tracing import configure_tracing
from nexpo_workflows.worker import build_worker, run_worker_until, stop_on_signals

log = logging.getLogger(__name__)


def metrics_url(bind_address: str) -> str | None:
    return f"http://{bind_address}/metrics" if bind_address else None


async def run_dev_stack(settings: Settings) -> None:
    running = running_dev_stack(settings.data_dir)
    if running is not None:
        raise DevServerError(
            f"a dev stack already runs with DATA_DIR {settings.data_dir} (pid {running.pid}, "
            f"gateway {running.gateway_url}); stop it first or choose another DATA_DIR"
        )
    host, temporal_port = split_host_port(settings.temporal_server_url)
    host = "127.0.0.1" if host == "localhost" else host
    # Every port is checked before anything starts, so a clash never leaves half a stack.
    ensure_free(settings.api_host, settings.api_port, "gateway")
    if settings.metrics_bind_address:
        ensure_free(*split_host_port(settings.metrics_bind_address), "Prometheus metrics")
    tracing = configure_tracing(settings)
    stop = asyncio.Event()
    stop_on_signals(stop)
    server = await start_dev_server(
        host=host,
        port=temporal_port,
        ui_port=settings.temporal_ui_port,
        db_file=settings.data_dir / "temporal.db",
        log_path=settings.data_dir / "temporal.log",
        namespace=settings.temporal_namespace,
        # The Web UI decrypts payloads for display through the gateway's codec server.
        codec_endpoint=f"http://{settings.api_host}:{settings.api_port}/codec"
        if settings.payload_encryption_keys
        else None,
    )
    services: Services | None = None
    try:
        # A fresh key per run, printed once, so the gateway is never open even in development.
        api_key = new_api_key()
        settings = settings.model_copy(
            update={
                "enable_temporal": True,
                "temporal_server_url": server.address,
                "api_key_hashes": [*settings.api_key_hashes, hash_api_key(api_key)],
            }
        )
        # One runtime serves the worker's and the gateway's metrics on one port.
        client = await connect(
            settings,
            runtime=create_runtime(settings.metrics_bind_address),
            interceptors=tracing.interceptors,
        )
        services = Services.from_settings(settings, client)
        worker = build_worker(client, services)
        gateway_url = f"http://{settings.api_host}:{settings.api_port}"
        app = create_app(GatewayState(services, client, metrics_url(settings.metrics_bind_address)))
        tracing.instrument_app(app)
        api = embedded_server(
            app,
            settings.api_host,
            settings.api_port,
            settings.log_level,
        )
        serving = asyncio.create_task(api.serve())
        # Announce only once the gateway listens: whoever reads the banner may call it at once.
        while not api.started:
            if serving.done():
                serving.result()
                raise DevServerError(f"the gateway did not start on {gateway_url}")
            await asyncio.sleep(0.02)
        # Before the banner: whoever reads it may run a command next to the stack at once.
        write_record(
            settings.data_dir,
            DevStackRecord(
                pid=os.getpid(),
                temporal_server_url=server.address,
                temporal_namespace=settings.temporal_namespace,
                temporal_task_queue=settings.temporal_task_queue,
                gateway_url=gateway_url,
                temporal_ui_url=server.ui_url,
            ),
        )
        print(
            "nexpo-workflows dev stack is up (Ctrl-C stops it)\n"
            f"  gateway          {gateway_url}\n"
            f"  OpenAPI docs     {gateway_url}/docs\n"
            f"  Temporal Web UI  {server.ui_url}\n"
            f"  Temporal gRPC    {server.address} (namespace {settings.temporal_namespace})\n"
            f"  metrics          {gateway_url}/metrics\n"
            f"  API key          {api_key}  (send as X-API-Key; valid until Ctrl-C)\n"
            f"  data             {settings.data_dir.resolve()}",
            flush=True,
        )
        try:
            await run_worker_until(worker, stop)
        finally:
            remove_record(settings.data_dir)
            api.should_exit = True
            await serving
    finally:
        if services is not None:
            await services.close()
        tracing.shutdown()
        await server.stop()
        log.info("dev stack stopped")
