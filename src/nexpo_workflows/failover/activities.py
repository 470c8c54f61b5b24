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
    NotifyInput,
    ProbeInput,
    ProbeResult,
    PromoteInput,
    RoutingRecord,
    postgres_refusal,
)
from nexpo_workflows.failover.postgres import PostgresServers
from nexpo_workflows.failover.probes import Prober
from nexpo_workflows.failover.routing import RoutingTable, routing_store
from nexpo_workflows.services import Services


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

    @activity.defn(name="notify_failover")
    async def notify_failover(self, input: NotifyInput) -> None:
        record = input.record
        activity.logger.warning(
            "failover: %s switched from %s to %s: %s",
            record.service,
            input.previous_side,
            record.active_side,
            record.reason,
        )

    def all(self) -> list[Callable[..., Any]]:
        return [
            self.probe_target,
            self.promote_postgres,
            self.record_active_side,
            self.notify_failover,
        ]

    async def close(self) -> None:
        """Release the HTTP client (the stores belong to the services)."""
        await self._http.aclose()
