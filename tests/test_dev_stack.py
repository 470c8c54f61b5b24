"""`nexpo-workflows dev`: one command brings up Temporal + Web UI, worker and gateway."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
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
async def dev_stack(
    cli: list[str], env: dict[str, str], cwd: Path | None = None
) -> AsyncIterator[str]:
    """Start the stack, wait for its banner, and yield it; SIGINT must end it with code 0."""
    process = await asyncio.create_subprocess_exec(
        *cli,
        "dev",
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
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
        for orphan in processes_mentioning(env.get("DATA_DIR") or str(cwd)):
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


ROOT = Path(__file__).parent.parent
# The README first (its commands come before the pages' in a reader's session), then the
# documentation site's pages.
DOCUMENTED = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# The defaults the README's commands are written against.
README_PORTS = {"gateway": 8000, "Temporal gRPC": 7233, "Temporal Web UI": 8233, "metrics": 9464}


def readme_commands() -> list[str]:
    """Every command line of the README's and the documentation pages' ``bash`` blocks that
    talks to a running stack, each once (they keep examples for other deployments in ``sh``
    blocks)."""
    text = "\n".join(path.read_text() for path in DOCUMENTED)
    blocks = re.findall(r"^ *```bash\n(.*?)```", text, flags=re.DOTALL | re.MULTILINE)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return list(
        dict.fromkeys(
            line.split("  #")[0].strip()
            for line in lines
            if re.match(r"\s*((\.venv/bin/)?nexpo-workflows |curl )", line)
        )
    )


def a_clean_shell(directory: Path) -> dict[str, str]:
    """What a new shell in ``directory`` has: no variable of the package, the venv on PATH."""
    (directory / ".venv").symlink_to(Path(sys.prefix))
    return {
        "PATH": f"{directory / '.venv' / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", str(directory)),
    }


async def test_every_readme_command_works_as_written_next_to_the_dev_stack(
    tmp_path: Path,
) -> None:
    commands = readme_commands()
    assert any(command.startswith(".venv/bin/nexpo-workflows health") for command in commands)
    assert any("content review" in command for command in commands)
    for what, port in README_PORTS.items():
        with socket.socket() as probe:
            # The README's addresses are the defaults; a machine using them cannot run it.
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"{what} port {port} is taken"
    env = a_clean_shell(tmp_path)
    cli = [str(tmp_path / ".venv" / "bin" / "nexpo-workflows")]
    async with dev_stack(cli, env, cwd=tmp_path) as banner:
        key = re.search(r"API key\s+(\S+)", banner)
        assert key is not None
        content_id = ""
        for command in commands:
            # The README's two placeholders, filled as its reader would.
            command = command.replace("<key printed by dev>", key[1])
            command = command.replace("content-...", content_id)
            process = await asyncio.create_subprocess_exec(
                "bash",
                "-c",
                command,
                env=env,
                cwd=tmp_path,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            stdout, stderr = (part.decode() for part in await process.communicate())
            assert process.returncode == 0, f"{command}\n{stdout}\n{stderr}"
            if "nexpo-workflows " in command:
                assert "using the dev stack running at 127.0.0.1:7233" in stderr, command
            if "/readyz" in command:
                assert '"status":"ready"' in stdout.replace(" ", ""), stdout
            if found := re.search(r"content-[0-9a-f-]{8,}", stdout):
                content_id = found[0]
        client = await Client.connect("127.0.0.1:7233")
        kinds = {execution.workflow_type async for execution in client.list_workflows()}
        assert {"HealthCheckWorkflow", "AIContentPipelineWorkflow"} <= kinds, kinds
    assert not (tmp_path / ".nexpo" / "dev-stack.json").exists()


async def test_a_second_dev_stack_on_the_same_data_dir_is_refused(
    cli: list[str], dev_env: dict[str, str]
) -> None:
    async with dev_stack(cli, dev_env):
        record = Path(dev_env["DATA_DIR"]) / "dev-stack.json"
        assert record.is_file()
        second = await run_cli([*cli, "dev"], {**dev_env, "API_PORT": str(free_port())})
        assert second.returncode == 1
        assert "a dev stack already runs with DATA_DIR" in second.stderr
        # Configured explicitly, a command does not follow the record.
        explicit = await run_cli([*cli, "health"], dev_env)
        assert "using the dev stack" not in explicit.stderr
