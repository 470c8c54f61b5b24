"""The embedded default store: a SQLite file in the data directory."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import ClassVar

import aiosqlite

from nexpo_workflows.config import Settings
from nexpo_workflows.providers.base import DatabaseProvider, ProviderUnavailableError


class SQLiteProvider(DatabaseProvider):
    name: ClassVar[str] = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> SQLiteProvider:
        return cls(settings.sqlite_file)

    async def connect(self) -> None:
        if self._db is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = await aiosqlite.connect(self.path)
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA busy_timeout=5000")
        except (OSError, sqlite3.Error) as error:
            raise ProviderUnavailableError(f"cannot open SQLite {self.path}: {error}") from error
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    async def ping(self) -> None:
        await self.connect()
        assert self._db is not None
        try:
            async with self._db.execute("SELECT 1") as cursor:
                await cursor.fetchone()
        except sqlite3.Error as error:
            raise ProviderUnavailableError(f"SQLite {self.path}: {error}") from error
