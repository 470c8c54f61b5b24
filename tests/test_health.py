"""HealthCheckWorkflow on a real server, the direct mode, and the `health` command."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from nexpo_workflows.config import Settings
from nexpo_workflows.health.models import DependencyState, HealthCheckInput, HealthReport
from nexpo_workflows.health.workflow import HealthCheckWorkflow
from nexpo_workflows.services import Services
from nexpo_workflows.worker import build_worker
from tests.conftest import run_cli


def statuses(report: HealthReport) -> dict[str, DependencyState]:
    return {d.name: d.status for d in report.dependencies}


@pytest.mark.usefixtures("worker")
async def test_every_enabled_dependency_is_probed(client: Client, settings: Settings) -> None:
    report = await client.execute_workflow(
        HealthCheckWorkflow.run,
        HealthCheckInput(),
        id=f"health-{uuid.uuid4()}",
        task_queue=settings.temporal_task_queue,
    )
    # The embedded defaults: the SQLite database and the local object store.
    assert statuses(report) == dict.fromkeys(["temporal", "sqlite", "local"], DependencyState.UP)
    assert all(d.latency_ms > 0 and d.error is None for d in report.dependencies)
    assert settings.sqlite_file.is_file()


async def test_a_broken_store_is_reported_down_with_its_error(
    client: Client, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the store's directory should be")
    settings = make_settings(sqlite_path=blocker / "nexpo.db")
    services = Services.from_settings(settings, client)
    async with build_worker(client, services):
        report = await client.execute_workflow(
            HealthCheckWorkflow.run,
            HealthCheckInput(),
            id=f"health-{uuid.uuid4()}",
            task_queue=settings.temporal_task_queue,
        )
    await services.close()
    assert not report.healthy
    sqlite = next(d for d in report.dependencies if d.name == "sqlite")
    assert sqlite.status is DependencyState.DOWN
    assert sqlite.error is not None
    assert "cannot open SQLite" in sqlite.error
    assert statuses(report)["temporal"] is DependencyState.UP


@pytest.mark.usefixtures("worker")
async def test_an_unknown_dependency_fails_without_retrying(
    client: Client, settings: Settings
) -> None:
    with pytest.raises(WorkflowFailureError) as caught:
        await client.execute_workflow(
            HealthCheckWorkflow.run,
            HealthCheckInput(dependencies=["temporal", "oracle"]),
            id=f"health-{uuid.uuid4()}",
            task_queue=settings.temporal_task_queue,
        )
    cause = caught.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.non_retryable
    assert "oracle" in str(cause)


async def test_direct_mode_runs_the_same_probes_without_temporal(
    make_settings: Callable[..., Settings],
) -> None:
    services = Services.from_settings(make_settings(enable_temporal=False))
    report = await services.checker.check_all(timeout_seconds=2)
    await services.close()
    assert statuses(report) == {"sqlite": DependencyState.UP, "local": DependencyState.UP}


@pytest.mark.usefixtures("worker")
async def test_health_command_prints_a_table(cli: list[str], cli_env: dict[str, str]) -> None:
    result = await run_cli([*cli, "health"], cli_env)
    assert result.returncode == 0, result.stderr
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if "│" in line}
    assert " up " in rows["temporal"]
    assert " up " in rows["sqlite"]
    assert " up " in rows["local"]


def test_health_command_exits_non_zero_when_something_is_down(
    cli: list[str], cli_env: dict[str, str], tmp_path: Path
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    cli_env.update(ENABLE_TEMPORAL="false", SQLITE_PATH=str(blocker / "x.db"))
    result = subprocess.run(
        [*cli, "health", "--json"], env=cli_env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    report = HealthReport.model_validate(json.loads(result.stdout))
    assert statuses(report) == {"sqlite": DependencyState.DOWN, "local": DependencyState.UP}


def test_health_command_says_when_no_worker_answers(
    cli: list[str], cli_env: dict[str, str]
) -> None:
    cli_env.update(HEALTH_CHECK_TIMEOUT_SECONDS="0.5", HEALTH_CHECK_WORKER_WAIT_SECONDS="1")
    result = subprocess.run(
        [*cli, "health"], env=cli_env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "is a worker running?" in result.stderr
    assert cli_env["TEMPORAL_TASK_QUEUE"] in result.stderr
