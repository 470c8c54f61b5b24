"""Record the workflow histories that ``tests/test_replay.py`` replays.

Run from the repository root (after `bash scripts/test.sh` has installed everything):

    .venv/bin/python -m scripts.record_histories [WorkflowType | WorkflowType/case ...]

Each case runs once on a fresh, headless embedded Temporal dev server with an in-process
worker on a fresh PostgreSQL database (127.0.0.1:5432) and a SQLite file in a temporary
directory; failures are injected by ``tests.faults.FaultyProvider`` around those real
providers. The history of each case is written to
``tests/histories/<WorkflowType>/<case>.json``; files of cases not named are left alone.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from sqlalchemy import text
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError, CancelledError
from tests.faults import FaultyProvider
from tests.scripted_model import ScriptedModel
from tests.servers.postgres import cluster_server, fresh_database, logical_server, streaming_standby
from tests.servers.s3 import running_s3
from tests.test_provisioning import FailingActivities

from nexpo_workflows import registry
from nexpo_workflows.client import connect
from nexpo_workflows.config import Settings
from nexpo_workflows.content.models import (
    ContentRequest,
    HumanReview,
    PipelineStage,
    PipelineStatus,
    ReviewMode,
)
from nexpo_workflows.content.workflow import SUBMIT_REVIEW, AIContentPipelineWorkflow
from nexpo_workflows.decisions.models import (
    ApprovalInput,
    DecisionRequest,
    DecisionResult,
    DecisionStage,
)
from nexpo_workflows.decisions.workflow import AIDecisionWorkflow
from nexpo_workflows.devserver import start_dev_server
from nexpo_workflows.failover.models import (
    FailoverInput,
    FailoverState,
    HoldInput,
    ProbeTarget,
    SetActiveSideInput,
)
from nexpo_workflows.failover.workflow import FailoverWorkflow
from nexpo_workflows.health.models import HealthCheckInput
from nexpo_workflows.health.workflow import HealthCheckWorkflow
from nexpo_workflows.llm import LanguageModel
from nexpo_workflows.llm.offline import OfflineModel
from nexpo_workflows.notify import enabled_notifiers
from nexpo_workflows.ports import free_port
from nexpo_workflows.providers import DatabaseProvider, enabled_providers
from nexpo_workflows.provisioning.models import (
    DeprovisionInput,
    ProvisioningStatus,
    ProvisionInput,
)
from nexpo_workflows.provisioning.workflows import (
    DeprovisionResourcesWorkflow,
    ProvisionResourcesWorkflow,
)
from nexpo_workflows.replication.models import ReplicateInput
from nexpo_workflows.replication.workflow import ReplicateObjectWorkflow
from nexpo_workflows.services import Services
from nexpo_workflows.storage import enabled_stores
from nexpo_workflows.sync.models import CaptureMode, SyncInput, SyncPhase, SyncResult, SyncStatus
from nexpo_workflows.sync.workflow import DataSyncWorkflow, sync_workflow_id
from nexpo_workflows.users.models import (
    OffboardingInput,
    OnboardingInput,
    ProviderStatus,
    SagaOptions,
    SagaResult,
    SagaStatus,
    StepMode,
)
from nexpo_workflows.users.workflows import (
    OUTCOME_WHEN_FINISHED,
    UserOffboardingWorkflow,
    UserOnboardingWorkflow,
)
from nexpo_workflows.worker import build_worker

ROOT = Path(__file__).resolve().parent.parent
HISTORIES = ROOT / "tests" / "histories"
# Recorded histories are committed: a fixed identity keeps the host name out of them.
IDENTITY = "record-histories"
# Not a hash of any password: histories must hold nothing secret.
FAKE_HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo"


class RecordingError(Exception):
    """A case did not take the path it exists to record."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise RecordingError(message)


