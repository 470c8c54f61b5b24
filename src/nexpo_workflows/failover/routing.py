"""The durable routing record: which side of a service is active, since when, and why.

The failover activities write it; the gateway, the CLI and the store pair read it. It lives in
the first enabled object store, as ``routing/<service>.json``: the store pair when one is
enabled (first in the registry), whose record is written to both of its sides so that it can
be read and moved while either is down; otherwise the first cloud store, or the local store
by default. A local store is only visible on its own host: a multi-host deployment should
enable a shared cloud store (S3, Azure Blob or GCS) so every worker and gateway reads the
same record.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TypeVar

from nexpo_workflows.config import ConfigError, Settings
from nexpo_workflows.errors import first_line
from nexpo_workflows.failover.models import RoutingRecord
from nexpo_workflows.storage import ObjectStore, StoreUnavailableError, enabled_stores

PREFIX = "routing/"
# With two sides, one that does not answer within these is left out: the record is read from
# the sides that answer and written to those that take it (at least one must). A store that is
# down may take many seconds to say so (its client's own retries), and every refresh of a
# store pair's active side reads the record.
SIDE_READ_TIMEOUT_SECONDS = 2.0
SIDE_WRITE_TIMEOUT_SECONDS = 5.0

log = logging.getLogger(__name__)
T = TypeVar("T")


def _key(service: str) -> str:
    return f"{PREFIX}{service}.json"


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def routing_store(stores: Mapping[str, ObjectStore]) -> ObjectStore:
    """The store that holds the records: the first enabled, in the registry's order."""
    for store in stores.values():
        return store
    raise ConfigError("the routing record needs an object store: enable at least one")


class RoutingTable:
    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._sides = store.sides()
        self._connected: set[int] = set()

    @classmethod
    def from_settings(cls, settings: Settings) -> RoutingTable:
        """A table on its own store instance; close it with ``close()``."""
        return cls(routing_store(enabled_stores(settings)))

    async def _ready(self, side: int) -> ObjectStore:
        store = self._sides[side]
        if side not in self._connected:
            await store.connect()
            self._connected.add(side)
        return store

    async def _on_each_side(
        self, call: Callable[[int], Awaitable[T]], within_seconds: float, action: str
    ) -> list[T]:
        """``call`` on every side; the results of those that answered. One side: its error
        as is. Two: a side that fails or does not answer in time is left out (and connected
        again next time), and only all of them failing is an error."""
        if len(self._sides) == 1:
            return [await call(0)]
        outcomes = await asyncio.gather(
            *(asyncio.wait_for(call(side), within_seconds) for side in range(len(self._sides))),
            return_exceptions=True,
        )
        answered: list[T] = []
        failures: list[str] = []
        for side, outcome in enumerate(outcomes):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, Exception):
                    raise outcome
                self._connected.discard(side)
                reason = (
                    f"no answer within {within_seconds:g}s"
                    if isinstance(outcome, TimeoutError)
                    else first_line(outcome)
                )
                failures.append(f"{self._sides[side].name}: {reason}")
            else:
                answered.append(outcome)
        if not answered:
            raise StoreUnavailableError(f"{action} on no side: {'; '.join(failures)}")
        if failures:
            log.warning("%s: side left out: %s", action, "; ".join(failures))
        return answered

    async def _read_side(self, side: int, service: str) -> RoutingRecord | None:
        store = await self._ready(side)
        try:
            content = b"".join([chunk async for chunk in store.get(_key(service))])
        except KeyError:
            return None
        return RoutingRecord.model_validate_json(content)

    async def read(self, service: str) -> RoutingRecord | None:
        """The record; of two sides', the latest (a side that was down missed the newer):
        the higher epoch, then the later switch."""
        records = await self._on_each_side(
            lambda side: self._read_side(side, service),
            SIDE_READ_TIMEOUT_SECONDS,
            f"reading the routing record of {service}",
        )
        return max(
            (record for record in records if record is not None),
            key=lambda record: (record.epoch, record.since),
            default=None,
        )

    async def _write_side(self, side: int, record: RoutingRecord) -> None:
        store = await self._ready(side)
        await store.put(
            _key(record.service),
            _once(record.model_dump_json().encode()),
            content_type="application/json",
        )

    async def write(self, record: RoutingRecord) -> None:
        await self._on_each_side(
            lambda side: self._write_side(side, record),
            SIDE_WRITE_TIMEOUT_SECONDS,
            f"writing the routing record of {record.service}",
        )

    async def close(self) -> None:
        await self.store.close()
