"""A real Cosmos DB (NoSQL API) emulator, ``@vercel/cosmosdb-server`` on Node, on a free port.

It serves HTTPS with a self-signed certificate (clients pass ``connection_verify=False``),
accepts any key, and keeps its data in memory: a restart on the same port is an empty
account.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from pydantic import SecretStr

from nexpo_workflows.ports import free_port
from tests.servers import HOST, wait_until_listening

NODE_MODULES = Path(__file__).resolve().parents[2] / "node_modules"
COSMOSDB_SERVER = NODE_MODULES / ".bin" / "cosmosdb-server"
# The published key of Microsoft's emulator: what a client configured for an emulator sends.
EMULATOR_KEY = SecretStr(
    "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=="
)
STOP_TIMEOUT_SECONDS = 10.0


@contextlib.asynccontextmanager
async def running_cosmosdb(*, port: int | None = None) -> AsyncIterator[str]:
    """Start the emulator, yield its endpoint (``https://127.0.0.1:PORT``), stop it by its PID."""
    if not COSMOSDB_SERVER.is_file():
        raise RuntimeError(f"no Cosmos DB emulator at {COSMOSDB_SERVER}: run `npm ci`")
    port = port or free_port(HOST)
    with tempfile.TemporaryFile() as log:
        process = await asyncio.create_subprocess_exec(
            str(COSMOSDB_SERVER),
            *("--host", HOST, "-p", str(port)),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            # Its own process group, so the stop reaches anything Node starts.
            start_new_session=True,
        )
        try:
            await wait_until_listening(process, port, log, "the Cosmos DB emulator")
            yield f"https://{HOST}:{port}"
        finally:
            await _stop(process)


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), STOP_TIMEOUT_SECONDS)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