@dataclass
class Lab:
    """One case's surroundings: a client, settings, and workers with chosen faults."""

    client: Client
    settings: Settings
    task_queue: str

    @asynccontextmanager
    async def worker(
        self,
        activities: Callable[[Services], list[Callable[..., Any]]] | None = None,
        **faults: dict[str, Any],
    ) -> AsyncIterator[dict[str, DatabaseProvider]]:
        providers = enabled_providers(self.settings)
        for name, fault in faults.items():
            providers[name] = FaultyProvider(providers[name], **fault)
        services = Services(
            settings=self.settings,
            client=self.client,
            providers=providers,
            stores=enabled_stores(self.settings),
            # Offline even where an API key is set: the same answers on every recording.
            language_model=OfflineModel(),
            notifiers=enabled_notifiers(self.settings),
        )
        try:
            extra = activities(services) if activities else []
            async with build_worker(
                self.client, services, task_queue=self.task_queue, extra_activities=extra
            ):
                yield providers
        finally:
            await services.close()

    async def onboard(self, workflow_id: str, input: OnboardingInput) -> SagaResult:
        return await self.client.execute_workflow(
            UserOnboardingWorkflow.run, input, id=workflow_id, task_queue=self.task_queue
        )

    async def onboard_and_wait(self, workflow_id: str, input: OnboardingInput) -> SagaResult:
        """As ``POST /api/users?wait=true`` does: the start carries the outcome's update."""
        operation = WithStartWorkflowOperation(
            UserOnboardingWorkflow.run,
            input,
            id=workflow_id,
            task_queue=self.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        )
        result: SagaResult = await self.client.execute_update_with_start_workflow(
            OUTCOME_WHEN_FINISHED, start_workflow_operation=operation, result_type=SagaResult
        )
        return result

    async def rolled_back(self, workflow_id: str, input: OnboardingInput) -> SagaResult:
        try:
            await self.onboard(workflow_id, input)
        except WorkflowFailureError as error:
            cause = error.cause
            if not isinstance(cause, ApplicationError):
                raise RecordingError(f"{workflow_id}: failed with {cause!r}") from error
            return SagaResult.model_validate(cause.details[0])
        raise RecordingError(f"{workflow_id}: completed instead of rolling back")


def onboarding(user: int, **options: Any) -> OnboardingInput:
    # Fixed ids and emails: the databases are fresh on every run, and re-recorded histories
    # differ from the last ones only where the code changed (and in timestamps).
    return OnboardingInput(
        email=f"ada.{user}@example.com",
        name="Ada Lovelace",
        password_hash=FAKE_HASH,
        profile={"plan": "pro"},
        user_id=f"00000000-0000-4000-8000-{user:012d}",
        options=SagaOptions(**options),
    )


# The function records the workflow whose id is the case's workflow_id(), or the id it returns
# (a workflow whose id is fixed by its type); others it starts only to prepare that one.
Case = Callable[[Lab, str], Awaitable[str | None]]
CASES: dict[tuple[str, str], Case] = {}


def case(workflow_type: str, name: str) -> Callable[[Case], Case]:
    def register(function: Case) -> Case:
        CASES[workflow_type, name] = function
        return function

    return register


def workflow_id(workflow_type: str, name: str) -> str:
    return f"{workflow_type}-{name}"


@case("HealthCheckWorkflow", "success")
async def health_success(lab: Lab, workflow_id: str) -> None:
    async with lab.worker():
        report = await lab.client.execute_workflow(
            HealthCheckWorkflow.run,
            HealthCheckInput(timeout_seconds=3),
            id=workflow_id,
            task_queue=lab.task_queue,
        )
    expect(report.healthy, f"{workflow_id}: {report}")


@case("HealthCheckWorkflow", "unknown_dependency")
async def health_unknown_dependency(lab: Lab, workflow_id: str) -> None:
    async with lab.worker():
        try:
            await lab.client.execute_workflow(
                HealthCheckWorkflow.run,
                HealthCheckInput(dependencies=["postgres", "oracle"]),
                id=workflow_id,
                task_queue=lab.task_queue,
            )
        except WorkflowFailureError as error:
            cause = error.cause
            expect(
                isinstance(cause, ApplicationError) and cause.type == "UnknownDependency",
                f"{workflow_id}: failed with {cause!r}",
            )
            return
    raise RecordingError(f"{workflow_id}: an unknown dependency was accepted")


