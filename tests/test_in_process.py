"""ENABLE_TEMPORAL=false: every feature that can run without durability runs in the gateway's
or the command's own process, through the same workflow code, against real databases and
stores; what needs Temporal (reviews, approvals, status, schedules, monitors) is refused with
a message that says so, before anything is written."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from nexpo_workflows.api.app import create_app
from nexpo_workflows.api.deps import GatewayState
from nexpo_workflows.config import Settings
from nexpo_workflows.content.models import Decision
from nexpo_workflows.decisions.service import decision_workflow_id
from nexpo_workflows.providers import enabled_providers
from nexpo_workflows.services import Services
from nexpo_workflows.storage import enabled_stores
from tests.conftest import API_KEY, run_cli
from tests.faults import FaultyProvider
from tests.recording_notifier import RecordingNotifier
from tests.scripted_model import ScriptedModel
from tests.servers.s3 import running_s3
from tests.store_contract import chunks_of
from tests.sync_source import DATASET, Source, assert_targets_equal_source, sync_worker_env
from tests.test_content import draft, stored, verdict
from tests.test_decisions import OUTPUT, answer, support_request

NEEDS_TEMPORAL = "needs ENABLE_TEMPORAL=true"


@pytest.fixture
def local_settings(make_settings: Callable[..., Settings], postgres_url: str) -> Settings:
    return make_settings(
        enable_temporal=False,
        enable_postgres=True,
        postgres_url=postgres_url,
        enable_sqlite=True,
        decision_refund_limit=100.0,
        decision_risk_threshold=0.5,
    )


@asynccontextmanager
async def in_process_gateway(
    settings: Settings, services: Services | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    built = services or Services.from_settings(settings)
    app = create_app(GatewayState(built, None, metrics_url=None))
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://gateway",
            headers={"X-API-Key": API_KEY},
            timeout=60,
        ) as http:
            yield http
    finally:
        await built.close()


def lab_services(settings: Settings, **faults: Any) -> tuple[Services, ScriptedModel, Any]:
    providers = enabled_providers(settings)
    for name, fault in faults.items():
        providers[name] = FaultyProvider(providers[name], **fault)
    model, notifier = ScriptedModel(), RecordingNotifier()
    services = Services(
        settings=settings,
        providers=providers,
        language_model=model,
        notifiers={"recording": notifier},
    )
    return services, model, notifier


async def test_content_is_drafted_reviewed_and_published_in_the_gateway(
    local_settings: Settings,
) -> None:
    async with in_process_gateway(local_settings) as http:
        answered = await http.post("/api/content", json={"topic": "Sagas without a server"})
    assert answered.status_code == 200, answered.text
    result = answered.json()
    assert result["status"] == "published"
    assert sorted(result["published_to"]) == ["postgres", "sqlite"]
    assert result["reviews"][0]["reviewer"].startswith("ai:")
    held = await stored(local_settings, result["content_id"])
    assert all(record is not None for record in held.values()), held


async def test_a_publish_that_fails_in_process_is_undone_everywhere(
    local_settings: Settings,
) -> None:
    services, model, notifier = lab_services(local_settings, sqlite={"upsert_fails": True})
    model.script("Draft", draft(1))
    model.script("ReviewVerdict", verdict(Decision.APPROVE))
    async with in_process_gateway(local_settings, services) as http:
        answered = await http.post("/api/content", json={"topic": "Sagas"})
    assert answered.status_code == 503, answered.text
    assert "injected failure after the records write" in answered.json()["detail"]
    faulty = services.providers["sqlite"]
    assert isinstance(faulty, FaultyProvider)
    assert faulty.upsert_calls == 4  # the publish step's retry bound, as on a worker
    [content_id] = set(faulty.upserted_ids)
    assert await stored(local_settings, content_id) == {"postgres": None, "sqlite": None}
    assert notifier.sent == []


async def test_a_human_review_is_refused_before_anything_runs(local_settings: Settings) -> None:
    services, _, notifier = lab_services(local_settings)  # a draft would fail: none scripted
    async with in_process_gateway(local_settings, services) as http:
        answered = await http.post(
            "/api/content",
            json={"topic": "Sagas", "review_mode": "human", "reviewers": ["rev@example.com"]},
        )
        status = await http.get("/api/content/content-anything")
    assert answered.status_code == 409, answered.text
    assert NEEDS_TEMPORAL in answered.json()["detail"]
    assert notifier.sent == []
    assert status.status_code == 503
    assert NEEDS_TEMPORAL in status.json()["detail"]


async def test_a_decision_runs_in_the_gateway_and_an_approval_goes_to_a_person(
    local_settings: Settings,
) -> None:
    services, model, notifier = lab_services(local_settings)
    quick, risky = support_request(), support_request()
    model.script(OUTPUT, answer("auto_reply", reply="A new teapot is on its way."))
    model.script(OUTPUT, answer("refund", risk=0.9, amount="80.00"))
    async with in_process_gateway(local_settings, services) as http:
        replied = await http.post("/api/decisions", json=quick.model_dump(mode="json"))
        escalated = await http.post("/api/decisions", json=risky.model_dump(mode="json"))
        approval = await http.post(
            f"/api/decisions/{risky.request_id}/approval",
            json={"approver": "lead@example.com", "approved": True},
        )
    assert replied.status_code == 200, replied.text
    assert replied.json()["action_executed"] == "auto_reply"
    assert escalated.status_code == 200, escalated.text
    decision = escalated.json()
    assert decision["action_chosen"] == "refund"
    assert decision["action_executed"] == "escalate"
    assert "an approval needs ENABLE_TEMPORAL=true" in decision["escalation_reason"]
    assert [n.id for n in notifier.sent] == [
        f"{decision_workflow_id(quick.request_id)}:auto_reply",
        f"{decision_workflow_id(risky.request_id)}:escalation",
    ]
    # Nothing was refunded without a person's approval.
    for provider in services.providers.values():
        assert await provider.get_records("refunds", [risky.request_id]) == []
    assert approval.status_code == 503
    assert NEEDS_TEMPORAL in approval.json()["detail"]


@pytest.fixture
def local_sync_settings(sync_settings: Settings) -> Settings:
    return sync_settings.model_copy(update={"enable_temporal": False})


async def test_a_one_shot_sync_runs_in_the_gateway_past_its_batches_per_run(
    local_sync_settings: Settings, source: Source
) -> None:
    # 5 batches of 40 where a workflow would continue as new after 3.
    await source.insert(200)
    async with in_process_gateway(local_sync_settings) as http:
        first = await http.post(f"/api/sync/{DATASET}")
        await source.update((await source.insert(3, prefix="late"))[0], price="1.00")
        second = await http.post(f"/api/sync/{DATASET}")
        schedule = await http.put(f"/api/sync/{DATASET}/schedule", json={"every": "5m"})
    assert first.status_code == 200, first.text
    assert first.json()["progress"]["rows_synced"] == 200
    assert first.json()["progress"]["batches"] == 5
    assert second.status_code == 200, second.text
    assert second.json()["progress"]["rows_synced"] == 3
    await assert_targets_equal_source(local_sync_settings, source)
    assert schedule.status_code == 503
    assert NEEDS_TEMPORAL in schedule.json()["detail"]


async def test_replication_and_provisioning_run_in_the_gateway(
    make_settings: Callable[..., Settings],
) -> None:
    bucket = f"local-{uuid.uuid4().hex[:12]}"
    async with running_s3() as s3_endpoint:
        settings = make_settings(
            enable_temporal=False,
            enable_local_store=True,
            enable_s3=True,
            s3_endpoint_url=s3_endpoint,
            s3_bucket=bucket,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            enable_sqlite=True,
        )
        stores = enabled_stores(settings)
        try:
            await stores["local"].put("report.txt", chunks_of(b"all or nothing"))
        finally:
            for store in stores.values():
                await store.close()
        async with in_process_gateway(settings) as http:
            copied = await http.post(
                "/api/cloud/replicate", json={"key": "report.txt", "source": "local"}
            )
            missing = await http.post(
                "/api/cloud/replicate", json={"key": "nothing-here", "source": "local"}
            )
            provisioned = await http.put("/api/cloud/tenants/acme-1")
            removed = await http.delete("/api/cloud/tenants/acme-1")
            monitor = await http.post("/api/cloud/failover", json={"service": "postgres"})
    assert copied.status_code == 200, copied.text
    [replica] = copied.json()["replicas"]
    assert (replica["store"], replica["status"]) == ("s3", "copied")
    assert missing.status_code == 503
    assert "nothing-here not replicated" in missing.json()["detail"]
    assert provisioned.status_code == 200, provisioned.text
    assert provisioned.json()["status"] == "completed"
    assert removed.status_code == 200, removed.text
    assert removed.json()["status"] == "completed"
    assert monitor.status_code == 503
    assert NEEDS_TEMPORAL in monitor.json()["detail"]


async def test_the_cli_runs_content_in_process_and_refuses_what_needs_temporal(
    cli: list[str], cli_env: dict[str, str], local_settings: Settings
) -> None:
    env = {
        **cli_env,
        "ENABLE_TEMPORAL": "false",
        "ENABLE_POSTGRES": "true",
        "POSTGRES_URL": local_settings.postgres_url.get_secret_value(),
        "ENABLE_SQLITE": "true",
    }
    created = await run_cli([*cli, "content", "create", "--topic", "Sagas"], env)
    no_wait = await run_cli([*cli, "content", "create", "--topic", "Sagas", "--no-wait"], env)
    review = await run_cli(
        [*cli, "content", "review", "content-x", "--reviewer", "a", "--decision", "approve"], env
    )
    assert created.returncode == 0, created.stderr
    assert '"status": "published"' in created.stdout
    assert no_wait.returncode == 2
    assert NEEDS_TEMPORAL in no_wait.stderr
    assert review.returncode == 2
    assert NEEDS_TEMPORAL in review.stderr


async def test_the_cli_runs_a_sync_and_a_decision_in_process(
    cli: list[str],
    cli_env: dict[str, str],
    local_sync_settings: Settings,
    source: Source,
) -> None:
    batch_size = local_sync_settings.sync_batch_size
    env = {**sync_worker_env(cli_env, local_sync_settings, batch_size), "ENABLE_TEMPORAL": "false"}
    await source.insert(90)
    synced = await run_cli([*cli, "sync", "run", DATASET], env)
    status = await run_cli([*cli, "sync", "status", DATASET], env)
    decided = await run_cli(
        [
            *cli,
            "decisions",
            "create",
            "--customer-email",
            "ada@example.com",
            "--subject",
            "Broken teapot",
            "--message",
            "It arrived in pieces.",
        ],
        env,
    )
    assert synced.returncode == 0, synced.stderr
    assert "90" in synced.stdout
    await assert_targets_equal_source(local_sync_settings, source)
    assert status.returncode == 2
    assert NEEDS_TEMPORAL in status.stderr
    assert decided.returncode == 0, decided.stderr
    assert '"model": "offline"' in decided.stdout
