"""PostgreSQL through asyncpg.

With ``POSTGRES_FAILOVER_SERVICE`` set, the provider follows that monitor's routing record
(README "PostgreSQL failover"): it connects to ``POSTGRES_URL`` while the record names the
primary (or there is no record yet) and to ``POSTGRES_STANDBY_URL`` once it names the
secondary, and drops its connections whenever the record's epoch changes. The record, not the
servers, decides: a crashed primary that comes back is still a primary, and nothing but the
record keeps a worker from writing to it again.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar, Self

from nexpo_workflows.config import Settings
from nexpo_workflows.errors import first_line
from nexpo_workflows.failover.models import Side
from nexpo_workflows.failover.routing import RoutingTable
from nexpo_workflows.providers.base import ProviderUnavailableError
from nexpo_workflows.providers.sql import SQLProvider, with_driver

_DRIVER = "postgresql+asyncpg"


class FollowedRoute:
    """The epoch and URL of the server the routing record names, read again once
    ``refresh_seconds`` have passed or after ``expire()`` (a connection error)."""

    def __init__(
        self, settings: Settings, service: str, urls: dict[Side, str], refresh_seconds: float
    ) -> None:
        self._settings = settings
        self._service = service
        self._urls = urls
        self._refresh_seconds = refresh_seconds
        self._table: RoutingTable | None = None
        self._current: tuple[int, str] | None = None
        self._read_at = 0.0
        # Concurrent steps share one read.
        self._reading = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> FollowedRoute | None:
        service = settings.postgres_failover_service
        if service is None:
            return None
        assert settings.postgres_standby_url is not None  # the settings require it
        return cls(
            settings,
            service,
            {
                Side.PRIMARY: settings.postgres_url.get_secret_value(),
                Side.SECONDARY: settings.postgres_standby_url.get_secret_value(),
            },
            settings.postgres_routing_refresh_seconds,
        )

    def expire(self) -> None:
        self._read_at = 0.0

    async def current(self) -> tuple[int, str]:
        async with self._reading:
            now = time.monotonic()
            if self._current is None or now - self._read_at >= self._refresh_seconds:
                self._current = await self._read()
                self._read_at = now
            return self._current

    async def _read(self) -> tuple[int, str]:
        if self._table is None:
            # Its own store instance, the first enabled (where the monitor writes the record).
            self._table = RoutingTable.from_settings(self._settings)
        try:
            record = await self._table.read(self._service)
        except Exception as error:
            # Not trusted without the record: a failover may have moved the primary meanwhile.
            raise ProviderUnavailableError(
                f"postgres: routing record of {self._service} unreadable: {first_line(error)}"
            ) from error
        if record is None:
            return 0, self._urls[Side.PRIMARY]
        return record.epoch, self._urls[record.active_side]

    async def close(self) -> None:
        if self._table is not None:
            table, self._table = self._table, None
            await table.close()
        self._current = None


class PostgresProvider(SQLProvider):
    name: ClassVar[str] = "postgres"

    def __init__(self, url: str, route: FollowedRoute | None = None, **engine_options: Any):
        super().__init__(url, **engine_options)
        self._route = route
        self._epoch: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        route = FollowedRoute.from_settings(settings)
        connect_args: dict[str, Any] = {"timeout": 5}
        if route is not None:
            # Belt and braces: a standby the record named before its promotion completed is
            # refused at connect time instead of failing each write as read-only.
            connect_args["target_session_attrs"] = "read-write"
        return cls(
            with_driver(settings.postgres_url.get_secret_value(), _DRIVER),
            route,
            pool_size=settings.postgres_pool_size,
            connect_args=connect_args,
        )

    async def connect(self) -> None:
        # Every operation passes here (``ready_engine``): the record is checked before any
        # connection, the schema's included, is made.
        if self._route is not None:
            await self._follow(self._route)
        await super().connect()

    async def _follow(self, route: FollowedRoute) -> None:
        epoch, url = await route.current()
        if epoch == self._epoch:
            return
        self._epoch = epoch
        self.url = with_driver(url, _DRIVER)
        # New connections go to the server the record names; those in use by other steps end
        # with their step (a step on the old server fails and its retry reconnects).
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.dispose()

    def _unavailable(self, error: BaseException) -> ProviderUnavailableError:
        if self._route is not None:
            self._route.expire()  # the next attempt reads the record before it reconnects
        return super()._unavailable(error)

    async def close(self) -> None:
        await super().close()
        if self._route is not None:
            await self._route.close()
        self._epoch = None
