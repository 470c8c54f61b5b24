"""The durable routing record: which side of a service is active, since when, and why.

The failover activities write it; the gateway and the CLI read it. It lives in the first
enabled object store (the local store by default), as ``routing/<service>.json``. A local
store is only visible on its own host: a multi-host deployment should enable a shared cloud
store (S3, Azure Blob or GCS) so every worker and gateway reads the same record.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

from nexpo_workflows.config import ConfigError, Settings
from nexpo_workflows.failover.models import RoutingRecord
from nexpo_workflows.storage import ObjectStore, enabled_stores

PREFIX = "routing/"


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
        self._connected = False

    @classmethod
    def from_settings(cls, settings: Settings) -> RoutingTable:
        """A table on its own store instance; close it with ``close()``."""
        return cls(routing_store(enabled_stores(settings)))

    async def _ready(self) -> ObjectStore:
        if not self._connected:
            await self.store.connect()
            self._connected = True
        return self.store

    async def read(self, service: str) -> RoutingRecord | None:
        store = await self._ready()
        try:
            content = b"".join([chunk async for chunk in store.get(_key(service))])
        except KeyError:
            return None
        return RoutingRecord.model_validate_json(content)

    async def write(self, record: RoutingRecord) -> None:
        store = await self._ready()
        await store.put(
            _key(record.service),
            _once(record.model_dump_json().encode()),
            content_type="application/json",
        )

    async def close(self) -> None:
        await self.store.close()
