"""PostgreSQL through asyncpg."""

from __future__ import annotations

from typing import ClassVar, Self

from nexpo_workflows.config import Settings
from nexpo_workflows.providers.sql import SQLProvider, with_driver


class PostgresProvider(SQLProvider):
    name: ClassVar[str] = "postgres"

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls(
            with_driver(settings.postgres_url.get_secret_value(), "postgresql+asyncpg"),
            pool_size=settings.postgres_pool_size,
            connect_args={"timeout": 5},
        )
