"""The Grafana dashboard only queries metrics that a real worker exports."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher
from temporalio.client import Client, WorkflowFailureError

from nexpo_workflows.ports import free_port
from nexpo_workflows.sync.models import SyncInput
from nexpo_workflows.sync.workflow import DataSyncWorkflow, sync_workflow_id
from nexpo_workflows.users.models import OnboardingInput
from nexpo_workflows.users.service import onboarding_workflow_id
from nexpo_workflows.users.workflows import UserOnboardingWorkflow
from tests.conftest import SUBMITTED_PASSWORDS
from tests.test_worker_processes import run_health_checks, wait_for_pollers, worker_process

DASHBOARD = Path(__file__).resolve().parent.parent / "dashboards" / "nexpo-workflows.json"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}

_NOT_METRICS = {
    # PromQL keywords and literals that look like names.
    *("by", "without", "on", "ignoring", "group_left", "group_right"),
    *("bool", "offset", "and", "or", "unless", "inf", "nan"),
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels, keywords left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables
    names = set()
    # Not after a digit or dot: the unit of a duration (5m) or an exponent (1e3).
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", text):
        calls_a_function = text[match.end() :].lstrip().startswith("(")
        if not calls_a_function and match.group().lower() not in _NOT_METRICS:
            names.add(match.group())
    return names


def exposed_names(exposition: str) -> set[str]:
    """The sample names in a Prometheus text exposition."""
    return set(re.findall(r"^([A-Za-z_:][\w:]*)[{ ]", exposition, re.MULTILINE))


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for panel in board["panels"]:
        found += [panel, *panel.get("panels", [])]
    return [panel for panel in found if panel["type"] != "row"]


def queries(board: dict[str, Any]) -> list[str]:
    """Every PromQL expression: the panels' targets and the selectors of the variables."""
    exprs = [target["expr"] for panel in panels(board) for target in panel["targets"]]
    for variable in board["templating"]["list"]:
        selector = re.fullmatch(r"label_values\((.+),\s*\w+\)", variable["query"]["query"])
        assert selector is not None, variable
        exprs.append(selector.group(1))
    return exprs


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, provider) (rate(saga_step_latency_bucket{step="a b",'
        ' task_queue=~"$task_queue"}[$__rate_interval]))) / on (provider) group_left(name)'
        " clamp_min(sum without (le) (up offset 5m) or vector(1e3), 1) > bool 0"
    )
    assert metric_names(expr) == {"saga_step_latency_bucket", "up"}


def test_every_panel_queries_the_prometheus_input() -> None:
    board = dashboard()
    assert [item["name"] for item in board["__inputs"]] == ["DS_PROMETHEUS"]
    for panel in panels(board):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
    for variable in board["templating"]["list"]:
        assert variable["datasource"] == DATASOURCE, variable["name"]


async def test_every_dashboard_metric_is_on_a_real_workers_endpoint(
    cli: list[str], cli_env: dict[str, str], client: Client, task_queue: str, postgres_url: str
) -> None:
    wanted = set().union(*(metric_names(expr) for expr in queries(dashboard())))
    assert {"workflow_completions_total", "saga_compensations_total", "sync_lag_seconds"} <= wanted
    metrics_address = f"127.0.0.1:{free_port()}"
    async with worker_process(
        cli,
        cli_env,
        METRICS_BIND_ADDRESS=metrics_address,
        TEMPORAL_WORKER_IDENTITY="dashboard",
        ENABLE_POSTGRES="true",
        POSTGRES_URL=postgres_url,
        ENABLE_SQLITE="true",
    ):
        await wait_for_pollers(client, task_queue, {"dashboard"})
        await run_health_checks(client, task_queue, 1)
        password = f"dashboard-secret-{uuid.uuid4().hex[:12]}"
        SUBMITTED_PASSWORDS.add(password)
        user = OnboardingInput(
            email=f"grace.{uuid.uuid4().hex[:12]}@example.com",
            name="Grace Hopper",
            password_hash=PasswordHasher().hash(password),
        )
        await client.execute_workflow(
            UserOnboardingWorkflow.run,
            user,
            id=onboarding_workflow_id(user.email),
            task_queue=task_queue,
        )
        # The same email under another workflow id: the step fails and is compensated, so the
        # failure and compensation series exist too.
        with pytest.raises(WorkflowFailureError):
            await client.execute_workflow(
                UserOnboardingWorkflow.run,
                user,
                id=f"dashboard-duplicate-{uuid.uuid4()}",
                task_queue=task_queue,
            )
        # The users just onboarded, synced from PostgreSQL to SQLite: the lag series exists.
        await client.execute_workflow(
            DataSyncWorkflow.run,
            SyncInput(dataset="users", full=True),
            id=sync_workflow_id("users"),
            task_queue=task_queue,
        )
        async with httpx.AsyncClient() as http:
            for _ in range(50):
                exposition = (await http.get(f"http://{metrics_address}/metrics")).text
                if wanted <= exposed_names(exposition):
                    break
                await asyncio.sleep(0.2)
    assert wanted - exposed_names(exposition) == set()