@case("UserOnboardingWorkflow", "success_parallel_activity")
async def onboarding_parallel(lab: Lab, workflow_id: str) -> None:
    async with lab.worker():
        result = await lab.onboard(
            workflow_id, onboarding(1, step_mode=StepMode.ACTIVITY, parallel=True)
        )
    expect(result.status is SagaStatus.COMPLETED, f"{workflow_id}: {result.summary()}")


@case("UserOnboardingWorkflow", "success_sequential_local")
async def onboarding_sequential_local(lab: Lab, workflow_id: str) -> None:
    async with lab.worker():
        result = await lab.onboard(
            workflow_id, onboarding(2, step_mode=StepMode.LOCAL, parallel=False)
        )
    expect(result.status is SagaStatus.COMPLETED, f"{workflow_id}: {result.summary()}")


async def failed_step(lab: Lab, workflow_id: str, user: int, mode: StepMode) -> None:
    async with lab.worker(sqlite={"create_fails": "before"}):
        result = await lab.rolled_back(
            workflow_id, onboarding(user, step_mode=mode, timeout_seconds=1.5)
        )
    expect(
        result.status is SagaStatus.ROLLED_BACK and result.failure_kind == "SagaTimeout",
        f"{workflow_id}: {result.summary()}",
    )


@case("UserOnboardingWorkflow", "rolled_back_failed_step")
async def onboarding_failed_step(lab: Lab, workflow_id: str) -> None:
    await failed_step(lab, workflow_id, 3, StepMode.ACTIVITY)


@case("UserOnboardingWorkflow", "rolled_back_failed_step_local")
async def onboarding_failed_step_local(lab: Lab, workflow_id: str) -> None:
    # Local activities retry on workflow timers: a different history from activity mode.
    await failed_step(lab, workflow_id, 4, StepMode.LOCAL)


@case("UserOnboardingWorkflow", "rolled_back_duplicate_email")
async def onboarding_duplicate_email(lab: Lab, workflow_id: str) -> None:
    first = onboarding(5)
    async with lab.worker():
        await lab.onboard(f"{workflow_id}-first", first)
        second = first.model_copy(update={"user_id": "00000000-0000-4000-8000-000000000055"})
        result = await lab.rolled_back(workflow_id, second)
    expect(result.failure_kind == "DuplicateEmail", f"{workflow_id}: {result.summary()}")


@case("UserOnboardingWorkflow", "success_waited_with_update")
async def onboarding_waited(lab: Lab, workflow_id: str) -> None:
    async with lab.worker():
        result = await lab.onboard_and_wait(workflow_id, onboarding(10))
    expect(result.status is SagaStatus.COMPLETED, f"{workflow_id}: {result.summary()}")


@case("UserOnboardingWorkflow", "rolled_back_waited_with_update")
async def onboarding_waited_rolled_back(lab: Lab, workflow_id: str) -> None:
    # The update answers the rolled-back outcome before the run fails with it.
    first = onboarding(11)
    async with lab.worker():
        await lab.onboard(f"{workflow_id}-first", first)
        second = first.model_copy(update={"user_id": "00000000-0000-4000-8000-000000000111"})
        result = await lab.onboard_and_wait(workflow_id, second)
        try:
            await lab.client.get_workflow_handle(workflow_id).result()
        except WorkflowFailureError:
            expect(result.failure_kind == "DuplicateEmail", f"{workflow_id}: {result.summary()}")
            return
    raise RecordingError(f"{workflow_id}: completed instead of rolling back")


@case("UserOnboardingWorkflow", "cancelled_mid_saga")
async def onboarding_cancelled(lab: Lab, workflow_id: str) -> None:
    async with lab.worker(sqlite={"create_delay": 2.0}) as providers:
        handle = await lab.client.start_workflow(
            UserOnboardingWorkflow.run,
            onboarding(6, parallel=False),
            id=workflow_id,
            task_queue=lab.task_queue,
        )
        sqlite = providers["sqlite"]
        assert isinstance(sqlite, FaultyProvider)
        # Cancelled while the first step is done and the second under way.
        await sqlite.create_started.wait()
        await handle.cancel()
        try:
            await handle.result()
        except WorkflowFailureError as error:
            expect(isinstance(error.cause, CancelledError), f"{workflow_id}: failed with {error!r}")
            return
    raise RecordingError(f"{workflow_id}: completed despite the cancellation")


