"""One probe of one target, bounded in time; the outcome is data (up or down), never an
exception, so a dead target cannot make the activity retry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Mapping
from datetime import UTC, datetime

import httpx

from nexpo_workflows.errors import first_line
from nexpo_workflows.failover.models import ProbeInput, ProbeResult, ProbeTarget
from nexpo_workflows.failover.postgres import PostgresServers
from nexpo_workflows.storage import ObjectStore


class Prober:
    def __init__(
        self,
        stores: Mapping[str, ObjectStore],
        http: httpx.AsyncClient,
        postgres: PostgresServers,
    ) -> None:
        self._stores = stores
        self._http = http
        self._postgres = postgres

    async def _store(self, name: str) -> None:
        try:
            store = self._stores[name]
        except KeyError:
            raise LookupError(
                f"store {name!r} is not enabled on this worker; enabled: {sorted(self._stores)}"
            ) from None
        # A ping only: a probe must not recreate a missing bucket behind an operator's back.
        await store.ping()

    async def _http_get(self, url: str) -> None:
        response = await self._http.get(url)
        if not response.is_success:
            raise RuntimeError(f"HTTP {response.status_code}")

    def _call(self, target: ProbeTarget, timeout: float) -> Coroutine[None, None, None]:
        if target.postgres is not None:
            return self._postgres.probe(target.postgres, timeout)
        if target.store is not None:
            return self._store(target.store)
        return self._http_get(str(target.url))

    async def probe(self, input: ProbeInput) -> ProbeResult:
        target = input.target
        started = time.perf_counter()
        error: str | None = None
        try:
            await asyncio.wait_for(self._call(target, input.timeout_seconds), input.timeout_seconds)
        except TimeoutError:
            error = f"no answer within {input.timeout_seconds:g}s"
        except Exception as exc:
            error = first_line(exc)
        return ProbeResult(
            at=datetime.now(UTC),
            side=input.side,
            target=target.describe(),
            up=error is None,
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
            error=error,
        )
