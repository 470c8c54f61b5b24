"""Real servers the tests start, each stopped by its own PID."""

from __future__ import annotations

import asyncio
from typing import IO

from nexpo_workflows.ports import accepts_connections

HOST = "127.0.0.1"
START_TIMEOUT_SECONDS = 20.0


async def wait_until_listening(
    process: asyncio.subprocess.Process, port: int, log: IO[bytes], what: str
) -> None:
    """Return once ``port`` accepts connections; fail with the server's output if it dies."""
    deadline = asyncio.get_running_loop().time() + START_TIMEOUT_SECONDS
    while not await accepts_connections(HOST, port):
        if process.returncode is not None or asyncio.get_running_loop().time() > deadline:
            log.seek(0)
            output = log.read().decode(errors="replace")
            raise RuntimeError(f"{what} did not start on port {port}:\n{output}")
        await asyncio.sleep(0.05)
