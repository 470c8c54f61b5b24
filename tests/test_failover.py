"""FailoverWorkflow against real servers: the time-skipping server with real Azurite and
moto's S3 server for the probe rounds, the dev server for the update (which the time-skipping
server does not support), and a small HTTP server for URL targets."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from pydantic import SecretStr
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from nexpo_workflows.api.app import create_app
from nexpo_workflows.api.deps import GatewayState
from nexpo_workflows.config import Settings
from nexpo_workflows.failover import (
    FailoverActivities,
    FailoverInput,
    FailoverState,
    FailoverWorkflow,
    ProbeTarget,
    RoutingRecord,
    RoutingTable,
    SetActiveSideInput,
    Side,
)
from nexpo_workflows.failover.models import PROBE_TARGET_REFUSED
from nexpo_workflows.ports import free_port
from nexpo_workflows.services import Services
from nexpo_workflows.storage import enabled_stores
from nexpo_workflows.storage.azure import AzureBlobStore
from nexpo_workflows.worker import build_worker
from tests.conftest import API_KEY, run_cli, time_skipping_server
from tests.servers import HOST
from tests.servers.azurite import connection_string, running_azurite
from tests.servers.s3 import running_s3

T = TypeVar("T")
# Long enough that only time skipping gets a second round within the test.
INTERVAL = 60.0


@pytest.fixture(scope="module")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    async with time_skipping_server() as started:
        yield started


class StatusServer:
    """An HTTP server that answers every request with the next status of its script, then
    keeps answering the last one."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.requests = 0
        self.port = 0

    def _status(self) -> int:
        status = self.statuses[min(self.requests, len(self.statuses) - 1)]
        self.requests += 1
        return status

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            status = self._status()
            writer.write(
                f"HTTP/1.1 {status} S\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
        writer.close()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/health"

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[StatusServer]:
        server = await asyncio.start_server(self._answer, HOST, 0)
        self.port = server.sockets[0].getsockname()[1]
        async with server:
            yield self


def http(url: str) -> ProbeTarget:
    return ProbeTarget.model_validate({"url": url})


def failover_input(primary: ProbeTarget, secondary: ProbeTarget, **options: Any) -> FailoverInput:
    values: dict[str, Any] = {
        "service": f"svc-{uuid.uuid4().hex[:8]}",
        "primary": primary,
        "secondary": secondary,
        "probe_interval_seconds": INTERVAL,
        "probe_timeout_seconds": 1.0,
    }
    values.update(options)
    return FailoverInput.model_validate(values)


@contextlib.asynccontextmanager
async def failover_worker(
    client: Client, settings: Settings, task_queue: str
) -> AsyncIterator[RoutingTable]:
    """A worker with the failover activities; yields a separate reader of the routing record,
    as the gateway or the CLI would hold."""
    services = Services.from_settings(settings, client)
    activities = FailoverActivities(services)
    routing = RoutingTable.from_settings(settings)
    try:
        async with build_worker(
            client,
            services,
            task_queue=task_queue,
            extra_activities=activities.all(),
        ):
            yield routing
    finally:
        await routing.close()
        await activities.close()
        await services.close()


async def eventually(check: Callable[[], Awaitable[T | None]]) -> T:
    async with asyncio.timeout(30):
        while True:
            found = await check()
            if found is not None:
                return found
            await asyncio.sleep(0.05)


async def rounds_done(handle: WorkflowHandle[Any, Any], rounds: int) -> FailoverState:
    """The state once ``rounds`` rounds are complete and the workflow waits on its timer."""

    async def done() -> FailoverState | None:
        state: FailoverState = await handle.query(FailoverWorkflow.state)
        return state if state.total_rounds >= rounds else None

    async def waiting() -> bool | None:
        # A query may be answered before the server has recorded the round's timer; skipping
        # time before then would move the timer out of reach.
        return await last_command(handle) == EventType.EVENT_TYPE_TIMER_STARTED or None

    state = await eventually(done)
    assert state.total_rounds == rounds, "more rounds than the clock allowed"
    await eventually(waiting)
    return state


async def last_command(handle: WorkflowHandle[Any, Any]) -> EventType.ValueType:
    """The type of the latest event that is not a workflow task's own (the test server also
    runs empty workflow tasks, e.g. for queries)."""
    events = (await handle.fetch_history()).events
    return next(
        event.event_type
        for event in reversed(events)
        if not EventType.Name(event.event_type).startswith("EVENT_TYPE_WORKFLOW_TASK_")
    )


async def next_round(
    env: WorkflowEnvironment, handle: WorkflowHandle[Any, Any], rounds: int
) -> FailoverState:
    await env.sleep(INTERVAL)
    return await rounds_done(handle, rounds)


async def start(
    client: Client, input: FailoverInput, task_queue: str
) -> WorkflowHandle[FailoverWorkflow, None]:
    return await client.start_workflow(
        FailoverWorkflow.run, input, id=f"failover-{input.service}", task_queue=task_queue
    )


@contextlib.asynccontextmanager
async def terminated_after(handle: WorkflowHandle[Any, Any]) -> AsyncIterator[None]:
    """A monitor never ends by itself: end it even when the test fails."""
    try:
        yield
    finally:
        with contextlib.suppress(RPCError):
            await handle.terminate("test over")


async def test_a_dead_store_is_replaced_after_n_failures_and_back_after_m_successes(
    env: WorkflowEnvironment, tmp_path: Path
) -> None:
    azurite_port = free_port(HOST)
    container = f"nexpo-failover-{uuid.uuid4().hex[:8]}"
    task_queue = f"failover-{uuid.uuid4()}"
    input = failover_input(
        ProbeTarget(store="azure"),
        ProbeTarget(store="s3"),
        failures_to_promote=3,
        successes_to_fail_back=2,
        # The Azure SDK's first request on a busy machine can take over a second; a live
        # store must not be counted down by a timeout meant for dead HTTP targets.
        probe_timeout_seconds=10.0,
    )

    async def start_azurite(stack: AsyncExitStack) -> None:
        connection = await stack.enter_async_context(running_azurite(port=azurite_port))
        # Azurite restarts empty: the operator's part is to create the container again.
        creator = AzureBlobStore(SecretStr(connection), container)
        await creator.connect()
        await creator.close()

    primary_server = AsyncExitStack()
    async with primary_server, running_s3() as s3_endpoint:
        settings = Settings(
            _env_file=None,
            data_dir=tmp_path / "data",
            metrics_bind_address="",
            # S3 comes first in the registry, so the routing record lives on the secondary,
            # which stays up while the primary (Azurite) goes down.
            enable_s3=True,
            s3_bucket=f"nexpo-failover-{uuid.uuid4().hex[:8]}",
            s3_endpoint_url=s3_endpoint,
            aws_access_key_id=SecretStr("test"),
            aws_secret_access_key=SecretStr("test"),
            enable_azure_blob=True,
            azure_storage_connection_string=SecretStr(connection_string(azurite_port)),
            azure_blob_container=container,
        )
        secondary = enabled_stores(settings)["s3"]
        await secondary.connect()  # the bucket, which a probe does not create
        await secondary.close()
        await start_azurite(primary_server)
        async with failover_worker(env.client, settings, task_queue) as routing:
            handle = await start(env.client, input, task_queue)
            async with terminated_after(handle):
                state = await rounds_done(handle, 1)
                assert state.active_side is Side.PRIMARY
                assert [(p.side, p.up) for p in state.recent_probes] == [
                    (Side.PRIMARY, True),
                    (Side.SECONDARY, True),
                ], [p.error for p in state.recent_probes]

                await primary_server.aclose()
                for failures in (1, 2):
                    state = await next_round(env, handle, 1 + failures)
                    assert (state.active_side, state.consecutive_failures) == (
                        Side.PRIMARY,
                        failures,
                    )
                assert await routing.read(input.service) is None

                state = await next_round(env, handle, 4)
                assert state.active_side is Side.SECONDARY
                assert state.consecutive_failures == 0
                primary_probes = [p for p in state.recent_probes if p.side is Side.PRIMARY]
                assert [p.up for p in primary_probes] == [True, False, False, False]
                assert all(p.error and p.target == "store:azure" for p in primary_probes[1:])
                record = await routing.read(input.service)
                assert record is not None
                assert record.active_side is Side.SECONDARY
                assert record.workflow_id == handle.id
                assert "3 consecutive" in record.reason

                await start_azurite(primary_server)
                state = await next_round(env, handle, 5)
                assert (state.active_side, state.consecutive_successes) == (Side.SECONDARY, 1)
                assert await routing.read(input.service) == record

                state = await next_round(env, handle, 6)
                assert state.active_side is Side.PRIMARY
                failback = await routing.read(input.service)
                assert failback is not None
                assert failback.active_side is Side.PRIMARY
                assert failback.since > record.since


async def test_the_state_carries_over_continue_as_new(
    env: WorkflowEnvironment, tmp_path: Path
) -> None:
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path / "data",
        metrics_bind_address="",
        failover_probe_allowed_hosts=[HOST],
    )
    task_queue = f"failover-{uuid.uuid4()}"
    input = failover_input(
        ProbeTarget(store="local"),
        ProbeTarget(store="local"),
        failures_to_promote=2,
        continue_as_new_after=3,
        history_limit=4,
    )
    async with (
        StatusServer([503]).running() as down,
        failover_worker(env.client, settings, task_queue) as routing,
    ):
        input = input.model_copy(update={"primary": http(down.url)})
        handle = await start(env.client, input, task_queue)
        # Without a run id: the handle follows the chain of runs.
        latest = env.client.get_workflow_handle(handle.id)
        async with terminated_after(latest):
            await rounds_done(handle, 1)
            state = await next_round(env, latest, 2)
            assert state.active_side is Side.SECONDARY  # promoted, counters reset
            state = await next_round(env, latest, 3)
            assert (state.consecutive_failures, state.rounds_since_continue_as_new) == (1, 3)
            # The timer after the third round ends the run; the next one carries the state.
            state = await next_round(env, latest, 4)
            first_run = handle.result_run_id
            assert (await latest.describe()).run_id != first_run
            assert state.active_side is Side.SECONDARY
            assert state.consecutive_failures == 2
            assert state.rounds_since_continue_as_new == 1
            assert len(state.recent_probes) == 4
            assert all(p.error == "HTTP 503" for p in state.recent_probes if p.side is Side.PRIMARY)
            record = await routing.read(input.service)
            assert record is not None
            assert record.active_side is Side.SECONDARY


