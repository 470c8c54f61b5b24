"""The dataset schema's batch check: the plain path (TypedDicts of the model's fields) gives
exactly what the model gives, and is used only where it can."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, Field, field_validator

from nexpo_workflows.sync.datasets import RowValidator, _plain_fields


class Item(BaseModel):
    id: str
    name: str = Field(min_length=1, max_length=20)
    price: Decimal = Field(ge=0)
    count: int
    updated_at: datetime
    tags: list[str]


class WithDefault(BaseModel):
    id: str
    note: str | None = None


class WithValidator(BaseModel):
    id: str

    @field_validator("id")
    @classmethod
    def upper(cls, value: str) -> str:
        return value.upper()


def _row(n: int) -> dict[str, Any]:
    return {
        "id": f"k{n}",
        "name": f"name {n}",
        "price": Decimal(n) / 100,
        "count": n,
        "updated_at": datetime(2026, 1, 1, microsecond=n % 1000, tzinfo=UTC),
        "tags": ["a", str(n)],
        "extra": "ignored",
    }


def test_the_plain_check_is_used_only_where_the_model_adds_nothing() -> None:
    assert _plain_fields(Item) is not None
    assert _plain_fields(WithDefault) is None
    assert _plain_fields(WithValidator) is None


def test_the_plain_check_gives_what_the_model_gives() -> None:
    rows = [_row(n) for n in range(200)]
    rows[3]["name"] = ""
    rows[5]["price"] = Decimal(-1)
    rows[7]["updated_at"] = "not a time"
    rows[9]["count"] = "12"  # lax: a numeric string is an int, as for the model
    rows[11]["tags"] = "a"
    validator = RowValidator(f"{__name__}:Item")
    assert validator._plain is not None
    dumped, errors = validator.batch(rows)
    expected: list[dict[str, Any] | None] = []
    for row in rows:
        try:
            expected.append(Item.model_validate(row).model_dump(mode="json"))
        except ValueError:
            expected.append(None)
    assert dumped == expected
    assert sorted(errors) == [3, 5, 7, 11]
    assert {n: e.errors()[0]["loc"] for n, e in errors.items()} == {
        3: ("name",),
        5: ("price",),
        7: ("updated_at",),
        11: ("tags",),
    }
    assert validator.batch(rows[12:]) == (expected[12:], {})
