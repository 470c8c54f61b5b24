"""The store pair on two local stores: the store contract, the side it follows, the journal of
the secondary's writes and the reconcile pass after a failback, and the routing record kept on
both sides. Its failover between real S3 and Azurite is in tests/test_failover_stores.py."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nexpo_workflows.config import ConfigError, Settings
from nexpo_workflows.failover import RoutingRecord, RoutingTable, Side
from nexpo_workflows.failover.routing import routing_store
from nexpo_workflows.storage import ObjectStore, StoreUnavailableError, enabled_stores
from nexpo_workflows.storage.local import LocalStore
from nexpo_workflows.storage.pair import JOURNAL_PREFIX, StorePair
from tests.store_contract import StoreContract, chunks_of, read_all

SERVICE = "objects"
# Short, so a test sees a switch of the record (and a reconcile waits for it) at once.
REFRESH_SECONDS = 0.05


def unreachable(tmp_path: Path, name: str) -> LocalStore:
    """A local store whose directory cannot exist: a file is in the way."""
    (tmp_path / name).write_text("")
    return LocalStore(tmp_path / name / "objects")


def pair_of(primary: ObjectStore, secondary: ObjectStore) -> StorePair:
    return StorePair(primary, secondary, service=SERVICE, refresh_seconds=REFRESH_SECONDS)


class TestStorePair(StoreContract):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[ObjectStore]:
        pair = pair_of(LocalStore(tmp_path / "primary"), LocalStore(tmp_path / "secondary"))
        await pair.connect()
        yield pair
        await pair.close()

    @pytest.fixture
    def unreachable_store(self, tmp_path: Path) -> ObjectStore:
        return pair_of(unreachable(tmp_path, "p"), unreachable(tmp_path, "s"))


class Sides:
    def __init__(self, tmp_path: Path) -> None:
        self.primary = LocalStore(tmp_path / "primary")
        self.secondary = LocalStore(tmp_path / "secondary")
        self.pair = pair_of(self.primary, self.secondary)
        self.routing = RoutingTable(self.pair)
        self.epoch = 0

    async def route_to(self, side: Side) -> None:
        """Move the record as a failover monitor would, and wait until the pair sees it."""
        self.epoch += 1
        await self.routing.write(
            RoutingRecord(
                service=SERVICE,
                active_side=side,
                since=datetime.now(UTC),
                reason="test",
                epoch=self.epoch,
            )
        )
        await asyncio.sleep(REFRESH_SECONDS)
        assert await self.pair.active_side() is side


async def keys(store: ObjectStore, prefix: str = "") -> list[str]:
    return [info.key async for info in store.list(prefix)]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_writes_follow_the_record_and_a_failback_copies_the_secondarys_back(
    tmp_path: Path,
) -> None:
    sides = Sides(tmp_path)
    assert await sides.pair.active_side() is Side.PRIMARY  # no record yet
    await sides.pair.put("before/kept", chunks_of(b"kept"))
    await sides.pair.put("before/removed", chunks_of(b"removed during the outage"))
    assert await sides.primary.head("before/kept") is not None

    await sides.route_to(Side.SECONDARY)
    written = {"outage/a": b"a" * 1000, "outage/b": b"b" * 3000}
    for key, data in written.items():
        await sides.pair.put(key, chunks_of(data), content_type="text/plain")
    await sides.pair.put("outage/a", chunks_of(written["outage/a"]))  # twice: one entry
    assert await sides.pair.delete("before/removed") is False  # the secondary never had it
    assert [await sides.primary.head(key) for key in written] == [None, None]
    assert await read_all(sides.pair, "outage/b") == written["outage/b"]
    # The journal is the pair's own: not listed through it, and not writable.
    assert await keys(sides.pair) == ["outage/a", "outage/b", f"routing/{SERVICE}.json"]
    assert len(await keys(sides.secondary, JOURNAL_PREFIX)) == 3
    with pytest.raises(ValueError, match="store pair's own"):
        await sides.pair.put(f"{JOURNAL_PREFIX}x", chunks_of(b"x"))

    # Not while the secondary is active: its journal is still being written.
    report = await sides.pair.reconcile()
    assert (report.copied, report.deleted) == (0, 0)

    await sides.route_to(Side.PRIMARY)
    progress: list[int] = []
    report = await sides.pair.reconcile(progress.append)
    assert (report.copied, report.deleted, report.already_present) == (2, 1, 0)
    assert progress[-1] == 3
    for key, data in written.items():
        info = await sides.primary.head(key)
        assert info is not None
        assert info.sha256 == sha256(data)
        assert await read_all(sides.primary, key) == data
    assert await sides.primary.head("before/removed") is None
    assert await read_all(sides.primary, "before/kept") == b"kept"
    assert await keys(sides.secondary, JOURNAL_PREFIX) == []

    again = await sides.pair.reconcile()
    assert (again.copied, again.deleted, again.already_present) == (0, 0, 0)


async def test_a_failed_write_makes_the_pair_read_the_record_again(tmp_path: Path) -> None:
    secondary = LocalStore(tmp_path / "secondary")
    pair = StorePair(
        unreachable(tmp_path, "primary"), secondary, service=SERVICE, refresh_seconds=3600
    )
    with pytest.raises(StoreUnavailableError):
        await pair.put("k", chunks_of(b"x"))
    # The monitor promotes the secondary (the record is written where it can be).
    await RoutingTable(pair).write(
        RoutingRecord(
            service=SERVICE, active_side=Side.SECONDARY, since=datetime.now(UTC), reason="down"
        )
    )
    # Within the hour the cache would last: the failure made it stale.
    info = await pair.put("k", chunks_of(b"x"))
    assert info.sha256 == sha256(b"x")
    assert await secondary.head("k") is not None


async def test_the_record_is_read_as_the_latest_of_the_sides_that_answer(tmp_path: Path) -> None:
    primary = LocalStore(tmp_path / "primary")
    secondary = LocalStore(tmp_path / "secondary")
    earlier = datetime.now(UTC)
    old = RoutingRecord(service=SERVICE, active_side=Side.PRIMARY, since=earlier, reason="old")
    new = old.model_copy(
        update={"active_side": Side.SECONDARY, "since": earlier + timedelta(seconds=1), "epoch": 1}
    )
    # Only the secondary took the newer record (the primary was down when it was written).
    await RoutingTable(primary).write(old)
    await RoutingTable(secondary).write(new)
    assert await RoutingTable(pair_of(primary, secondary)).read(SERVICE) == new

    half_down = RoutingTable(pair_of(unreachable(tmp_path, "gone"), secondary))
    assert await half_down.read(SERVICE) == new
    await half_down.write(old.model_copy(update={"since": earlier + timedelta(seconds=2)}))
    assert (await RoutingTable(secondary).read(SERVICE) or new).reason == "old"

    all_down = RoutingTable(pair_of(unreachable(tmp_path, "a"), unreachable(tmp_path, "b")))
    with pytest.raises(StoreUnavailableError, match="on no side"):
        await all_down.write(new)
    with pytest.raises(StoreUnavailableError, match="on no side"):
        await all_down.read(SERVICE)


def test_the_pair_is_configured_by_store_names_and_holds_the_routing_records(
    tmp_path: Path,
) -> None:
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path,
        enable_local_store=True,
        enable_store_pair=True,
        store_pair_primary="local",
        store_pair_secondary="local",
    )
    with pytest.raises(ConfigError, match="two different stores"):
        enabled_stores(settings)
    settings = settings.model_copy(update={"store_pair_secondary": "gcs"})
    stores = enabled_stores(settings)
    assert list(stores) == ["pair", "local"]
    pair = routing_store(stores)
    assert isinstance(pair, StorePair)
    assert [side.name for side in pair.sides()] == ["local", "gcs"]
    assert pair.service == "store-pair"
    with pytest.raises(ConfigError, match="STORE_PAIR_PRIMARY"):
        enabled_stores(settings.model_copy(update={"store_pair_primary": "pair"}))
