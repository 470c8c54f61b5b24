"""The activities of tenant provisioning: one per resource kind and action, each idempotent.

Every object store is bound to one bucket, and the ObjectStore interface has no bucket
operations, so a tenant's space in a store is the prefix ``tenants/<tenant>/`` marked by the
object ``tenants/<tenant>/.tenant``. SQL databases get a PostgreSQL schema or, SQLite having
no schemas, a table.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from sqlalchemy import JSON, Column, Connection, MetaData, String, Table, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool
from sqlalchemy.schema import CreateSchema, DropSchema
from temporalio import activity
from temporalio.exceptions import ApplicationError

from nexpo_workflows.providers.sql import SQLProvider
from nexpo_workflows.provisioning.models import (
    BucketSpaceInput,
    DbSchemaInput,
    PlanProvisioningInput,
    ProvisioningPlan,
    ReadResourceRecordResult,
    ResourceRecord,
    ResourceRecordInput,
    StepResult,
    WriteResourceRecordInput,
)
from nexpo_workflows.services import Services
from nexpo_workflows.storage import ObjectStore

UNKNOWN_RESOURCE = "UnknownResource"
# The SQL dialects whose tenant namespace this module knows how to make.
SQL_BACKENDS = ("postgresql", "sqlite")


def space_prefix(tenant_id: str) -> str:
    return f"tenants/{tenant_id}/"


def marker_key(tenant_id: str) -> str:
    return f"{space_prefix(tenant_id)}.tenant"


def record_key(tenant_id: str) -> str:
    return f"{space_prefix(tenant_id)}resources.json"


def schema_name(tenant_id: str) -> str:
    return f"tenant_{tenant_id}"


def sqlite_table_name(tenant_id: str) -> str:
    return f"tenant_{tenant_id}_data"


def _sqlite_table(tenant_id: str) -> Table:
    return Table(
        sqlite_table_name(tenant_id),
        MetaData(),
        Column("key", String(200), primary_key=True),
        Column("value", JSON, nullable=True),
    )


async def _chunks(content: bytes) -> AsyncIterator[bytes]:
    yield content


def _unknown(what: str, name: str, enabled: list[str]) -> ApplicationError:
    return ApplicationError(
        f"{what} {name} is not enabled on this worker; enabled: {enabled}",
        type=UNKNOWN_RESOURCE,
        non_retryable=True,
    )


class ProvisioningActivities:
    """The provisioning activities for this worker's enabled stores and SQL providers.

    Failures other than an unknown store or provider propagate as they are: Temporal retries
    them up to the plan's attempts (a store or database that is down may come back).
    """

    def __init__(
        self,
        services: Services,
        *,
        step_timeout_seconds: float = 30.0,
        step_attempts: int = 5,
        compensation_attempts: int = 5,
    ) -> None:
        self._providers = {
            name: provider
            for name, provider in services.providers.items()
            if isinstance(provider, SQLProvider)
            and make_url(provider.url).get_backend_name() in SQL_BACKENDS
        }
        self._stores = services.stores
        self._engines: dict[str, AsyncEngine] = {}
        self._step_timeout_seconds = step_timeout_seconds
        self._step_attempts = step_attempts
        self._compensation_attempts = compensation_attempts

    def _store(self, name: str) -> ObjectStore:
        if name not in self._stores:
            raise _unknown("store", name, list(self._stores))
        return self._stores[name]

    async def _engine(self, name: str) -> tuple[AsyncEngine, str]:
        """The provider's engine and dialect; the provider prepares its database first (a
        SQLite file's directory), so the tenant's namespace has somewhere to go."""
        if name not in self._providers:
            raise _unknown("SQL provider", name, list(self._providers))
        provider = self._providers[name]
        if name not in self._engines:
            await provider.connect()
            # No pool: provisioning is rare, and idle connections would keep a database busy.
            self._engines[name] = create_async_engine(provider.url, poolclass=NullPool)
        engine = self._engines[name]
        return engine, engine.dialect.name

    @activity.defn(name="plan_provisioning")
    async def plan_provisioning(self, input: PlanProvisioningInput) -> ProvisioningPlan:
        stores = list(self._stores)
        return ProvisioningPlan(
            stores=stores,
            providers=list(self._providers),
            record_store=stores[0] if stores else None,
            step_timeout_seconds=self._step_timeout_seconds,
            step_attempts=self._step_attempts,
            compensation_attempts=self._compensation_attempts,
        )

    @activity.defn(name="create_bucket_space")
    async def create_bucket_space(self, input: BucketSpaceInput) -> StepResult:
        store = self._store(input.store)
        await store.connect()
        key = marker_key(input.tenant_id)
        if await store.head(key) is not None:
            return StepResult(changed=False)
        content = json.dumps({"tenant_id": input.tenant_id}).encode()
        await store.put(key, _chunks(content), content_type="application/json")
        return StepResult(changed=True)

    @activity.defn(name="delete_bucket_space")
    async def delete_bucket_space(self, input: BucketSpaceInput) -> StepResult:
        """Remove everything in the tenant's space but its record (the record activities own
        it), the marker last, so an interrupted delete still finds the space when retried."""
        store = self._store(input.store)
        await store.connect()
        marker, record = marker_key(input.tenant_id), record_key(input.tenant_id)
        keys = [info.key async for info in store.list(space_prefix(input.tenant_id))]
        for key in keys:
            if key not in (marker, record):
                await store.delete(key)
        return StepResult(changed=await store.delete(marker))

    @activity.defn(name="create_db_schema")
    async def create_db_schema(self, input: DbSchemaInput) -> StepResult:
        engine, dialect = await self._engine(input.provider)
        async with engine.begin() as connection:
            if dialect == "postgresql":
                name = schema_name(input.tenant_id)
                existed = await connection.run_sync(lambda sync: inspect(sync).has_schema(name))
                await connection.execute(CreateSchema(name, if_not_exists=True))
            else:
                table = _sqlite_table(input.tenant_id)
                existed = await connection.run_sync(_has_table, table.name)
                await connection.run_sync(table.create, checkfirst=True)
        return StepResult(changed=not existed)

    @activity.defn(name="drop_db_schema")
    async def drop_db_schema(self, input: DbSchemaInput) -> StepResult:
        engine, dialect = await self._engine(input.provider)
        async with engine.begin() as connection:
            if dialect == "postgresql":
                name = schema_name(input.tenant_id)
                existed = await connection.run_sync(lambda sync: inspect(sync).has_schema(name))
                # CASCADE: deprovisioning removes the tenant's data with its namespace.
                await connection.execute(DropSchema(name, cascade=True, if_exists=True))
            else:
                table = _sqlite_table(input.tenant_id)
                existed = await connection.run_sync(_has_table, table.name)
                await connection.run_sync(table.drop, checkfirst=True)
        return StepResult(changed=existed)

    @activity.defn(name="write_resource_record")
    async def write_resource_record(self, input: WriteResourceRecordInput) -> StepResult:
        store = self._store(input.store)
        await store.connect()
        key = record_key(input.tenant_id)
        existed = await store.head(key) is not None
        record = ResourceRecord(tenant_id=input.tenant_id, provisioned_resources=input.resources)
        await store.put(
            key, _chunks(record.model_dump_json().encode()), content_type="application/json"
        )
        return StepResult(changed=not existed)

    @activity.defn(name="read_resource_record")
    async def read_resource_record(self, input: ResourceRecordInput) -> ReadResourceRecordResult:
        store = self._store(input.store)
        await store.connect()
        try:
            content = b"".join([chunk async for chunk in store.get(record_key(input.tenant_id))])
        except KeyError:
            return ReadResourceRecordResult(record=None)
        return ReadResourceRecordResult(record=ResourceRecord.model_validate_json(content))

    @activity.defn(name="delete_resource_record")
    async def delete_resource_record(self, input: ResourceRecordInput) -> StepResult:
        store = self._store(input.store)
        await store.connect()
        return StepResult(changed=await store.delete(record_key(input.tenant_id)))

    def all(self) -> list[Callable[..., Any]]:
        return [
            self.plan_provisioning,
            self.create_bucket_space,
            self.delete_bucket_space,
            self.create_db_schema,
            self.drop_db_schema,
            self.write_resource_record,
            self.read_resource_record,
            self.delete_resource_record,
        ]

    async def close(self) -> None:
        """Release the engines (stores and providers belong to the services)."""
        engines, self._engines = self._engines, {}
        for engine in engines.values():
            await engine.dispose()


def _has_schema(connection: Connection, name: str) -> bool:
    return inspect(connection).has_schema(name)


def _has_table(connection: Connection, name: str) -> bool:
    return inspect(connection).has_table(name)
