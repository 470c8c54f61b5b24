"""A real S3 HTTP server (moto's) in a subprocess on a free port; its data lives in memory."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from nexpo_workflows.ports import free_port
from tests.servers import HOST, wait_until_listening

MOTO_SERVER = Path(sys.executable).parent / "moto_server"
STOP_TIMEOUT_SECONDS = 10.0


@contextlib.asynccontextmanager
async def running_s3(*, port: int | None = None) -> AsyncIterator[str]:
    """Start moto_server, yield its endpoint URL, stop it by its PID.

    A stop loses every bucket: a server started again on the same ``port`` is an empty one.
    """
    port = port or free_port(HOST)
    with tempfile.TemporaryFile() as log:
        process = await asyncio.create_subprocess_exec(
            str(MOTO_SERVER),
            *("-H", HOST, "-p", str(port)),
            stdout=log,
            stderr=log,
        )
        try:
            await wait_until_listening(process, port, log, "moto_server")
            yield f"http://{HOST}:{port}"
        finally:
            await _stop(process)


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    process.terminate()
    try:
        await asyncio.wait_for(process.wait(), STOP_TIMEOUT_SECONDS)
    except TimeoutError:
        process.kill()
        await process.wait()
