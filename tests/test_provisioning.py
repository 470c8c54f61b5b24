"""Tenant provisioning against real servers: the local store, Azurite, fake-gcs-server,
PostgreSQL and SQLite. Failures are injected by a test-only subclass of the activities, after
the real write (an answer lost on the way back), so compensation must find what was made."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest
from temporalio import activity
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from nexpo_workflows.api.app import create_app
from nexpo_workflows.api.deps import GatewayState
from nexpo_workflows.config import Settings
from nexpo_workflows.provisioning.activities import ProvisioningActivities, record_key
from nexpo_workflows.provisioning.models import (
    BucketSpaceInput,
    DbSchemaInput,
    DeprovisionInput,
    ProvisioningResult,
    ProvisioningStatus,
    ProvisionInput,
    ResourceRecord,
    StepResult,
    WriteResourceRecordInput,
)
from nexpo_workflows.provisioning.workflows import (
    ROLLED_BACK,
    DeprovisionResourcesWorkflow,
    ProvisionResourcesWorkflow,
)
from nexpo_workflows.services import Services
from nexpo_workflows.storage import enabled_stores
from nexpo_workflows.worker import build_worker
from tests.conftest import API_KEY
from tests.servers.azurite import running_azurite
from tests.servers.gcs import running_gcs
from tests.servers.s3 import running_s3

# Creation order: the stores in the registry's order, then the databases, then the record
# (in the first store).
STEPS = [
    "bucket_space:s3",
    "bucket_space:azure",
    "bucket_space:gcs",
    "bucket_space:local",
    "db_schema:postgres",
    "db_schema:sqlite",
    "resource_record:s3",
]


@pytest.fixture(scope="module")
async def azurite() -> AsyncIterator[str]:
    async with running_azurite() as connection:
        yield connection


@pytest.fixture(scope="module")
async def s3_endpoint() -> AsyncIterator[str]:
    async with running_s3() as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
async def gcs_endpoint() -> AsyncIterator[str]:
    async with running_gcs() as endpoint:
        yield endpoint


@pytest.fixture
def settings(
    make_settings: Callable[..., Settings],
    azurite: str,
    gcs_endpoint: str,
    s3_endpoint: str,
    postgres_url: str,
) -> Settings:
    return make_settings(
        enable_local_store=True,
        enable_s3=True,
        s3_endpoint_url=s3_endpoint,
        s3_bucket=f"nexpo-{uuid.uuid4().hex[:12]}",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        enable_azure_blob=True,
        azure_storage_connection_string=azurite,
        azure_blob_container=f"nexpo-{uuid.uuid4().hex[:12]}",
        enable_gcs=True,
        gcs_bucket=f"nexpo-{uuid.uuid4().hex[:12]}",
        gcs_endpoint_url=gcs_endpoint,
        enable_postgres=True,
        postgres_url=postgres_url,
        enable_sqlite=True,
    )


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


class FailingActivities(ProvisioningActivities):
    """Every attempt of the step named ``fail_at`` makes its resource, then fails; the first
    attempt of the step named ``lost_answer_at`` does too (its answer lost on the way back,
    the retry then succeeds); every delete of the bucket space named ``undeletable`` fails
    before deleting."""

    def __init__(
        self,
        services: Services,
        fail_at: str | None,
        undeletable: str | None,
        lost_answer_at: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(services, **options)
        self.fail_at = fail_at
        self.undeletable = undeletable
        self.lost_answer_at = lost_answer_at

    def _fail_if(self, step: str) -> None:
        if step == self.fail_at:
            raise RuntimeError(f"injected failure after {step}")
        if step == self.lost_answer_at and activity.info().attempt == 1:
            raise RuntimeError(f"injected loss of the answer of {step}")

    @activity.defn(name="create_bucket_space")
    async def create_bucket_space(self, input: BucketSpaceInput) -> StepResult:
        result = await super().create_bucket_space(input)
        self._fail_if(f"bucket_space:{input.store}")
        return result

    @activity.defn(name="delete_bucket_space")
    async def delete_bucket_space(self, input: BucketSpaceInput) -> StepResult:
        if input.store == self.undeletable:
            raise RuntimeError(f"injected delete failure in {input.store}")
        return await super().delete_bucket_space(input)

    @activity.defn(name="create_db_schema")
    async def create_db_schema(self, input: DbSchemaInput) -> StepResult:
        result = await super().create_db_schema(input)
        self._fail_if(f"db_schema:{input.provider}")
        return result

    @activity.defn(name="write_resource_record")
    async def write_resource_record(self, input: WriteResourceRecordInput) -> StepResult:
        result = await super().write_resource_record(input)
        self._fail_if(f"resource_record:{input.store}")
        return result


@asynccontextmanager
async def provisioning_worker(
    client: Client,
    settings: Settings,
    fail_at: str | None = None,
    undeletable: str | None = None,
    lost_answer_at: str | None = None,
) -> AsyncIterator[None]:
    services = Services.from_settings(settings, client)
    # Two attempts: a failing step gives up quickly, but a retry of a lost answer is exercised.
    options: dict[str, Any] = {"step_attempts": 2, "compensation_attempts": 3}
    activities = FailingActivities(services, fail_at, undeletable, lost_answer_at, **options)
    try:
        async with build_worker(
            client,
            services,
            extra_activities=activities.all(),
        ):
            yield
    finally:
        await activities.close()
        await services.close()


async def provision(client: Client, settings: Settings, tenant: str) -> ProvisioningResult:
    return await client.execute_workflow(
        ProvisionResourcesWorkflow.run,
        ProvisionInput(tenant_id=tenant),
        id=f"provision-{uuid.uuid4()}",
        task_queue=settings.temporal_task_queue,
    )


async def deprovision(client: Client, settings: Settings, tenant: str) -> ProvisioningResult:
    return await client.execute_workflow(
        DeprovisionResourcesWorkflow.run,
        DeprovisionInput(tenant_id=tenant),
        id=f"deprovision-{uuid.uuid4()}",
        task_queue=settings.temporal_task_queue,
    )


def statuses(result: ProvisioningResult) -> dict[str, str]:
    return {o.resource.label(): o.status.value for o in result.resources}


async def leftovers(settings: Settings, tenant: str) -> dict[str, Any]:
    """What exists for ``tenant``, read directly from every store and database."""
    found: dict[str, Any] = {}
    for name, store in enabled_stores(settings).items():
        await store.connect()
        try:
            found[name] = [info.key async for info in store.list(f"tenants/{tenant}/")]
        finally:
            await store.close()
    connection = await asyncpg.connect(settings.postgres_url.get_secret_value())
    try:
        found["postgres"] = await connection.fetchval(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = $1",
            f"tenant_{tenant}",
        )
    finally:
        await connection.close()
    found["sqlite"] = await asyncio.to_thread(_sqlite_tables, settings, f"tenant_{tenant}_data")
    return found


def _sqlite_tables(settings: Settings, name: str) -> int:
    with sqlite3.connect(settings.sqlite_file) as connection:
        row = connection.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        ).fetchone()
    return int(row[0])


NOTHING = {"s3": [], "azure": [], "gcs": [], "local": [], "postgres": 0, "sqlite": 0}


async def read_record(settings: Settings, tenant: str) -> ResourceRecord:
    store = enabled_stores(settings)["s3"]  # the first store holds the record
    await store.connect()
    try:
        content = b"".join([chunk async for chunk in store.get(record_key(tenant))])
    finally:
        await store.close()
    return ResourceRecord.model_validate_json(content)


async def test_provision_creates_everything_and_twice_duplicates_nothing(
    client: Client, settings: Settings, tenant: str
) -> None:
    async with provisioning_worker(client, settings):
        first = await provision(client, settings, tenant)
        made = await leftovers(settings, tenant)
        second = await provision(client, settings, tenant)
        again = await leftovers(settings, tenant)
    assert statuses(first) == dict.fromkeys(STEPS, "created")
    marker = f"tenants/{tenant}/.tenant"
    assert made == {
        "s3": [marker, record_key(tenant)],
        "azure": [marker],
        "gcs": [marker],
        "local": [marker],
        "postgres": 1,
        "sqlite": 1,
    }
    record = await read_record(settings, tenant)
    assert record.tenant_id == tenant
    assert [r.label() for r in record.provisioned_resources] == STEPS
    assert statuses(second) == dict.fromkeys(STEPS, "existed")
    assert again == made


async def test_deprovision_twice_removes_everything_then_nothing(
    client: Client, settings: Settings, tenant: str
) -> None:
    async with provisioning_worker(client, settings):
        await provision(client, settings, tenant)
        first = await deprovision(client, settings, tenant)
        gone = await leftovers(settings, tenant)
        second = await deprovision(client, settings, tenant)
    assert statuses(first) == dict.fromkeys(STEPS, "deleted")
    assert gone == NOTHING
    # Without a record, every enabled resource is tried, and none is found.
    assert statuses(second) == dict.fromkeys(STEPS, "absent")
    assert await leftovers(settings, tenant) == NOTHING


@pytest.mark.parametrize("fail_at", STEPS)
async def test_a_failure_at_any_step_leaves_nothing_behind(
    client: Client, settings: Settings, tenant: str, fail_at: str
) -> None:
    async with provisioning_worker(client, settings, fail_at=fail_at):
        with pytest.raises(WorkflowFailureError) as raised:
            await provision(client, settings, tenant)
    cause = raised.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == ROLLED_BACK
    result = ProvisioningResult.model_validate(cause.details[0])
    failed = STEPS.index(fail_at)
    assert statuses(result) == {
        **dict.fromkeys(STEPS[:failed], "compensated"),
        fail_at: "failed",
        **dict.fromkeys(STEPS[failed + 1 :], "not_started"),
    }
    assert await leftovers(settings, tenant) == NOTHING


async def test_a_compensation_that_keeps_failing_is_reported_and_deprovision_cleans_up(
    client: Client, settings: Settings, tenant: str
) -> None:
    async with provisioning_worker(client, settings, fail_at="db_schema:sqlite", undeletable="gcs"):
        with pytest.raises(WorkflowFailureError) as raised:
            await provision(client, settings, tenant)
    cause = raised.value.cause
    assert isinstance(cause, ApplicationError)
    result = ProvisioningResult.model_validate(cause.details[0])
    assert result.status == "rollback_incomplete"
    outcome = {o.resource.label(): o for o in result.resources}["bucket_space:gcs"]
    assert outcome.status == "compensation_failed"
    assert "injected delete failure" in (outcome.compensation_error or "")
    assert await leftovers(settings, tenant) == {**NOTHING, "gcs": [f"tenants/{tenant}/.tenant"]}
    # No record was written: deprovisioning tries every enabled resource and removes the rest.
    async with provisioning_worker(client, settings):
        cleaned = await deprovision(client, settings, tenant)
    assert statuses(cleaned)["bucket_space:gcs"] == "deleted"
    assert await leftovers(settings, tenant) == NOTHING


@pytest.mark.parametrize("lost_at", STEPS[:-1])
async def test_a_create_whose_answer_was_lost_is_compensated(
    client: Client, settings: Settings, tenant: str, lost_at: str
) -> None:
    """The first attempt makes the resource and loses its answer; the retry finds the run's
    own mark and reports it created, so the rollback removes it."""
    async with provisioning_worker(
        client, settings, fail_at="resource_record:s3", lost_answer_at=lost_at
    ):
        with pytest.raises(WorkflowFailureError) as raised:
            await provision(client, settings, tenant)
    cause = raised.value.cause
    assert isinstance(cause, ApplicationError)
    result = ProvisioningResult.model_validate(cause.details[0])
    assert result.status is ProvisioningStatus.ROLLED_BACK
    assert statuses(result) == {
        **dict.fromkeys(STEPS[:-1], "compensated"),
        "resource_record:s3": "failed",
    }
    assert await leftovers(settings, tenant) == NOTHING


async def test_a_rollback_leaves_what_was_there_before_the_run(
    client: Client, settings: Settings, tenant: str
) -> None:
    """A second provisioning of a tenant finds everything made by the first; its failure
    (after the SQLite table's create, which finds the table) removes none of it."""
    async with provisioning_worker(client, settings):
        await provision(client, settings, tenant)
    made = await leftovers(settings, tenant)
    async with provisioning_worker(client, settings, fail_at="db_schema:sqlite"):
        with pytest.raises(WorkflowFailureError) as raised:
            await provision(client, settings, tenant)
    cause = raised.value.cause
    assert isinstance(cause, ApplicationError)
    result = ProvisioningResult.model_validate(cause.details[0])
    assert result.status is ProvisioningStatus.ROLLED_BACK
    assert statuses(result) == {
        **dict.fromkeys(STEPS[:-2], "existed"),
        "db_schema:sqlite": "failed",
        "resource_record:s3": "not_started",
    }
    assert await leftovers(settings, tenant) == made
    # Deprovisioning still removes everything, whoever made it.
    async with provisioning_worker(client, settings):
        await deprovision(client, settings, tenant)
    assert await leftovers(settings, tenant) == NOTHING


@pytest.mark.parametrize("tenant_id", ["ab", "Upper", "a_b", "x" * 41])
async def test_a_malformed_tenant_id_is_refused(tenant_id: str) -> None:
    with pytest.raises(ValueError, match="tenant_id"):
        ProvisionInput(tenant_id=tenant_id)


async def test_gateway_routes_start_the_tenant_workflows(
    client: Client, settings: Settings, tenant: str
) -> None:
    services = Services.from_settings(settings, client)
    app = create_app(GatewayState(services, client, metrics_url=None))
    transport = httpx.ASGITransport(app=app)
    try:
        async with (
            provisioning_worker(client, settings),
            httpx.AsyncClient(
                transport=transport, base_url="http://gw", headers={"X-API-Key": API_KEY}
            ) as http,
        ):
            assert (await http.put("/api/cloud/tenants/Not_Valid")).status_code == 422
            created = await http.put(f"/api/cloud/tenants/{tenant}")
            assert created.status_code == 202, created.text
            result = await client.get_workflow_handle(
                created.json()["workflowId"], result_type=ProvisioningResult
            ).result()
            assert result.status is ProvisioningStatus.COMPLETED
            removed = await http.delete(f"/api/cloud/tenants/{tenant}")
            assert removed.status_code == 202
            assert removed.json()["workflowId"] == created.json()["workflowId"]
            gone = await client.get_workflow_handle(
                removed.json()["workflowId"], result_type=ProvisioningResult
            ).result()
            assert gone.status is ProvisioningStatus.COMPLETED
    finally:
        await services.close()
    stores = enabled_stores(settings)
    try:
        for store in stores.values():
            assert [info.key async for info in store.list(f"tenants/{tenant}/")] == []
    finally:
        for store in stores.values():
            await store.close()
