"""SQL Server through SQLAlchemy's mssql dialect and the aioodbc driver."""

from __future__ import annotations

from typing import ClassVar, Self

from nexpo_workflows.config import Settings
from nexpo_workflows.providers.sql import SQLProvider, with_driver


class SQLServerProvider(SQLProvider):
    name: ClassVar[str] = "sqlserver"

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls(with_driver(settings.sqlserver_url.get_secret_value(), "mssql+aioodbc"))
