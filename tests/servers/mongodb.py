"""A real MongoDB wire-protocol server (SecantusDB) in a subprocess on a free port."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from nexpo_workflows.ports import accepts_connections, free_port
from tests.servers import HOST, wait_until_listening

SECANTUSD = Path(sys.executable).parent / "secantusd-py"
STOP_TIMEOUT_SECONDS = 10.0


@contextlib.asynccontextmanager
async def running_mongodb(
    *, port: int | None = None, storage_path: Path | None = None
) -> AsyncIterator[str]:
    """Start SecantusDB, yield its URL, stop it by its PID.

    ``storage_path`` keeps the data across a stop and a start on the same ``port``
    (a restarted server); without it the data lives in memory and dies with the process.
    """
    port = port or free_port(HOST)
    storage = str(storage_path) if storage_path is not None else ":memory:"
    with tempfile.TemporaryFile() as log:
        process = await asyncio.create_subprocess_exec(
            str(SECANTUSD),
            *("--host", HOST, "--port", str(port), "--storage-path", storage),
            *("--log-level", "WARNING"),
            stdout=log,
            stderr=log,
        )
        try:
            await wait_until_listening(process, port, log, "SecantusDB")
            # The replica-set hello names this one host; a direct connection skips discovery.
            yield f"mongodb://{HOST}:{port}/?directConnection=true"
        finally:
            await _stop(process, port)


async def _stop(process: asyncio.subprocess.Process, port: int) -> None:
    if process.returncode is not None:
        return
    process.terminate()
    deadline = asyncio.get_running_loop().time() + STOP_TIMEOUT_SECONDS
    while asyncio.get_running_loop().time() < deadline:
        try:
            await asyncio.wait_for(process.wait(), 0.05)
            return
        except TimeoutError:
            # SecantusDB's accept thread sits in a blocking accept() that closing the
            # socket does not interrupt, so it sees the stop only when one more client
            # arrives; without this knock every stop waits out its 2 s join timeout.
            await accepts_connections(HOST, port)
    process.kill()
    await process.wait()
