"""PostgreSQL failover on real servers: a primary and a streaming standby (initdb,
pg_basebackup -R, pg_ctl), the dev server, an in-process worker running onboarding sagas and
the failover monitor, and a gateway holding its own providers."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
from pydantic import ValidationError
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.service import RPCError

from nexpo_workflows.api.app import create_app
from nexpo_workflows.api.deps import GatewayState
from nexpo_workflows.config import Settings
from nexpo_workflows.failover import (
    FailoverInput,
    FailoverState,
    FailoverWorkflow,
    ProbeTarget,
    RoutingRecord,
    RoutingTable,
    Side,
)
from nexpo_workflows.services import Services
from nexpo_workflows.users.models import OnboardingInput, SagaResult
from nexpo_workflows.users.workflows import UserOnboardingWorkflow
from nexpo_workflows.worker import build_worker
from tests.conftest import API_KEY, CREDENTIALS_IN_USE, LOG_LINES
from tests.history_scan import history_payloads
from tests.servers.postgres import Server, cluster_server, streaming_standby

T = TypeVar("T")
HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo"
# The password in the workers' POSTGRES_URLs (trust authentication ignores it): the secrets
# scan checks that it reaches no history, log or metric.
PASSWORD = f"pg-{uuid.uuid4().hex}"
CREDENTIALS_IN_USE.add(PASSWORD)

PROBE_INTERVAL = 1.0  # the monitor's minimum
PROBE_TIMEOUT = 1.0
FAILURES_TO_PROMOTE = 2
SUCCESSES_TO_FAIL_BACK = 2
REFRESH_SECONDS = 0.5
SAGA_EVERY = 0.3
# The configured bound: the failed probe rounds (each at most an interval and a timeout) and
# one more round, plus room for the promotion and a busy two-core machine's scheduling.
PROMOTION_BOUND = (FAILURES_TO_PROMOTE + 1) * (PROBE_INTERVAL + PROBE_TIMEOUT) + 10.0


def with_password(url: str) -> str:
    return url.replace("postgres@", f"postgres:{PASSWORD}@", 1)


async def fetch(url: str, query: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(url)
    try:
        return list(await connection.fetch(query))
    finally:
        await connection.close()


async def user_ids(url: str) -> set[str]:
    return {row["id"] for row in await fetch(url, "SELECT id FROM nexpo_users")}


async def in_recovery(url: str) -> bool:
    return bool((await fetch(url, "SELECT pg_is_in_recovery() AS r"))[0]["r"])


async def eventually(check: Callable[[], Awaitable[T | None]], seconds: float = 30) -> T:
    async with asyncio.timeout(seconds):
        while True:
            found = await check()
            if found is not None:
                return found
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def replicated_pair(synchronous: bool) -> AsyncIterator[tuple[Server, Server]]:
    """A primary and its streaming standby; with ``synchronous``, every commit waits for the
    standby to have flushed it (``synchronous_standby_names = '*'``, ``synchronous_commit``
    left at ``on``)."""
    async with cluster_server("-c fsync=off") as primary:
        if synchronous:
            # In postgresql.auto.conf, which the base backup copies: the promoted standby then
            # has it too, and its promotion must clear it, or its commits would wait forever.
            await fetch(primary.url, "ALTER SYSTEM SET synchronous_standby_names = '*'")
        async with streaming_standby(primary, "-c fsync=off") as standby:
            await fetch(primary.url, "SELECT pg_reload_conf()")
            state = "sync" if synchronous else "async"

            async def streaming() -> bool | None:
                rows = await fetch(primary.url, "SELECT sync_state FROM pg_stat_replication")
                return [row["sync_state"] for row in rows] == [state] or None

            await eventually(streaming)
            yield primary, standby


@dataclass
class Load:
    """Onboarding sagas started every ``SAGA_EVERY`` seconds until stopped."""

    client: Client
    task_queue: str
    started: list[tuple[float, str, WorkflowHandle[Any, SagaResult]]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while not self.stop.is_set():
            user_id = str(uuid.uuid4())
            handle = await self.client.start_workflow(
                UserOnboardingWorkflow.run,
                OnboardingInput(
                    email=f"load.{user_id[:12]}@example.com",
                    name="Load Test",
                    password_hash=HASH,
                    user_id=user_id,
                ),
                id=f"user-onboarding-{user_id}",
                task_queue=self.task_queue,
            )
            self.started.append((time.monotonic(), user_id, handle))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), SAGA_EVERY)

    async def completed_after(self, moment: float, count: int) -> None:
        """Wait until ``count`` sagas started after ``moment`` have completed."""

        async def done() -> bool | None:
            later = [handle for started, _, handle in self.started if started > moment]
            if len(later) < count:
                return None
            await asyncio.gather(*(handle.result() for handle in later[:count]))
            return True

        await eventually(done, 60)

    async def outcomes(self) -> tuple[dict[str, float], set[str]]:
        """Once stopped: the completed users (with when their saga started) and the failed."""
        completed: dict[str, float] = {}
        failed: set[str] = set()
        for started, user_id, handle in self.started:
            try:
                await asyncio.wait_for(handle.result(), 60)
                completed[user_id] = started
            except WorkflowFailureError:
                failed.add(user_id)
        return completed, failed


def monitor_input(service: str) -> FailoverInput:
    return FailoverInput(
        service=service,
        primary=ProbeTarget(postgres="POSTGRES_URL"),
        secondary=ProbeTarget(postgres="POSTGRES_STANDBY_URL"),
        probe_interval_seconds=PROBE_INTERVAL,
        probe_timeout_seconds=PROBE_TIMEOUT,
        failures_to_promote=FAILURES_TO_PROMOTE,
        successes_to_fail_back=SUCCESSES_TO_FAIL_BACK,
    )


async def activities_in_order(handle: WorkflowHandle[Any, Any]) -> list[str]:
    return [
        event.activity_task_scheduled_event_attributes.activity_type.name
        async for event in handle.fetch_history_events()
        if event.HasField("activity_task_scheduled_event_attributes")
    ]


@pytest.mark.parametrize("synchronous", [True, False], ids=["synchronous", "asynchronous"])
async def test_a_killed_primary_is_replaced_by_its_promoted_standby_under_load(
    client: Client, make_settings: Callable[..., Settings], task_queue: str, synchronous: bool
) -> None:
    service = f"pg-{uuid.uuid4().hex[:8]}"
    async with replicated_pair(synchronous) as (primary, standby):
        settings = make_settings(
            enable_postgres=True,
            postgres_url=with_password(primary.url),
            postgres_standby_url=with_password(standby.url),
            postgres_failover_service=service,
            postgres_routing_refresh_seconds=REFRESH_SECONDS,
            enable_sqlite=True,
            onboarding_timeout_seconds=60,
            onboarding_step_timeout_seconds=5,
        )
        worker_services = Services.from_settings(settings, client)
        # The gateway's own providers, connected before the failover like a running gateway's.
        gateway_services = Services.from_settings(settings, client)
        app = create_app(GatewayState(gateway_services, client, metrics_url=None))
        routing = RoutingTable.from_settings(settings)
        load = Load(client, task_queue)
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(worker_services.close)
            stack.push_async_callback(gateway_services.close)
            stack.push_async_callback(routing.close)
            await stack.enter_async_context(build_worker(client, worker_services))
            gateway = await stack.enter_async_context(
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app),
                    base_url="http://gw",
                    headers={"X-API-Key": API_KEY},
                )
            )
            monitor = await client.start_workflow(
                FailoverWorkflow.run,
                monitor_input(service),
                id=f"failover-{service}",
                task_queue=task_queue,
            )
            stack.push_async_callback(monitor.terminate, "test over")
            loading = asyncio.create_task(load.run())
            stack.callback(loading.cancel)

            await load.completed_after(0, 3)
            first_user = load.started[0][1]
            assert (await gateway.get(f"/api/users/{first_user}")).json()["stored_in"] == {
                "postgres": True,
                "sqlite": True,
            }

            await primary.stop("immediate")
            killed = time.monotonic()

            async def promoted() -> RoutingRecord | None:
                record = await routing.read(service)
                moved = record is not None and record.active_side is Side.SECONDARY
                return record if moved else None

            record = await eventually(promoted, PROMOTION_BOUND)
            switched = time.monotonic()
            assert record.epoch == 1
            assert "2 consecutive probes" in record.reason
            assert not await in_recovery(standby.url)
            # Promoted before the record sent anyone to it.
            order = await activities_in_order(monitor)
            assert order.index("promote_postgres") < order.index("record_active_side")

            # The sagas resume on the promoted standby, through the same providers.
            await load.completed_after(switched, 3)
            user_after = next(user for at, user, _ in load.started if at > switched)
            view = (await gateway.get(f"/api/users/{user_after}")).json()
            assert view["stored_in"] == {"postgres": True, "sqlite": True}, view

            # The old primary comes back, a primary still (its data says so): no worker, no
            # gateway may write to it again.
            await primary.start()
            assert not await in_recovery(primary.url)
            on_old_primary = await user_ids(primary.url)
            restarted = time.monotonic()
            await load.completed_after(restarted + 2 * REFRESH_SECONDS, 3)

            async def healthy_again() -> FailoverState | None:
                state: FailoverState = await monitor.query(FailoverWorkflow.state)
                return state if state.consecutive_successes > SUCCESSES_TO_FAIL_BACK else None

            # Healthy again for more rounds than a failback needs: held, and no failback.
            state = await eventually(healthy_again)
            assert (state.active_side, state.epoch, state.held) == (Side.SECONDARY, 1, True)
            assert state.hold_reason is not None
            assert "rebuild the primary server" in state.hold_reason
            assert await routing.read(service) == record

            load.stop.set()
            await loading
            completed, failed = await load.outcomes()
            # The targets named settings: the URLs' password is in no history and no log line.
            assert PASSWORD not in await history_payloads(client, monitor.id)
            assert not [line for line in LOG_LINES if PASSWORD in line]

        postgres_users = await user_ids(standby.url)
        sqlite_users = {row[0] for row in _sqlite_ids(settings)}
        assert completed, "no saga completed"
        # Nothing partial: a failed saga was compensated everywhere.
        assert not failed & (postgres_users | sqlite_users)
        assert sqlite_users == set(completed)
        lost = set(completed) - postgres_users
        if synchronous:
            assert not lost, f"{len(lost)} completed users lost"
        else:
            # Asynchronous replication can lose what the standby had not received when the
            # primary died: only sagas that had completed by then.
            assert all(completed[user] < killed for user in lost), lost
        assert postgres_users <= set(completed)
        assert await user_ids(primary.url) == on_old_primary
        inserted = await fetch(
            primary.url, "SELECT n_tup_ins FROM pg_stat_user_tables WHERE relname = 'nexpo_users'"
        )
        # Counted since the restart (a crash resets the statistics).
        assert [row["n_tup_ins"] for row in inserted] == [0]


def _sqlite_ids(settings: Settings) -> list[tuple[str]]:
    with sqlite3.connect(settings.sqlite_file) as db:
        return list(db.execute("SELECT id FROM nexpo_users"))


async def test_a_postgres_monitor_needs_both_settings_and_the_workers_to_follow_it(
    client: Client, make_settings: Callable[..., Settings]
) -> None:
    with pytest.raises(ValidationError, match="primary is POSTGRES_URL"):
        FailoverInput(
            service="pg",
            primary=ProbeTarget(postgres="POSTGRES_URL"),
            secondary=ProbeTarget(store="local"),
        )
    with pytest.raises(ValidationError, match="primary is POSTGRES_URL"):
        FailoverInput(
            service="pg",
            primary=ProbeTarget(postgres="POSTGRES_STANDBY_URL"),
            secondary=ProbeTarget(postgres="POSTGRES_URL"),
        )
    settings = make_settings(
        postgres_failover_service="orders-db",
        postgres_standby_url="postgresql://postgres@127.0.0.1:1/postgres",
    )
    services = Services.from_settings(settings, client)
    app = create_app(GatewayState(services, client, metrics_url=None))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gw", headers={"X-API-Key": API_KEY}
    ) as gateway:
        service = f"pg-{uuid.uuid4().hex[:8]}"
        body = monitor_input(service).model_dump(mode="json")
        refused = await gateway.post("/api/cloud/failover", json=body)
        assert refused.status_code == 422, refused.text
        assert "POSTGRES_FAILOVER_SERVICE is orders-db" in refused.json()["detail"]
        with pytest.raises(RPCError):
            await client.get_workflow_handle(f"failover-{service}").describe()
    await services.close()
