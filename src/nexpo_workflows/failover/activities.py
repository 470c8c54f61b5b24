"""The failover activities, built once per worker from its services."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from nexpo_workflows.failover.models import (
    PROBE_TARGET_REFUSED,
    NotifyInput,
    ProbeInput,
    ProbeResult,
    RoutingRecord,
)
from nexpo_workflows.failover.probes import Prober
from nexpo_workflows.failover.routing import RoutingTable, routing_store
from nexpo_workflows.services import Services


class FailoverActivities:
    def __init__(self, services: Services) -> None:
        # Unconnected until first used: a store that is down must not keep the worker from
        # starting, it is what the probes are there to report.
        self._stores = services.stores
        self._http = httpx.AsyncClient()
        self._prober = Prober(self._stores, self._http)
        self._allowed_hosts = services.settings.failover_probe_allowed_hosts

    @activity.defn(name="probe_target")
    async def probe_target(self, input: ProbeInput) -> ProbeResult:
        # Checked here too: a workflow started past the gateway must not probe other hosts.
        refusal = input.target.refusal(self._allowed_hosts)
        if refusal is not None:
            raise ApplicationError(refusal, type=PROBE_TARGET_REFUSED, non_retryable=True)
        return await self._prober.probe(input)

    @activity.defn(name="record_active_side")
    async def record_active_side(self, record: RoutingRecord) -> None:
        # Chosen when first needed: a worker without stores runs every other workflow.
        await RoutingTable(routing_store(self._stores)).write(record)

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
        return [self.probe_target, self.record_active_side, self.notify_failover]

    async def close(self) -> None:
        """Release the HTTP client (the stores belong to the services)."""
        await self._http.aclose()