@pytest.fixture
def make_settings(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    """The session's settings, with the test HTTP servers' host allowed as a probe target."""

    def make(**overrides: Any) -> Settings:
        return make_settings(**{"failover_probe_allowed_hosts": [HOST], **overrides})

    return make


async def test_an_http_primary_that_starts_failing_is_replaced(
    dev_client: Client, make_settings: Callable[..., Settings], task_queue: str
) -> None:
    async with (
        StatusServer([200, 200, 503]).running() as primary,
        StatusServer([200]).running() as secondary,
        failover_worker(dev_client, make_settings(), task_queue) as routing,
    ):
        input = failover_input(
            http(primary.url),
            http(secondary.url),
            probe_interval_seconds=1.0,
            failures_to_promote=2,
            successes_to_fail_back=3,
        )
        handle = await start(dev_client, input, task_queue)
        async with terminated_after(handle):

            async def promoted() -> FailoverState | None:
                state: FailoverState = await handle.query(FailoverWorkflow.state)
                return state if state.active_side is Side.SECONDARY else None

            state = await eventually(promoted)
            primary_probes = [p for p in state.recent_probes if p.side is Side.PRIMARY]
            assert [p.up for p in primary_probes][:4] == [True, True, False, False]
            assert primary_probes[2].error == "HTTP 503"
            assert primary_probes[2].target == primary.url
            record = await routing.read(input.service)
            assert record is not None
            assert record.active_side is Side.SECONDARY


async def test_an_operator_moves_the_service_through_the_update(
    dev_client: Client, make_settings: Callable[..., Settings], task_queue: str
) -> None:
    async with (
        StatusServer([200]).running() as primary,
        StatusServer([200]).running() as secondary,
        failover_worker(dev_client, make_settings(), task_queue) as routing,
    ):
        input = failover_input(http(primary.url), http(secondary.url), probe_interval_seconds=3600)
        handle = await start(dev_client, input, task_queue)
        async with terminated_after(handle):
            await rounds_done(handle, 1)
            for side, reason, message in [
                ("tertiary", "why not", "side must be one of"),
                ("secondary", "  ", "a reason is required"),
            ]:
                with pytest.raises(WorkflowUpdateFailedError) as rejected:
                    await handle.execute_update(
                        "set_active_side",
                        SetActiveSideInput(side=side, reason=reason),
                        result_type=FailoverState,
                    )
                assert message in str(rejected.value.cause)
            state = await handle.query(FailoverWorkflow.state)
            assert (state.active_side, state.total_rounds) == (Side.PRIMARY, 1)
            assert await routing.read(input.service) is None

            state = await handle.execute_update(
                "set_active_side",
                SetActiveSideInput(side="secondary", reason="maintenance of the primary"),
                result_type=FailoverState,
            )
            assert state.active_side is Side.SECONDARY
            assert (state.consecutive_failures, state.consecutive_successes) == (0, 0)
            record: RoutingRecord | None = await routing.read(input.service)
            assert record is not None
            assert (record.active_side, record.reason) == (
                Side.SECONDARY,
                "manual: maintenance of the primary",
            )
            # The update cut the hour-long timer short: a new round ran at once.
            state = await rounds_done(handle, 2)
            assert state.active_side is Side.SECONDARY

            state = await handle.execute_update(
                "set_active_side",
                SetActiveSideInput(side="primary", reason="maintenance over"),
                result_type=FailoverState,
            )
            assert state.active_side is Side.PRIMARY
            record = await routing.read(input.service)
            assert record is not None
            assert record.active_side is Side.PRIMARY


async def test_the_gateway_starts_reports_and_moves_a_monitor(
    dev_client: Client, make_settings: Callable[..., Settings], task_queue: str
) -> None:
    settings = make_settings()
    services = Services.from_settings(settings, dev_client)
    app = create_app(GatewayState(services, dev_client, metrics_url=None))
    transport = httpx.ASGITransport(app=app)
    async with (
        StatusServer([200]).running() as primary,
        StatusServer([200]).running() as secondary,
        failover_worker(dev_client, settings, task_queue),
        httpx.AsyncClient(
            transport=transport, base_url="http://gw", headers={"X-API-Key": API_KEY}
        ) as gateway,
    ):
        input = failover_input(http(primary.url), http(secondary.url), probe_interval_seconds=3600)
        started = await gateway.post("/api/cloud/failover", json=input.model_dump(mode="json"))
        assert started.status_code == 202, started.text
        handle = dev_client.get_workflow_handle(started.json()["workflowId"])
        async with terminated_after(handle):
            await rounds_done(handle, 1)
            again = await gateway.post("/api/cloud/failover", json=input.model_dump(mode="json"))
            assert again.status_code == 409
            path = f"/api/cloud/failover/{input.service}"
            before = (await gateway.get(path)).json()
            assert before["monitor"]["active_side"] == "primary"
            assert before["routing"] is None
            refused = await gateway.post(
                f"{path}/active-side", json={"side": "tertiary", "reason": "why not"}
            )
            assert refused.status_code == 422
            moved = await gateway.post(
                f"{path}/active-side", json={"side": "secondary", "reason": "maintenance"}
            )
            assert moved.status_code == 200, moved.text
            after = (await gateway.get(path)).json()
            assert after["monitor"]["active_side"] == "secondary"
            assert after["routing"]["active_side"] == "secondary"
        missing = await gateway.post(
            "/api/cloud/failover/nobody/active-side", json={"side": "primary", "reason": "x"}
        )
        assert missing.status_code == 404
    await services.close()


async def _state_when(
    handle: WorkflowHandle[Any, Any], condition: Callable[[FailoverState], bool]
) -> FailoverState:
    async def check() -> FailoverState | None:
        state: FailoverState = await handle.query(FailoverWorkflow.state)
        return state if condition(state) else None

    return await eventually(check)


async def test_a_held_promotion_is_not_failed_back_until_released(
    dev_client: Client,
    make_settings: Callable[..., Settings],
    task_queue: str,
    cli: list[str],
    cli_env: dict[str, str],
) -> None:
    settings = make_settings()
    services = Services.from_settings(settings, dev_client)
    app = create_app(GatewayState(services, dev_client, metrics_url=None))
    async with (
        StatusServer([200]).running() as primary,
        StatusServer([200]).running() as secondary,
        failover_worker(dev_client, settings, task_queue) as routing,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://gw",
            headers={"X-API-Key": API_KEY},
        ) as gateway,
    ):
        input = failover_input(
            http(primary.url),
            http(secondary.url),
            probe_interval_seconds=1.0,
            successes_to_fail_back=2,
        )
        handle = await start(dev_client, input, task_queue)
        path = f"/api/cloud/failover/{input.service}"
        async with terminated_after(handle):
            refused = await gateway.post(f"{path}/hold", json={"reason": "  "})
            assert refused.status_code == 422
            assert "a reason is required" in refused.text
            # Held first: a manual switch probes at once, and two healthy rounds of the primary
            # could fail back before a hold sent after it arrived.
            held = await gateway.post(f"{path}/hold", json={"reason": "until the upgrade is done"})
            assert held.status_code == 200, held.text
            assert held.json()["held"] is True
            promoted = await gateway.post(
                f"{path}/active-side", json={"side": "secondary", "reason": "primary upgrade"}
            )
            assert promoted.status_code == 200, promoted.text
            assert promoted.json()["held"] is True
            rounds = promoted.json()["total_rounds"]
            # A healthy primary for twice the rounds that would fail back: no failback.
            state = await _state_when(handle, lambda s: s.total_rounds >= rounds + 4)
            assert (state.active_side, state.held) == (Side.SECONDARY, True)
            assert state.consecutive_successes >= 4
            status = (await gateway.get(path)).json()
            assert status["monitor"]["held"] is True
            assert status["monitor"]["hold_reason"] == "until the upgrade is done"
            assert status["routing"]["active_side"] == "secondary"

            released = await run_cli(
                [*cli, "cloud", "release", input.service, "--reason", "upgrade done"], cli_env
            )
            assert released.returncode == 0, released.stderr
            assert "active side secondary" in released.stdout
            state = await _state_when(handle, lambda s: s.active_side is Side.PRIMARY)
            assert not state.held
            record = await routing.read(input.service)
            assert record is not None
            assert record.active_side is Side.PRIMARY
            assert "healthy for 2 consecutive probes" in record.reason
    await services.close()


