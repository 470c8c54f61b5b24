"""`nexpo-workflows dev`: one command brings up Temporal + Web UI, worker and gateway."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from temporalio.client import Client

from nexpo_workflows.ports import free_port
from tests.conftest import run_cli


def processes_mentioning(text: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if text.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
    return found


@pytest.fixture
def dev_env(cli_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    return {
        **cli_env,
        "DATA_DIR": str(tmp_path / "devdata"),
        "TEMPORAL_SERVER_URL": f"127.0.0.1:{free_port()}",
        "TEMPORAL_UI_PORT": str(free_port()),
        "TEMPORAL_TASK_QUEUE": "main-task-queue",
        "API_PORT": str(free_port()),
        "METRICS_BIND_ADDRESS": f"127.0.0.1:{free_port()}",
    }


@contextlib.asynccontextmanager
async def dev_stack(cli: list[str], env: dict[str, str]) -> AsyncIterator[str]:
    """Start the stack, wait for its banner, and yield it; SIGINT must end it with code 0."""
    process = await asyncio.create_subprocess_exec(
        *cli, "dev", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    assert process.stdout is not None
    banner: list[str] = []
    try:
        async with asyncio.timeout(60):
            while "data " not in (line := (await process.stdout.readline()).decode()):
                assert line, "dev stack exited early:\n" + "".join(banner)
                banner.append(line)
        yield "".join(banner)
    except BaseException:
        # The test failed: stop the stack as a user would, and leave nothing behind.
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()
        for orphan in processes_mentioning(env["DATA_DIR"]):
            os.kill(orphan, signal.SIGKILL)
        raise
    process.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(process.wait(), 30) == 0


async def test_dev_stack_serves_gateway_ui_and_health_then_stops_cleanly(
    cli: list[str], dev_env: dict[str, str]
) -> None:
    gateway = f"http://127.0.0.1:{dev_env['API_PORT']}"
    async with dev_stack(cli, dev_env) as banner, httpx.AsyncClient(timeout=10) as http:
        assert gateway in banner
        assert f"http://127.0.0.1:{dev_env['TEMPORAL_UI_PORT']}" in banner
        assert (await http.get(f"{gateway}/healthz")).json() == {"status": "ok"}
        key = re.search(r"API key\s+(\S+)", banner)
        assert key is not None
        anonymous = await http.get(f"{gateway}/api/workflows/nothing")
        assert anonymous.status_code == 401
        keyed = await http.get(f"{gateway}/api/workflows/nothing", headers={"X-API-Key": key[1]})
        assert keyed.status_code == 404
        ui = await http.get(f"http://127.0.0.1:{dev_env['TEMPORAL_UI_PORT']}/")
        assert ui.status_code == 200
        health = await run_cli([*cli, "health"], dev_env)
        assert health.returncode == 0, health.stderr
        assert "temporal" in health.stdout
        metrics = (await http.get(f"{gateway}/metrics")).text
        assert "workflow_completions_total{" in metrics
        assert 'workflow_type="HealthCheckWorkflow"' in metrics
        assert processes_mentioning(dev_env["DATA_DIR"])
    assert processes_mentioning(dev_env["DATA_DIR"]) == []


async def test_workflows_survive_a_restart_of_the_dev_stack(
    cli: list[str], dev_env: dict[str, str]
) -> None:
    gateway = f"http://127.0.0.1:{dev_env['API_PORT']}"
    async with dev_stack(cli, dev_env), httpx.AsyncClient(timeout=10) as http:
        assert (await run_cli([*cli, "health"], dev_env)).returncode == 0
        listing = await http.get(f"{gateway}/readyz")
        assert listing.status_code == 200
    db_file = Path(dev_env["DATA_DIR"]) / "temporal.db"
    assert db_file.is_file()
    async with dev_stack(cli, dev_env):
        client = await Client.connect(dev_env["TEMPORAL_SERVER_URL"])
        closed = [
            execution
            async for execution in client.list_workflows("WorkflowType='HealthCheckWorkflow'")
        ]
        assert len(closed) == 2


async def test_a_taken_port_is_named_and_nothing_is_left_running(
    cli: list[str], dev_env: dict[str, str]
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(dev_env["TEMPORAL_UI_PORT"])))
        squatter.listen()
        result = await run_cli([*cli, "dev"], dev_env)
    assert result.returncode == 1
    assert f"port {dev_env['TEMPORAL_UI_PORT']}" in result.stderr
    assert "Temporal Web UI" in result.stderr
    assert processes_mentioning(dev_env["DATA_DIR"]) == []