@case("UserOnboardingWorkflow", "rollback_incomplete")
async def onboarding_rollback_incomplete(lab: Lab, workflow_id: str) -> None:
    async with lab.worker(sqlite={"create_fails": "before"}, postgres={"failing_deletes": 100}):
        result = await lab.rolled_back(workflow_id, onboarding(7, timeout_seconds=1))
    expect(result.status is SagaStatus.ROLLBACK_INCOMPLETE, f"{workflow_id}: {result.summary()}")


@case("UserOffboardingWorkflow", "success")
async def offboarding_success(lab: Lab, workflow_id: str) -> None:
    async with lab.worker():
        created = await lab.onboard(f"{workflow_id}-onboarding", onboarding(8))
        result = await lab.client.execute_workflow(
            UserOffboardingWorkflow.run,
            OffboardingInput(user_id=created.user_id),
            id=workflow_id,
            task_queue=lab.task_queue,
        )
    deleted = all(o.status is ProviderStatus.DELETED for o in result.providers)
    expect(deleted, f"{workflow_id}: {result.summary()}")


@case("ReplicateObjectWorkflow", "success")
async def replicate_success(lab: Lab, workflow_id: str) -> None:
    async with lab.worker():
        local = enabled_stores(lab.settings)["local"]
        await local.put("reports/recorded.txt", _one_chunk(b"recorded for replay"))
        result = await lab.client.execute_workflow(
            ReplicateObjectWorkflow.run,
            ReplicateInput(key="reports/recorded.txt", source="local"),
            id=workflow_id,
            task_queue=lab.task_queue,
        )
    expect(result.complete, f"{workflow_id}: {result}")


@case("ReplicateObjectWorkflow", "missing_source")
async def replicate_missing_source(lab: Lab, workflow_id: str) -> None:
    async with lab.worker():
        try:
            await lab.client.execute_workflow(
                ReplicateObjectWorkflow.run,
                ReplicateInput(key="reports/absent.txt", source="local"),
                id=workflow_id,
                task_queue=lab.task_queue,
            )
        except WorkflowFailureError:
            return
    raise RecordingError(f"{workflow_id}: replicated an object that does not exist")


@case("ProvisionResourcesWorkflow", "success")
async def provision_success(lab: Lab, workflow_id: str) -> None:
    async with lab.worker():
        result = await lab.client.execute_workflow(
            ProvisionResourcesWorkflow.run,
            ProvisionInput(tenant_id="acme"),
            id=workflow_id,
            task_queue=lab.task_queue,
        )
    expect(result.status is ProvisioningStatus.COMPLETED, f"{workflow_id}: {result}")


@case("ProvisionResourcesWorkflow", "rolled_back")
async def provision_rolled_back(lab: Lab, workflow_id: str) -> None:
    def failing(services: Services) -> list[Callable[..., Any]]:
        return FailingActivities(
            services, "db_schema:sqlite", None, step_attempts=2, compensation_attempts=3
        ).all()

    async with lab.worker(activities=failing):
        try:
            await lab.client.execute_workflow(
                ProvisionResourcesWorkflow.run,
                ProvisionInput(tenant_id="globex"),
                id=workflow_id,
                task_queue=lab.task_queue,
            )
        except WorkflowFailureError:
            return
    raise RecordingError(f"{workflow_id}: provisioned despite the injected failure")


@case("DeprovisionResourcesWorkflow", "success")
async def deprovision_success(lab: Lab, workflow_id: str) -> None:
    async with lab.worker():
        await lab.client.execute_workflow(
            ProvisionResourcesWorkflow.run,
            ProvisionInput(tenant_id="initech"),
            id=f"{workflow_id}-provision",
            task_queue=lab.task_queue,
        )
        result = await lab.client.execute_workflow(
            DeprovisionResourcesWorkflow.run,
            DeprovisionInput(tenant_id="initech"),
            id=workflow_id,
            task_queue=lab.task_queue,
        )
    expect(result.status is ProvisioningStatus.COMPLETED, f"{workflow_id}: {result}")