async def test_the_gateway_refuses_unbounded_intervals_and_hosts_not_allowed(
    dev_client: Client, make_settings: Callable[..., Settings]
) -> None:
    services = Services.from_settings(make_settings(), dev_client)
    app = create_app(GatewayState(services, dev_client, metrics_url=None))
    local = {"store": "local"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gw", headers={"X-API-Key": API_KEY}
    ) as gateway:
        for interval in (0.01, 0.5, 3601):
            service = f"svc-{uuid.uuid4().hex[:8]}"
            body = {
                "service": service,
                "primary": local,
                "secondary": local,
                "probe_interval_seconds": interval,
            }
            refused = await gateway.post("/api/cloud/failover", json=body)
            assert refused.status_code == 422, (interval, refused.text)
            assert "probe_interval_seconds" in refused.text
        for url in ("http://169.254.169.254/latest/meta-data", "http://internal.example:8080/"):
            service = f"svc-{uuid.uuid4().hex[:8]}"
            body = {"service": service, "primary": {"url": url}, "secondary": local}
            refused = await gateway.post("/api/cloud/failover", json=body)
            assert refused.status_code == 422, (url, refused.text)
            assert "FAILOVER_PROBE_ALLOWED_HOSTS" in refused.json()["detail"]
            with pytest.raises(RPCError):
                await dev_client.get_workflow_handle(f"failover-{service}").describe()
    await services.close()


async def test_a_worker_refuses_a_target_host_it_does_not_allow(
    dev_client: Client, make_settings: Callable[..., Settings], task_queue: str
) -> None:
    """A monitor started past the gateway (straight on Temporal) fails at its first probe,
    without a request to the target, instead of probing it."""
    async with (
        StatusServer([200]).running() as target,
        failover_worker(dev_client, make_settings(failover_probe_allowed_hosts=[]), task_queue),
    ):
        input = failover_input(http(target.url), ProbeTarget(store="local"))
        handle = await start(dev_client, input, task_queue)
        async with terminated_after(handle):
            with pytest.raises(WorkflowFailureError) as failed:
                await asyncio.wait_for(handle.result(), 30)
        cause = failed.value.cause
        assert isinstance(cause, ApplicationError)
        assert cause.type == PROBE_TARGET_REFUSED
        assert cause.non_retryable
        assert target.requests == 0
