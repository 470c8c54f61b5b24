"""The embedded default store: a SQLite file in the data directory."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Self

from nexpo_workflows.config import Settings
from nexpo_workflows.providers.base import ProviderUnavailableError
from nexpo_workflows.providers.sql import SQLProvider


class SQLiteProvider(SQLProvider):
    name: ClassVar[str] = "sqlite"

    def __init__(self, path: Path) -> None:
        super().__init__(f"sqlite+aiosqlite:///{path}", connect_args={"timeout": 15})
        self.path = path

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls(settings.sqlite_file)

    async def _prepare(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ProviderUnavailableError(f"cannot open SQLite {self.path}: {error}") from error