@case("FailoverWorkflow", "promote_then_manual_failback")
async def failover_promote_then_manual(lab: Lab, workflow_id: str) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/health"  # nothing listens: the primary is down
    async with lab.worker():
        handle = await lab.client.start_workflow(
            FailoverWorkflow.run,
            FailoverInput(
                service="billing",
                primary=ProbeTarget(url=nowhere),
                secondary=ProbeTarget(store="local"),
                probe_interval_seconds=1,
                probe_timeout_seconds=1,
                failures_to_promote=2,
                successes_to_fail_back=3,
            ),
            id=workflow_id,
            task_queue=lab.task_queue,
        )
        for _ in range(100):
            state = await handle.query("state", result_type=FailoverState)
            if state.active_side == "secondary":
                break
            await asyncio.sleep(0.1)
        expect(state.active_side == "secondary", f"{workflow_id}: never promoted")
        held = await handle.execute_update(
            "hold", HoldInput(reason="recorded hold"), result_type=FailoverState
        )
        expect(held.held, f"{workflow_id}: not held")
        await handle.execute_update(
            "set_active_side",
            SetActiveSideInput(side="primary", reason="recorded manual failback"),
            result_type=FailoverState,
        )
        await handle.execute_update(
            "release", HoldInput(reason="recorded release"), result_type=FailoverState
        )
        await handle.terminate("recording done")


@case("FailoverWorkflow", "postgres_promotion_held")
async def failover_postgres_promotion(lab: Lab, workflow_id: str) -> None:
    service = "app-db"
    async with cluster_server() as primary, streaming_standby(primary) as standby:
        settings = lab.settings.model_copy(
            update={
                "postgres_url": SecretStr(primary.url),
                "postgres_standby_url": SecretStr(standby.url),
                "postgres_failover_service": service,
            }
        )
        async with replace(lab, settings=settings).worker():
            handle = await lab.client.start_workflow(
                FailoverWorkflow.run,
                FailoverInput(
                    service=service,
                    primary=ProbeTarget(postgres="POSTGRES_URL"),
                    secondary=ProbeTarget(postgres="POSTGRES_STANDBY_URL"),
                    probe_interval_seconds=1,
                    probe_timeout_seconds=1,
                    failures_to_promote=2,
                ),
                id=workflow_id,
                task_queue=lab.task_queue,
            )
            await primary.stop("immediate")
            for _ in range(200):
                state = await handle.query("state", result_type=FailoverState)
                if state.held:
                    break
                await asyncio.sleep(0.1)
            expect(
                state.held and state.active_side == "secondary" and state.epoch == 1,
                f"{workflow_id}: not promoted and held: {state}",
            )
            await handle.terminate("recording done")


@case("FailoverWorkflow", "promote_notify_failback_reconcile")
async def failover_notified_and_reconciled(lab: Lab, workflow_id: str) -> None:
    """A switch each way, each notified on the worker's channels, and the reconcile pass
    after the failback (no store pair is bound to the service: an empty pass)."""
    nowhere = f"http://127.0.0.1:{free_port()}/health"
    async with lab.worker():
        handle = await lab.client.start_workflow(
            FailoverWorkflow.run,
            FailoverInput(
                service="ledger",
                primary=ProbeTarget(url=nowhere),
                secondary=ProbeTarget(store="local"),
                probe_interval_seconds=1,
                probe_timeout_seconds=1,
                failures_to_promote=2,
            ),
            id=workflow_id,
            task_queue=lab.task_queue,
        )
        for _ in range(100):
            state = await handle.query("state", result_type=FailoverState)
            if state.active_side == "secondary":
                break
            await asyncio.sleep(0.1)
        expect(state.epoch == 1, f"{workflow_id}: never promoted")
        await handle.execute_update(
            "set_active_side",
            SetActiveSideInput(side="primary", reason="recorded manual failback"),
            result_type=FailoverState,
        )
        for _ in range(100):
            state = await handle.query("state", result_type=FailoverState)
            if state.epoch == 2 and not state.reconcile_pending:
                break
            await asyncio.sleep(0.1)
        expect(not state.reconcile_pending, f"{workflow_id}: never reconciled")
        await handle.terminate("recording done")


