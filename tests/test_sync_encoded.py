"""The copy's encoded read: PostgreSQL encodes a batch as one JSON array (with the keys, flags
and row hashes as arrays) and the dataset's schema checks it in one call. Whatever it gives
must be exactly what the row-by-row read gives, on a real PostgreSQL whose session time zone
and date style are not UTC and ISO; where it could differ, it is not used."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from datetime import date, datetime
from decimal import Decimal

import asyncpg
import pytest
from pydantic import BaseModel, Field

from nexpo_workflows.providers.base import ProviderUnavailableError, row_hash
from nexpo_workflows.providers.postgres import PostgresProvider
from nexpo_workflows.sync.datasets import RowValidator
from nexpo_workflows.sync.models import PositionKind, SyncSource, Watermark
from nexpo_workflows.sync.source import SourceTable
from tests.servers.postgres import cluster_server, fresh_database

VERSION = 1_767_225_600_123_456
START = Watermark(kind=PositionKind.SNAPSHOT, version=VERSION, id="")


class Product(BaseModel):
    id: str
    name: str = Field(min_length=1)
    price: Decimal = Field(ge=0)
    quantity: int
    active: bool
    changed_at: datetime
    local_at: datetime
    day: date
    note: str | None


class ProductWithTextTime(BaseModel):
    id: str
    changed_at: str


async def fill_products(connection: asyncpg.Connection) -> None:
    """The products table with 120 rows of every kind of value the encoded read handles."""
    await connection.execute(
        "CREATE TABLE products (id text PRIMARY KEY, name text NOT NULL,"
        " price numeric NOT NULL, quantity integer NOT NULL, active boolean NOT NULL,"
        " changed_at timestamptz NOT NULL, local_at timestamp NOT NULL, day date NOT NULL,"
        " note text, picture bytea, deleted boolean)"
    )
    await connection.executemany(
        "INSERT INTO products VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        [
            (
                f"p{n:03d}",
                f"product {n}",
                [Decimal("12.50"), Decimal("0"), Decimal("1000.000")][n % 3],
                n,
                n % 2 == 0,
                datetime.fromisoformat(f"2026-03-0{1 + n % 9}T23:59:59.{n:06d}+05:30"),
                datetime(2026, 1, 1, 12, 0, n % 60, n),
                date(2026, 1 + n % 12, 1 + n % 28),
                None if n % 4 else f'note {n} with "quotes" and ünïcode',
                b"\x00\x01" if n % 5 == 0 else None,
                # One tombstone in seven, one NULL flag in eleven (not a tombstone).
                None if n % 11 == 0 else n % 7 == 0,
            )
            for n in range(120)
        ],
    )


@contextlib.asynccontextmanager
async def products_database() -> AsyncIterator[str]:
    """A database holding the products table (its SQLAlchemy URL)."""
    async with fresh_database() as url:
        connection = await asyncpg.connect(url)
        try:
            database = url.rsplit("/", 1)[1]
            # Another zone and date style than UTC and ISO: the encoded read must not depend
            # on the session's.
            await connection.execute(
                f"ALTER DATABASE \"{database}\" SET timezone = 'Asia/Tokyo';"
                f" ALTER DATABASE \"{database}\" SET datestyle = 'SQL, DMY'"
            )
            await fill_products(connection)
        finally:
            await connection.close()
        yield url.replace("postgresql://", "postgresql+asyncpg://", 1)


@pytest.fixture
async def products() -> AsyncIterator[str]:
    async with products_database() as url:
        yield url


async def _source(url: str) -> tuple[SourceTable, PostgresProvider]:
    provider = PostgresProvider(url)
    await provider.connect()
    return SourceTable(provider, SyncSource(table="products")), provider


async def test_the_encoded_read_gives_what_the_row_read_gives(products: str) -> None:
    source, provider = await _source(products)
    validator = RowValidator(f"{__name__}:Product")
    assert validator.plain_fields is not None
    try:
        after, batches = START, 0
        while True:
            encoded = await source.encoded_rows(after, 50, None, validator.plain_fields, None)
            rows = await source.next_rows(after, 50)
            assert encoded is not None
            if not rows:
                assert encoded.ids == []
                break
            batches += 1
            assert encoded.ids == [row.id for row in rows]
            assert encoded.deleted == [row.deleted for row in rows]
            assert encoded.hashes == [row_hash(row.id, VERSION, row.deleted) for row in rows]
            expected, errors = validator.batch([row.data for row in rows if not row.deleted])
            assert errors == {}
            assert validator.encoded_batch(encoded.live) == expected
            after = after.model_copy(update={"id": rows[-1].id})
        assert batches == 3
        # The prices keep their scale, the times are in UTC, the tombstones carry no fields.
        three = await source.encoded_rows(START, 3, None, validator.plain_fields, None)
        assert three is not None
        first = validator.encoded_batch(three.live)
        assert first is not None
        assert [row["price"] for row in first] == ["12.50", "0", "1000.000"]
        assert first[0]["changed_at"] == "2026-03-01T18:29:59Z"
        assert first[0]["day"] == "2026-01-01"
    finally:
        await provider.close()


async def test_the_encoded_read_takes_only_the_dataset_columns_and_stops_at_until(
    products: str,
) -> None:
    source, provider = await _source(products)
    validator = RowValidator(f"{__name__}:Product")
    assert validator.plain_fields is not None
    try:
        encoded = await source.encoded_rows(
            START, 100, "p010", validator.plain_fields, ["id", "name", "secret"]
        )
        assert encoded is not None
        assert encoded.ids == [f"p{n:03d}" for n in range(11)]
        live = [n for n in range(11) if n % 7 or n % 11 == 0]
        assert json.loads(encoded.live) == [
            {"id": f"p{n:03d}", "name": f"product {n}"} for n in live
        ]
    finally:
        await provider.close()


@pytest.mark.parametrize(
    ("schema", "why"),
    [
        # A timestamp would reach a text field as JSON text, where asyncpg gives a datetime
        # (refused by a str field): the row read decides.
        ("ProductWithTextTime", "a timestamp into a text field"),
    ],
)
async def test_the_encoded_read_is_not_used_where_it_could_differ(
    products: str, schema: str, why: str
) -> None:
    source, provider = await _source(products)
    fields = RowValidator(f"{__name__}:{schema}").plain_fields
    assert fields is not None
    try:
        assert await source.encoded_rows(START, 10, None, fields, None) is None, why
    finally:
        await provider.close()


async def test_a_batch_with_an_invalid_row_is_left_to_the_row_read(products: str) -> None:
    connection = await asyncpg.connect(products.replace("+asyncpg", ""))
    try:
        await connection.execute("UPDATE products SET name = '' WHERE id = 'p002'")
    finally:
        await connection.close()
    source, provider = await _source(products)
    validator = RowValidator(f"{__name__}:Product")
    assert validator.plain_fields is not None
    try:
        encoded = await source.encoded_rows(START, 10, None, validator.plain_fields, None)
        assert encoded is not None
        assert validator.encoded_batch(encoded.live) is None
        rows = await source.next_rows(START, 10)
        _, errors = validator.batch([row.data for row in rows if not row.deleted])
        assert list(errors) == [2]
    finally:
        await provider.close()


async def test_a_source_down_during_the_encoded_read_is_unavailable_and_read_again_once_back() -> (
    None
):
    async with cluster_server() as server:
        connection = await asyncpg.connect(server.url)
        try:
            await fill_products(connection)
        finally:
            await connection.close()
        source, provider = await _source(
            server.url.replace("postgresql://", "postgresql+asyncpg://")
        )
        fields = RowValidator(f"{__name__}:Product").plain_fields
        assert fields is not None
        try:
            before = await source.encoded_rows(START, 10, None, fields, None)
            assert before is not None
            assert len(before.ids) == 10
            await server.stop("immediate")  # a crash: the pooled connection is gone too
            with pytest.raises(ProviderUnavailableError, match="postgres"):
                await source.encoded_rows(START, 10, None, fields, None)
            await server.start()
            assert await source.encoded_rows(START, 10, None, fields, None) == before
        finally:
            await provider.close()
