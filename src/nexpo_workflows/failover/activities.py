"""The failover activities, built once per worker from its services."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from nexpo_workflows.failover.models import (
    POSTGRES_FAILOVER_REFUSED,
    PROBE_TARGET_REFUSED,
    ChannelsInput,
    NotifyInput,
    ProbeInput,
    ProbeResult,
    PromoteInput,
    ReconcileInput,
    ReconcileReport,
    RoutingRecord,
    postgres_refusal,
)
from nexpo_workflows.failover.postgres import PostgresServers
from nexpo_workflows.failover.probes import Prober
from nexpo_workflows.failover.routing import RoutingTable, routing_store
from nexpo_workflows.notify.base import Notification
from nexpo_workflows.notify.delivery import NOTIFICATION_REJECTED, deliver
from nexpo_workflows.services import Services
from nexpo_workflows.storage.pair import StorePair


def switch_notification(input: NotifyInput) -> Notification:
    """What people and receivers are told of one switch; built from the recorded switch
    alone, so every retry and channel sends the same notification under the same id."""
    record = input.record
    return Notification(
        id=record.transition_id,
        event="failover.switched",
        subject=(
            f"{record.service}: {input.previous_side} -> {record.active_side} "
            f"(epoch {record.epoch})"
        ),
        body=(
            f"{record.service} now runs on its {record.active_side} "
            f"(was {input.previous_side}) since {record.since.isoformat()}.\n"
            f"Reason: {record.reason}\n"
            f"Epoch: {record.epoch}\n"
            f"Monitor: {record.workflow_id or '-'}\n"
        ),
        data={
            "service": record.service,
            "previous_side": str(input.previous_side),
            "active_side": str(record.active_side),
            "epoch": record.epoch,
            "since": record.since.isoformat(),
            "reason": record.reason,
            "workflow_id": record.workflow_id,
        },
    )


class FailoverActivities:
    def __init__(self, services: Services) -> None:
        # Unconnected until first used: a store that is down must not keep the worker from
        # starting, it is what the probes are there to report.
        self._stores = services.stores
        self._http = httpx.AsyncClient()
        self._settings = services.settings
        self._postgres = PostgresServers(services.settings)
        self._prober = Prober(self._stores, self._http, self._postgres)
        self._allowed_hosts = services.settings.failover_probe_allowed_hosts
        self._notifiers = services.notifiers

    @activity.defn(name="probe_target")
    async def probe_target(self, input: ProbeInput) -> ProbeResult:
        # Checked here too: a workflow started past the gateway must not probe other hosts.
        refusal = input.target.refusal(self._allowed_hosts)
        if refusal is not None:
            raise ApplicationError(refusal, type=PROBE_TARGET_REFUSED, non_retryable=True)
        return await self._prober.probe(input)

    @activity.defn(name="promote_postgres")
    async def promote_postgres(self, input: PromoteInput) -> bool:
        """Promote the target's standby; True if this call promoted it (already a primary:
        False, and success, so a retry or a hand-made promotion is fine)."""
        refusal = postgres_refusal(
            input.service,
            self._settings.postgres_failover_service,
            self._settings.postgres_standby_url is not None,
        )
        if refusal is not None:
            raise ApplicationError(refusal, type=POSTGRES_FAILOVER_REFUSED, non_retryable=True)
        assert input.target.postgres is not None
        promoted = await self._postgres.promote(input.target.postgres, input.timeout_seconds)
        activity.logger.warning(
            "failover: %s: %s %s",
            input.service,
            input.target.describe(),
            "promoted" if promoted else "already a primary",
        )
        return promoted

    @activity.defn(name="record_active_side")
    async def record_active_side(self, record: RoutingRecord) -> RoutingRecord:
        """Write the record with an epoch above the stored one's; the record as stored."""
        # Chosen when first needed: a worker without stores runs every other workflow.
        table = RoutingTable(routing_store(self._stores))
        stored = await table.read(record.service)
        if stored is not None and (stored.workflow_id, stored.since) == (
            record.workflow_id,
            record.since,
        ):
            return stored  # a retry of a write that was done
        # Above the stored epoch even for a monitor started anew (its count starts at 1).
        epoch = max(record.epoch, (stored.epoch if stored is not None else 0) + 1)
        written = record.model_copy(update={"epoch": epoch})
        await table.write(written)
        return written

    @activity.defn(name="failover_channels")
    async def failover_channels(self, input: ChannelsInput) -> list[str]:
        """The notifier channels a switch is announced on (the log alone when none is set)."""
        return list(self._notifiers)

    @activity.defn(name="notify_failover")
    async def notify_failover(self, input: NotifyInput) -> None:
        record = input.record
        if input.channel is None:
            activity.logger.warning(
                "failover: %s switched from %s to %s: %s",
                record.service,
                input.previous_side,
                record.active_side,
                record.reason,
            )
            return
        try:
            notifier = self._notifiers[input.channel]
        except KeyError:
            raise ApplicationError(
                f"channel {input.channel} is not enabled on this worker",
                type=NOTIFICATION_REJECTED,
                non_retryable=True,
            ) from None
        await deliver(notifier, switch_notification(input))

    @activity.defn(name="reconcile_store_pair")
    async def reconcile_store_pair(self, input: ReconcileInput) -> ReconcileReport:
        """After a failback: copy back to the primary what the store pairs bound to this
        service took on their secondary meanwhile (none bound: nothing to do)."""
        report = ReconcileReport()
        for name, store in self._stores.items():
            if isinstance(store, StorePair) and store.service == input.service:
                done = await store.reconcile(progress=activity.heartbeat)
                report.pairs.append(name)
                report.copied += done.copied
                report.deleted += done.deleted
                report.already_present += done.already_present
        return report

    def all(self) -> list[Callable[..., Any]]:
        return [
            self.probe_target,
            self.promote_postgres,
            self.record_active_side,
            self.failover_channels,
            self.notify_failover,
            self.reconcile_store_pair,
        ]

    async def close(self) -> None:
        """Release the HTTP client (the stores belong to the services)."""
        await self._http.aclose()