@asynccontextmanager
async def decision_worker(lab: Lab, model: LanguageModel) -> AsyncIterator[None]:
    services = Services(
        settings=lab.settings,
        client=lab.client,
        providers=enabled_providers(lab.settings),
        language_model=model,
        notifiers=enabled_notifiers(lab.settings),
    )
    try:
        async with build_worker(lab.client, services, task_queue=lab.task_queue):
            yield
    finally:
        await services.close()


async def start_decision(lab: Lab, workflow_id: str) -> WorkflowHandle[Any, DecisionResult]:
    request = DecisionRequest(
        request_id=workflow_id,
        customer_email="ada@example.com",
        subject="My parcel arrived broken",
        message="The teapot I ordered arrived in pieces.",
        order_id="A-1001",
        order_amount=Decimal("80.00"),
    )
    return await lab.client.start_workflow(
        AIDecisionWorkflow.run, request, id=workflow_id, task_queue=lab.task_queue
    )


@case("AIDecisionWorkflow", "offline_refused_escalated")
async def decision_offline(lab: Lab, workflow_id: str) -> None:
    async with decision_worker(lab, OfflineModel()):
        result = await (await start_decision(lab, workflow_id)).result()
    expect(result.action_executed == "escalate", f"{workflow_id}: {result}")


@case("AIDecisionWorkflow", "risky_refund_approved")
async def decision_approved(lab: Lab, workflow_id: str) -> None:
    model = ScriptedModel()
    model.script(
        "ModelDecision",
        {"action": "refund", "parameters": {"amount": 30}, "risk": 0.9, "rationale": "broken"},
    )
    async with decision_worker(lab, model):
        handle = await start_decision(lab, workflow_id)
        for _ in range(100):
            status = await handle.query(AIDecisionWorkflow.status)
            if status.stage is DecisionStage.AWAITING_APPROVAL:
                break
            await asyncio.sleep(0.1)
        await handle.execute_update(
            "approve_decision",
            ApprovalInput(approver="grace", approved=True, comments="recorded approval"),
        )
        result = await handle.result()
    expect(result.action_executed == "refund", f"{workflow_id}: {result}")


async def two_users(providers: dict[str, DatabaseProvider]) -> None:
    """Users 1 and 2, and only them, in PostgreSQL."""
    await providers["postgres"].connect()
    engine = providers["postgres"].sql_source()
    assert engine is not None
    async with (await engine.ready_engine()).begin() as connection:
        await connection.execute(text("DELETE FROM nexpo_users"))
    for user in (1, 2):
        record = onboarding(user).to_record("", datetime(2026, 1, user, tzinfo=UTC))
        await providers["postgres"].create_user(record)


async def sync_users(
    lab: Lab, workflow_id: str, capture: CaptureMode = CaptureMode.LOG
) -> SyncResult:
    """Two users in PostgreSQL synced to SQLite in batches of one (a fresh copy of the
    table when captured from the log)."""
    settings = lab.settings.model_copy(update={"sync_batch_size": 1, "sync_capture": capture})
    lab = Lab(lab.client, settings, lab.task_queue)
    async with lab.worker() as providers:
        await two_users(providers)
        result: SyncResult = await lab.client.execute_workflow(
            DataSyncWorkflow.run,
            SyncInput(dataset="users", full=True),
            id=workflow_id,
            task_queue=lab.task_queue,
        )
    return result


@case("DataSyncWorkflow", "two_batches")
async def sync_two_batches(lab: Lab, workflow_id: str) -> str:
    """Polling a version column."""
    own_id = sync_workflow_id("users")
    result = await sync_users(lab, own_id, CaptureMode.POLL)
    expect(result.progress.rows_synced == 2 and result.progress.batches == 2, f"{result}")
    return own_id


