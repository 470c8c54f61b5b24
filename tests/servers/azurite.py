"""A real Azure Blob Storage emulator, Azurite on Node, on a free port.

It keeps blobs in memory: a restart on the same port is an empty account, whose containers
must be created again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from nexpo_workflows.ports import free_port
from tests.servers import HOST, wait_until_listening

NODE_MODULES = Path(__file__).resolve().parents[2] / "node_modules"
AZURITE_BLOB = NODE_MODULES / ".bin" / "azurite-blob"
# Azurite's well-known development account (documented by Microsoft, not a secret).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
STOP_TIMEOUT_SECONDS = 10.0


def connection_string(port: int) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint=http://{HOST}:{port}/{ACCOUNT};"
    )


@contextlib.asynccontextmanager
async def running_azurite(*, port: int | None = None) -> AsyncIterator[str]:
    """Start Azurite's blob service, yield its connection string, stop it by its PID."""
    if not AZURITE_BLOB.is_file():
        raise RuntimeError(f"no Azurite at {AZURITE_BLOB}: run `npm ci`")
    port = port or free_port(HOST)
    with tempfile.TemporaryFile() as log:
        process = await asyncio.create_subprocess_exec(
            str(AZURITE_BLOB),
            *("--blobHost", HOST, "--blobPort", str(port), "--inMemoryPersistence"),
            # The SDK may be newer than the emulator's API version.
            "--skipApiVersionCheck",
            # Otherwise it tries to send usage data to Microsoft from every test run.
            "--disableTelemetry",
            "--silent",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            # Its own process group, so the stop reaches anything Node starts.
            start_new_session=True,
        )
        try:
            await wait_until_listening(process, port, log, "Azurite")
            yield connection_string(port)
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
