"""`nexpo-workflows users ...` and the saga's metrics, through real worker processes."""

from __future__ import annotations

import asyncio
import json
import re
import uuid

import httpx
import pytest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError

from nexpo_workflows.config import Settings
from nexpo_workflows.ports import free_port
from nexpo_workflows.users.models import OnboardingInput
from nexpo_workflows.users.service import onboarding_workflow_id
from nexpo_workflows.users.workflows import UserOnboardingWorkflow
from tests.conftest import METRICS_SCRAPED, SUBMITTED_PASSWORDS, run_cli
from tests.test_onboarding import HASH
from tests.test_worker_processes import wait_for_pollers, worker_process


def saga_env(cli_env: dict[str, str], saga_settings: Settings, postgres_url: str) -> dict[str, str]:
    return {
        **cli_env,
        "ENABLE_POSTGRES": "true",
        "POSTGRES_URL": postgres_url,
        "ENABLE_SQLITE": "true",
        "SQLITE_PATH": str(saga_settings.sqlite_file),
    }


PASSWORD = "enigma-1912"
SUBMITTED_PASSWORDS.add(PASSWORD)


def create_args(email: str) -> list[str]:
    return [
        "users",
        "create",
        "--email",
        email,
        "--name",
        "Alan Turing",
        "--password",
        "enigma-1912",
    ]


async def test_users_commands_without_temporal(
    cli: list[str], cli_env: dict[str, str], saga_settings: Settings, postgres_url: str
) -> None:
    env = {**saga_env(cli_env, saga_settings, postgres_url), "ENABLE_TEMPORAL": "false"}
    email = f"alan.{uuid.uuid4().hex[:8]}@example.com"
    created = await run_cli([*cli, *create_args(email)], env)
    assert created.returncode == 0, created.stderr
    user_id = re.search(r"user ([0-9a-f-]{36}): completed", created.stdout)
    assert user_id is not None, created.stdout

    shown = await run_cli([*cli, "users", "get", user_id.group(1)], env)
    assert shown.returncode == 0
    assert json.loads(shown.stdout)["stored_in"] == {"postgres": True, "sqlite": True}

    duplicate = await run_cli([*cli, *create_args(email)], env)
    assert duplicate.returncode == 1
    assert "rolled_back" in duplicate.stderr

    deleted = await run_cli([*cli, "users", "delete", user_id.group(1)], env)
    assert deleted.returncode == 0
    assert deleted.stdout.count("deleted") == 2
    missing = await run_cli([*cli, "users", "get", user_id.group(1)], env)
    assert missing.returncode == 1
    assert "no user" in missing.stderr


async def test_an_idempotency_key_reused_with_another_request_exits_2(
    cli: list[str], cli_env: dict[str, str], saga_settings: Settings, postgres_url: str
) -> None:
    env = {**saga_env(cli_env, saga_settings, postgres_url), "ENABLE_TEMPORAL": "false"}
    key = ["--idempotency-key", f"key-{uuid.uuid4()}"]
    email = f"alan.{uuid.uuid4().hex[:8]}@example.com"
    created = await run_cli([*cli, *create_args(email), *key], env)
    assert created.returncode == 0, created.stderr
    other = f"joan.{uuid.uuid4().hex[:8]}@example.com"
    refused = await run_cli([*cli, *create_args(other), *key], env)
    assert refused.returncode == 2, refused.stderr
    assert "Idempotency-Key was used with another request" in refused.stderr


async def test_invalid_cli_input_is_refused_before_anything_runs(
    cli: list[str], cli_env: dict[str, str]
) -> None:
    refused = await run_cli([*cli, *create_args("not-an-email")], cli_env)
    assert refused.returncode == 2
    assert "invalid input: email" in refused.stderr
    assert PASSWORD not in refused.stderr + refused.stdout
    # A NUL character, which PostgreSQL cannot store, in a profile's field name.
    unstorable = [*create_args("alan@example.com"), "--profile", '{"key\\u0000": 1}']
    refused = await run_cli([*cli, *unstorable], cli_env)
    assert refused.returncode == 2
    assert "invalid input: profile" in refused.stderr


async def test_saga_through_a_worker_process_records_its_metrics(
    cli: list[str],
    cli_env: dict[str, str],
    client: Client,
    saga_settings: Settings,
    postgres_url: str,
) -> None:
    env = saga_env(cli_env, saga_settings, postgres_url)
    metrics = f"127.0.0.1:{free_port()}"
    email = f"alan.{uuid.uuid4().hex[:8]}@example.com"
    worker_env = {**env, "METRICS_BIND_ADDRESS": metrics, "TEMPORAL_WORKER_IDENTITY": "saga"}
    async with worker_process(cli, worker_env):
        await wait_for_pollers(client, saga_settings.temporal_task_queue, {"saga"})
        created = await run_cli([*cli, *create_args(email)], env)
        assert created.returncode == 0, created.stderr
        assert "completed" in created.stdout
        duplicate = await run_cli([*cli, *create_args(email)], env)
        assert duplicate.returncode == 1
        assert "an onboarding for this email exists" in duplicate.stderr
        # A saga for another user id with the same email: its claim (PostgreSQL, the first
        # database, written alone) fails and is compensated (a no-op: it wrote nothing); no
        # other step starts.
        with pytest.raises(WorkflowFailureError):
            await client.execute_workflow(
                UserOnboardingWorkflow.run,
                OnboardingInput(email=email, name="Impostor", password_hash=HASH),
                id=f"user-onboarding-{uuid.uuid4()}",
                task_queue=saga_settings.temporal_task_queue,
            )
        async with httpx.AsyncClient() as http:
            for _ in range(50):
                text = (await http.get(f"http://{metrics}/metrics")).text
                if "saga_compensations_total" in text:
                    break
                await asyncio.sleep(0.2)
    METRICS_SCRAPED.append(text)
    assert re.search(
        r'workflow_completions_total\{[^}]*status="success"[^}]*'
        r'workflow_type="UserOnboardingWorkflow"[^}]*\} 1',
        text,
    ), text
    for provider in ("postgres", "sqlite"):
        assert re.search(rf'saga_step_latency_count\{{[^}}]*provider="{provider}"', text), text
    assert re.search(
        r'saga_compensations_total\{[^}]*outcome="compensated"[^}]*saga="onboarding"'
        r'[^}]*step="postgres"[^}]*\} 1',
        text,
    ), text
    assert not re.search(r'saga_compensations_total\{[^}]*step="sqlite"', text), text
    assert re.search(
        r'workflow_completions_total\{[^}]*status="failed"[^}]*'
        r'workflow_type="UserOnboardingWorkflow"[^}]*\} 1',
        text,
    ), text


async def test_create_without_a_worker_prints_the_saga_still_running_at_the_bound(
    cli: list[str],
    cli_env: dict[str, str],
    client: Client,
    saga_settings: Settings,
    postgres_url: str,
) -> None:
    env = {**saga_env(cli_env, saga_settings, postgres_url), "ONBOARDING_WAIT_SECONDS": "1"}
    email = f"alan.{uuid.uuid4().hex[:8]}@example.com"
    created = await run_cli([*cli, *create_args(email)], env)
    assert created.returncode == 0, created.stderr
    workflow_id = onboarding_workflow_id(email)
    assert f"started workflow {workflow_id} (still running after 1s)" in created.stdout
    description = await client.get_workflow_handle(workflow_id).describe()
    assert description.status is WorkflowExecutionStatus.RUNNING
    await client.get_workflow_handle(workflow_id).terminate("test over: no worker")