@case("DataSyncWorkflow", "log_copy_then_changes")
async def sync_log_copy_then_changes(lab: Lab, workflow_id: str) -> str:
    """From the log: the copy of the table, then a run that streams an insert and a delete."""
    own_id = sync_workflow_id("users")
    first = await sync_users(lab, own_id)
    expect(first.progress.rows_synced == 2, f"{first}")
    async with lab.worker() as providers:
        await providers["postgres"].delete_user(str(onboarding(1).user_id))
        await providers["postgres"].create_user(
            onboarding(3).to_record("", datetime(2026, 1, 3, tzinfo=UTC))
        )
        result: SyncResult = await lab.client.execute_workflow(
            DataSyncWorkflow.run, SyncInput(dataset="users"), id=own_id, task_queue=lab.task_queue
        )
    expect(result.progress.rows_synced == 1 and result.progress.rows_deleted == 1, f"{result}")
    return own_id


@case("DataSyncWorkflow", "follow_then_stop")
async def sync_follow_then_stop(lab: Lab, workflow_id: str) -> str:
    """A follow run: the copy of the table, an insert streamed while it follows, idle looks,
    then the stop signal (its position recorded)."""
    own_id = sync_workflow_id("users")
    settings = lab.settings.model_copy(
        update={"sync_batch_size": 1, "sync_follow_poll_seconds": 0.2}
    )
    lab = Lab(lab.client, settings, lab.task_queue)
    async with lab.worker() as providers:
        await two_users(providers)
        handle = await lab.client.start_workflow(
            DataSyncWorkflow.run,
            SyncInput(dataset="users", full=True, follow=True),
            id=own_id,
            task_queue=lab.task_queue,
        )

        async def reached(rows: int) -> None:
            for _ in range(300):
                progress = await handle.query(DataSyncWorkflow.progress)
                if progress.rows_synced == rows and progress.phase is SyncPhase.WAITING:
                    return
                await asyncio.sleep(0.1)
            raise RecordingError(f"{own_id}: not {rows} rows synced: {progress}")

        await reached(2)
        await providers["postgres"].create_user(
            onboarding(3).to_record("", datetime(2026, 1, 3, tzinfo=UTC))
        )
        await reached(3)
        await handle.signal(DataSyncWorkflow.stop)
        result: SyncResult = await handle.result()
    expect(result.status is SyncStatus.STOPPED and result.progress.rows_synced == 3, f"{result}")
    return own_id


@case("DataSyncWorkflow", "scheduled_start")
async def sync_scheduled_start(lab: Lab, workflow_id: str) -> None:
    # A start under another id (a schedule's) runs the dataset's run as a child.
    result = await sync_users(lab, workflow_id)
    expect(result.status is SyncStatus.COMPLETED, f"{workflow_id}: {result}")


@case("AIContentPipelineWorkflow", "published_ai_review")
async def content_published(lab: Lab, workflow_id: str) -> None:
    async with lab.worker():
        result = await lab.client.execute_workflow(
            AIContentPipelineWorkflow.run,
            ContentRequest(topic="Durable timers"),
            id=workflow_id,
            task_queue=lab.task_queue,
        )
    expect(result.status == "published", f"{workflow_id}: {result.summary()}")


async def _reviewed(handle: WorkflowHandle[Any, Any], revision: int, decision: str) -> None:
    for _ in range(100):
        status = await handle.query("status", result_type=PipelineStatus)
        if status.stage is PipelineStage.AWAITING_REVIEW and status.revision == revision:
            break
        await asyncio.sleep(0.1)
    await handle.execute_update(
        SUBMIT_REVIEW,
        HumanReview(reviewer="ada@example.com", decision=decision, comments="recorded"),
        result_type=PipelineStatus,
    )


