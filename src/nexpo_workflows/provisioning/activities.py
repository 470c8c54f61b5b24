"""The activities of tenant provisioning: one per resource kind and action, each idempotent.

Every object store is bound to one bucket, and the ObjectStore interface has no bucket
operations, so a tenant's space in a store is the prefix ``tenants/<tenant>/`` marked by the
object ``tenants/<tenant>/.tenant``. SQL databases get a PostgreSQL schema or, SQLite having
no schemas, a table.

Each create marks what it makes with its owner (the provisioning run), and a delete given an
owner removes only what bears that mark: a compensation then undoes a create whose answer
was lost, and never a resource that was there before its run.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from sqlalchemy import JSON, Column, Connection, MetaData, String, Table, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
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
# Where a namespace's owner is marked: a PostgreSQL schema's comment starts with this; a
# SQLite tenant table holds a row with this key.
_OWNER_MARK = "nexpo-owner:"
OWNER_ROW = ".owner"
# A namespace that does not exist (None is one without an owner's mark).
_ABSENT = object()


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
        marker = await _read_json(store, key)
        if marker is not None:
            return StepResult(changed=_owned(marker.get("owner"), input.owner))
        content = json.dumps({"tenant_id": input.tenant_id, "owner": input.owner}).encode()
        await store.put(key, _chunks(content), content_type="application/json")
        return StepResult(changed=True)

    @activity.defn(name="delete_bucket_space")
    async def delete_bucket_space(self, input: BucketSpaceInput) -> StepResult:
        """Remove everything in the tenant's space but its record (the record activities own
        it), the marker last, so an interrupted delete still finds the space when retried."""
        store = self._store(input.store)
        await store.connect()
        marker, record = marker_key(input.tenant_id), record_key(input.tenant_id)
        if input.owner is not None:
            found = await _read_json(store, marker)
            if found is None or not _owned(found.get("owner"), input.owner):
                return StepResult(changed=False)
        keys = [info.key async for info in store.list(space_prefix(input.tenant_id))]
        for key in keys:
            if key not in (marker, record):
                await store.delete(key)
        return StepResult(changed=await store.delete(marker))

    @activity.defn(name="create_db_schema")
    async def create_db_schema(self, input: DbSchemaInput) -> StepResult:
        """Make the namespace and mark it with its owner in the same transaction, so no
        namespace exists without its mark."""
        engine, dialect = await self._engine(input.provider)
        async with engine.begin() as connection:
            owner = await _schema_owner(connection, dialect, input.tenant_id)
            if owner is not _ABSENT:
                return StepResult(changed=_owned(owner, input.owner))
            if dialect == "postgresql":
                name = schema_name(input.tenant_id)
                await connection.execute(CreateSchema(name))
                if input.owner is not None:
                    # DDL takes no bind parameters; the owner's pattern keeps the literal safe.
                    await connection.exec_driver_sql(
                        f"COMMENT ON SCHEMA \"{name}\" IS '{_OWNER_MARK}{input.owner}'"
                    )
            else:
                table = _sqlite_table(input.tenant_id)
                await connection.run_sync(table.create)
                if input.owner is not None:
                    await connection.execute(
                        table.insert().values(key=OWNER_ROW, value={"owner": input.owner})
                    )
        return StepResult(changed=True)

    @activity.defn(name="drop_db_schema")
    async def drop_db_schema(self, input: DbSchemaInput) -> StepResult:
        engine, dialect = await self._engine(input.provider)
        async with engine.begin() as connection:
            owner = await _schema_owner(connection, dialect, input.tenant_id)
            if owner is _ABSENT or (input.owner is not None and not _owned(owner, input.owner)):
                return StepResult(changed=False)
            if dialect == "postgresql":
                # CASCADE: deprovisioning removes the tenant's data with its namespace.
                await connection.execute(DropSchema(schema_name(input.tenant_id), cascade=True))
            else:
                await connection.run_sync(_sqlite_table(input.tenant_id).drop)
        return StepResult(changed=True)

    @activity.defn(name="write_resource_record")
    async def write_resource_record(self, input: WriteResourceRecordInput) -> StepResult:
        """Write the record; one already there keeps its owner (its run made it)."""
        store = self._store(input.store)
        await store.connect()
        key = record_key(input.tenant_id)
        found = await _read_record(store, input.tenant_id)
        owner = input.owner if found is None else found.owner
        record = ResourceRecord(
            tenant_id=input.tenant_id, provisioned_resources=input.resources, owner=owner
        )
        await store.put(
            key, _chunks(record.model_dump_json().encode()), content_type="application/json"
        )
        return StepResult(changed=found is None or _owned(found.owner, input.owner))

    @activity.defn(name="read_resource_record")
    async def read_resource_record(self, input: ResourceRecordInput) -> ReadResourceRecordResult:
        store = self._store(input.store)
        await store.connect()
        return ReadResourceRecordResult(record=await _read_record(store, input.tenant_id))

    @activity.defn(name="delete_resource_record")
    async def delete_resource_record(self, input: ResourceRecordInput) -> StepResult:
        store = self._store(input.store)
        await store.connect()
        if input.owner is not None:
            found = await _read_record(store, input.tenant_id)
            if found is None or not _owned(found.owner, input.owner):
                return StepResult(changed=False)
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


def _owned(found: object, owner: str | None) -> bool:
    """Whether a resource marked ``found`` is ``owner``'s (never one without a mark)."""
    return owner is not None and found == owner


async def _read_json(store: ObjectStore, key: str) -> dict[str, Any] | None:
    try:
        content = b"".join([chunk async for chunk in store.get(key)])
    except KeyError:
        return None
    found: dict[str, Any] = json.loads(content)
    return found


async def _read_record(store: ObjectStore, tenant_id: str) -> ResourceRecord | None:
    found = await _read_json(store, record_key(tenant_id))
    return None if found is None else ResourceRecord.model_validate(found)


async def _schema_owner(connection: AsyncConnection, dialect: str, tenant_id: str) -> object:
    """The owner marked on the tenant's namespace: _ABSENT when there is none, None when it
    bears no mark."""
    if dialect == "postgresql":
        comment = (
            await connection.execute(
                text(
                    "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace "
                    "WHERE nspname = :name"
                ),
                {"name": schema_name(tenant_id)},
            )
        ).first()
        if comment is None:
            return _ABSENT
        mark = comment[0] or ""
        return mark.removeprefix(_OWNER_MARK) if mark.startswith(_OWNER_MARK) else None
    table = _sqlite_table(tenant_id)
    if not await connection.run_sync(_has_table, table.name):
        return _ABSENT
    row = (await connection.execute(select(table.c.value).where(table.c.key == OWNER_ROW))).first()
    return row[0].get("owner") if row is not None and isinstance(row[0], dict) else None


def _has_table(connection: Connection, name: str) -> bool:
    return inspect(connection).has_table(name)
