"""Probes of each dependency, shared by the health-check activities and the direct mode."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Protocol

from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import Client

from nexpo_workflows.errors import first_line
from nexpo_workflows.health.models import DependencyState, DependencyStatus, HealthReport

TEMPORAL = "temporal"


class UnknownDependencyError(LookupError):
    pass


class Pingable(Protocol):
    """A database provider or an object store: anything with one cheap round trip."""

    async def ping(self) -> None: ...


def _backend_probe(backend: Pingable) -> Callable[[], Awaitable[object]]:
    async def probe() -> None:
        await backend.ping()

    return probe


class DependencyChecker:
    """Knows every enabled dependency and how to probe each within a time bound."""

    def __init__(
        self,
        backends: Mapping[str, Pingable],
        temporal_client: Client | None = None,
    ) -> None:
        self._probes: dict[str, Callable[[], Awaitable[object]]] = {}
        if temporal_client is not None:
            service = temporal_client.workflow_service

            async def temporal_probe() -> None:
                await service.get_system_info(GetSystemInfoRequest())

            self._probes[TEMPORAL] = temporal_probe
        for name, backend in backends.items():
            self._probes[name] = _backend_probe(backend)

    @property
    def names(self) -> list[str]:
        return list(self._probes)

    async def check(self, name: str, timeout_seconds: float) -> DependencyStatus:
        try:
            probe = self._probes[name]
        except KeyError:
            raise UnknownDependencyError(
                f"unknown dependency {name!r}; enabled: {', '.join(self.names) or 'none'}"
            ) from None
        started = time.perf_counter()
        error: str | None = None
        try:
            await asyncio.wait_for(probe(), timeout_seconds)
        except TimeoutError:
            error = f"no answer within {timeout_seconds:g}s"
        except Exception as exc:
            error = first_line(exc)
        return DependencyStatus(
            name=name,
            status=DependencyState.DOWN if error else DependencyState.UP,
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
            error=error,
        )

    async def check_all(self, timeout_seconds: float) -> HealthReport:
        """The same checks without Temporal in between (used when ENABLE_TEMPORAL=false)."""
        statuses = await asyncio.gather(*(self.check(n, timeout_seconds) for n in self.names))
        return HealthReport(checked_at=datetime.now(UTC), dependencies=list(statuses))