@case("AIContentPipelineWorkflow", "human_changes_then_approved")
async def content_human_review(lab: Lab, workflow_id: str) -> None:
    async with lab.worker():
        handle = await lab.client.start_workflow(
            AIContentPipelineWorkflow.run,
            ContentRequest(topic="Sagas", review_mode=ReviewMode.HUMAN),
            id=workflow_id,
            task_queue=lab.task_queue,
        )
        await _reviewed(handle, 0, "request_changes")
        await _reviewed(handle, 1, "approve")
        result = await handle.result()
    expect(result.revisions == 1, f"{workflow_id}: {result.summary()}")


@case("AIContentPipelineWorkflow", "publish_failed")
async def content_publish_failed(lab: Lab, workflow_id: str) -> None:
    async with lab.worker(sqlite={"upsert_fails": True}):
        try:
            await lab.client.execute_workflow(
                AIContentPipelineWorkflow.run,
                ContentRequest(topic="Sagas"),
                id=workflow_id,
                task_queue=lab.task_queue,
            )
        except WorkflowFailureError:
            return
    raise RecordingError(f"{workflow_id}: published despite the injected failure")


async def _one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def record(selected: list[tuple[str, str]]) -> None:
    async with AsyncExitStack() as stack:
        data = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nexpo-record-")))
        server = await start_dev_server(
            host="127.0.0.1", port=free_port(), log_path=data / "temporal.log"
        )
        stack.push_async_callback(server.stop)
        # At wal_level=logical: the sync cases read the source's log.
        admin_url = await stack.enter_async_context(logical_server())
        postgres_url = await stack.enter_async_context(fresh_database(admin_url))
        s3_endpoint = await stack.enter_async_context(running_s3())
        settings = Settings(
            _env_file=None,
            enable_temporal=True,
            temporal_server_url=server.address,
            temporal_worker_identity=IDENTITY,
            data_dir=data,
            metrics_bind_address="",
            enable_postgres=True,
            postgres_url=postgres_url,
            enable_sqlite=True,
            onboarding_timeout_seconds=30,
            onboarding_step_timeout_seconds=5,
            onboarding_compensation_attempts=3,
            enable_local_store=True,
            failover_probe_allowed_hosts=["127.0.0.1"],
            enable_s3=True,
            s3_endpoint_url=s3_endpoint,
            aws_access_key_id="recording",
            aws_secret_access_key="recording",
        )
        client = await connect(settings, identity=IDENTITY)
        for workflow_type, name in selected:
            recorded_id = workflow_id(workflow_type, name)
            lab = Lab(client, settings, task_queue=f"record-{recorded_id}")
            recorded_id = await CASES[workflow_type, name](lab, recorded_id) or recorded_id
            history = await client.get_workflow_handle(recorded_id).fetch_history()
            started = history.events[0].workflow_execution_started_event_attributes
            expect(
                started.workflow_type.name == workflow_type,
                f"{recorded_id} is a {started.workflow_type.name}",
            )
            path = HISTORIES / workflow_type / f"{name}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            # Failure stack traces name source files: relative paths keep the recorder's
            # directory (and user name) out of the committed file.
            path.write_text(history.to_json().replace(f"{ROOT}/", "") + "\n")
            print(f"{path.relative_to(ROOT)}: {len(history.events)} events")


def select(names: list[str]) -> list[tuple[str, str]]:
    """The cases named (a workflow type, or ``type/case``); every case when none is."""
    if not names:
        return list(CASES)
    chosen = [key for key in CASES if {key[0], "/".join(key)} & set(names)]
    unknown = set(names) - {part for key in chosen for part in (key[0], "/".join(key))}
    if unknown:
        known = ", ".join("/".join(key) for key in CASES)
        raise SystemExit(f"no such case: {', '.join(sorted(unknown))}; known: {known}")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", help="WorkflowType or WorkflowType/case")
    arguments = parser.parse_args()
    # The injected failures and the failed workflows are the point: a warning for each would
    # bury the list of recorded files.
    for logger in ("temporalio.activity", "temporalio.workflow"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    missing = registry.WORKFLOW_NAMES - {workflow_type for workflow_type, _ in CASES}
    if missing:
        raise SystemExit(f"no case records {', '.join(sorted(missing))}: add one here")
    asyncio.run(record(select(arguments.cases)))


if __name__ == "__main__":
    main()
