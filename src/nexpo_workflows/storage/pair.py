"""Two stores behind one name (``pair``): a primary and a secondary, e.g. S3 and Azure Blob.

Every call goes to the active side, which the routing record of ``STORE_PAIR_SERVICE`` names:
the record a ``FailoverWorkflow`` of that service writes when it promotes the secondary or fails
back. The side is cached for ``STORE_PAIR_REFRESH_SECONDS`` and read again after a store error,
so the retry of an activity that failed on a side gone down lands on the side the monitor
chose. The pair never picks a side by itself: two workers that disagreed would split the data.

While the secondary is active, each put or delete also writes a journal entry on the secondary
(``nexpo-pair-journal/<sha256 of the key>.json``: the key and the operation), after the object,
so that every write that succeeded is in the journal. After a failback, ``reconcile()`` copies
each journaled object back to the primary (streaming, SHA-256 checked) or deletes it there,
and removes the entry: a pass may stop anywhere and be run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import ClassVar, Literal, Self

from pydantic import BaseModel

from nexpo_workflows.config import ConfigError, Settings
from nexpo_workflows.failover.models import ReconcileReport, Side
from nexpo_workflows.failover.routing import RoutingTable
from nexpo_workflows.storage import STORES, load_store_class
from nexpo_workflows.storage.base import ObjectInfo, ObjectStore, StoreUnavailableError
from nexpo_workflows.storage.copying import copy_verified

JOURNAL_PREFIX = "nexpo-pair-journal/"


class JournalEntry(BaseModel):
    key: str
    op: Literal["put", "delete"]
    # Of what the put stored on the secondary.
    sha256: str | None = None


def _journal_key(key: str) -> str:
    # A digest: a key may be as long as a store allows, and the prefix would make it longer.
    return f"{JOURNAL_PREFIX}{hashlib.sha256(key.encode()).hexdigest()}.json"


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _read_all(store: ObjectStore, key: str) -> bytes:
    return b"".join([chunk async for chunk in store.get(key)])


class StorePair(ObjectStore):
    name: ClassVar[str] = "pair"

    def __init__(
        self,
        primary: ObjectStore,
        secondary: ObjectStore,
        *,
        service: str,
        refresh_seconds: float,
    ) -> None:
        self.primary = primary
        self.secondary = secondary
        self.service = service
        self._refresh_seconds = refresh_seconds
        # The record is kept on both sides (see sides()), so it is read there, not through
        # the pair itself.
        self._routing = RoutingTable(self)
        self._active: Side | None = None
        self._resolved_at = 0.0
        # Concurrent calls on a stale side share one read of the record.
        self._resolving = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        names = (settings.store_pair_primary, settings.store_pair_secondary)
        known = sorted(set(STORES) - {cls.name})
        if any(name not in known for name in names) or names[0] == names[1]:
            raise ConfigError(
                "STORE_PAIR_PRIMARY and STORE_PAIR_SECONDARY must name two different stores "
                f"of {known} when ENABLE_STORE_PAIR is on (got {names[0]!r} and {names[1]!r})"
            )
        primary, secondary = (load_store_class(str(name)).from_settings(settings) for name in names)
        return cls(
            primary,
            secondary,
            service=settings.store_pair_service,
            refresh_seconds=settings.store_pair_refresh_seconds,
        )

    def sides(self) -> Sequence[ObjectStore]:
        return (self.primary, self.secondary)

    async def active_side(self) -> Side:
        """The side the routing record names (the primary without a record), cached."""
        async with self._resolving:
            stale = time.monotonic() - self._resolved_at >= self._refresh_seconds
            if self._active is None or stale:
                record = await self._routing.read(self.service)
                self._active = record.active_side if record is not None else Side.PRIMARY
                self._resolved_at = time.monotonic()
            return self._active

    def _store(self, side: Side) -> ObjectStore:
        return self.primary if side is Side.PRIMARY else self.secondary

    @contextlib.contextmanager
    def _rereading_the_side_on_failure(self) -> Iterator[None]:
        try:
            yield
        except StoreUnavailableError:
            # The monitor may have switched since: the next call (a retry) reads the record.
            self._active = None
            raise

    async def _active_store(self) -> tuple[Side, ObjectStore]:
        side = await self.active_side()
        return side, self._store(side)

    async def connect(self) -> None:
        # The other side is connected when it becomes active: it may be the one down.
        _, store = await self._active_store()
        with self._rereading_the_side_on_failure():
            await store.connect()

    async def close(self) -> None:
        await self.primary.close()
        await self.secondary.close()

    async def ping(self) -> None:
        _, store = await self._active_store()
        with self._rereading_the_side_on_failure():
            await store.ping()

    async def _journal(self, entry: JournalEntry) -> None:
        await self.secondary.put(
            _journal_key(entry.key),
            _once(entry.model_dump_json().encode()),
            content_type="application/json",
        )

    async def put(
        self, key: str, chunks: AsyncIterator[bytes], *, content_type: str | None = None
    ) -> ObjectInfo:
        _refuse_journal_key(key)
        side, store = await self._active_store()
        with self._rereading_the_side_on_failure():
            info = await store.put(key, chunks, content_type=content_type)
            if side is Side.SECONDARY:
                # After the object: a put that failed is retried whole, journal included.
                await self._journal(JournalEntry(key=key, op="put", sha256=info.sha256))
        return info

    async def get(self, key: str) -> AsyncIterator[bytes]:
        _, store = await self._active_store()
        with self._rereading_the_side_on_failure():
            async for chunk in store.get(key):
                yield chunk

    async def head(self, key: str) -> ObjectInfo | None:
        _, store = await self._active_store()
        with self._rereading_the_side_on_failure():
            return await store.head(key)

    async def delete(self, key: str) -> bool:
        _refuse_journal_key(key)
        side, store = await self._active_store()
        with self._rereading_the_side_on_failure():
            existed = await store.delete(key)
            if side is Side.SECONDARY:
                await self._journal(JournalEntry(key=key, op="delete"))
        return existed

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        _, store = await self._active_store()
        with self._rereading_the_side_on_failure():
            async for info in store.list(prefix):
                if not info.key.startswith(JOURNAL_PREFIX):
                    yield info

    async def reconcile(
        self, progress: Callable[[int], None] = lambda done: None
    ) -> ReconcileReport:
        """Apply the secondary's journal to the primary once the primary is active again:
        each object put on the secondary while it was active is copied back (unless the
        primary holds the same content), each delete is repeated, and each entry is removed
        once applied. ``progress`` gets the number of entries applied so far."""
        report = ReconcileReport(pairs=[self.name])
        record = await self._routing.read(self.service)
        if record is None or record.active_side is not Side.PRIMARY:
            # The journal is still being written: nothing to apply yet.
            return report
        # A pair that read the side before the failback writes to the secondary until its
        # cached side expires: its writes are journaled too, so wait for them.
        settling = record.since.timestamp() + self._refresh_seconds - time.time()
        if settling > 0:
            progress(0)
            await asyncio.sleep(settling)
        await self.secondary.connect()
        await self.primary.connect()
        # Listed first: the entries are removed as the pass goes.
        entries = [info.key async for info in self.secondary.list(JOURNAL_PREFIX)]
        for done, entry_key in enumerate(entries, start=1):
            await self._apply(entry_key, report)
            progress(done)
        return report

    async def _apply(self, entry_key: str, report: ReconcileReport) -> None:
        content = await _read_all(self.secondary, entry_key)
        while True:
            entry = JournalEntry.model_validate_json(content)
            if entry.op == "delete":
                await self.primary.delete(entry.key)
                report.deleted += 1
            else:
                try:
                    copied, _ = await copy_verified(self.secondary, self.primary, entry.key)
                except KeyError:
                    # Gone from the secondary past the pair: nothing to copy back.
                    copied = False
                if copied:
                    report.copied += 1
                else:
                    report.already_present += 1
            # Written again meanwhile (a late writer): apply the newer entry before removing.
            latest = await _read_all(self.secondary, entry_key)
            if latest == content:
                await self.secondary.delete(entry_key)
                return
            content = latest


def _refuse_journal_key(key: str) -> None:
    if key.startswith(JOURNAL_PREFIX):
        raise ValueError(f"keys under {JOURNAL_PREFIX!r} are the store pair's own")
