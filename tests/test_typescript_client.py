"""The TypeScript client (clients/typescript): its Node tests, run against a real stack.

The stack is the dev stack's parts: the session's Temporal server, a worker with every
workflow, and the gateway served over HTTP, payloads encrypted with a two-key ring; beside it,
a degraded gateway (its database down, no Temporal) for the 503s. ``npm test`` compiles the
package and runs ``node --test``; it needs ``npm ci`` in clients/typescript first
(scripts/test.sh does it).
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from temporalio.client import Client

from nexpo_workflows.api.app import create_app, embedded_server
from nexpo_workflows.api.deps import GatewayState
from nexpo_workflows.client import connect
from nexpo_workflows.config import Settings
from nexpo_workflows.ports import free_port
from nexpo_workflows.services import Services
from nexpo_workflows.worker import build_worker
from tests.conftest import API_KEY, CREDENTIALS_IN_USE, SUBMITTED_PASSWORDS

PACKAGE = Path(__file__).resolve().parent.parent / "clients" / "typescript"


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """The gateway app on a free port of this loop, as `nexpo-workflows dev` serves it."""
    port = free_port()
    server = embedded_server(app, "127.0.0.1", port, "warning")
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError(f"the gateway did not start on port {port}")
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


def new_key() -> str:
    key = base64.b64encode(os.urandom(32)).decode()
    CREDENTIALS_IN_USE.add(key)
    return key


async def test_the_typescript_client_against_gateway_worker_and_temporal(
    make_settings: Callable[..., Settings], temporal_server_address: str
) -> None:
    assert (PACKAGE / "node_modules").is_dir(), "run `npm ci` in clients/typescript first"
    keys = f"old:{new_key()},new:{new_key()}"
    settings = make_settings(payload_encryption_keys=keys)
    client: Client = await connect(settings)
    services = Services.from_settings(settings, client)
    # ENABLE_TEMPORAL=false, and its only database is a port where nothing listens.
    degraded = Services.from_settings(
        make_settings(
            enable_temporal=False,
            enable_postgres=True,
            postgres_url=f"postgresql://postgres@127.0.0.1:{free_port()}/postgres",
        )
    )
    password = f"typescript-secret-{uuid.uuid4().hex}"
    SUBMITTED_PASSWORDS.add(password)
    env = {
        **{name: value for name, value in os.environ.items() if not name.startswith("TEMPORAL_")},
        "NEXPO_API_KEY": API_KEY,
        "NEXPO_TEST_PASSWORD": password,
        "TEMPORAL_SERVER_URL": temporal_server_address,
        "TEMPORAL_NAMESPACE": settings.temporal_namespace,
        "TEMPORAL_TASK_QUEUE": settings.temporal_task_queue,
        "PAYLOAD_ENCRYPTION_KEYS": keys,
    }
    try:
        async with (
            build_worker(client, services),
            serving(create_app(GatewayState(services, client, None))) as gateway_url,
            serving(create_app(GatewayState(degraded, None, None))) as degraded_url,
        ):
            process = await asyncio.create_subprocess_exec(
                "npm",
                "test",
                cwd=PACKAGE,
                env={
                    **env,
                    "NEXPO_GATEWAY_URL": gateway_url,
                    "NEXPO_DEGRADED_GATEWAY_URL": degraded_url,
                },
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            stdout, _ = await asyncio.wait_for(process.communicate(), 240)
    finally:
        await services.close()
        await degraded.close()
    output = stdout.decode()
    assert process.returncode == 0, output
    counts = dict(re.findall(r"^# (tests|pass|fail|skipped|todo|cancelled) (\d+)$", output, re.M))
    assert counts["fail"] == counts["skipped"] == counts["todo"] == counts["cancelled"] == "0"
    assert counts["pass"] == counts["tests"] != "0", output
