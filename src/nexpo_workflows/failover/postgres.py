"""The PostgreSQL side of a failover: probe a server, promote a standby.

A target names the setting that holds its server's URL (``POSTGRES_URL``,
``POSTGRES_STANDBY_URL``), so the URL and its password stay in the worker's configuration.
asyncpg (the ``postgres`` extra) is imported when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import SecretStr

from nexpo_workflows.config import Settings
from nexpo_workflows.failover.models import PostgresSetting

if TYPE_CHECKING:
    import asyncpg


def _plain(url: str) -> str:
    """asyncpg's own scheme for a URL written for SQLAlchemy (``postgresql+asyncpg://``)."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.partition('+')[0]}{sep}{rest}"


class PostgresServers:
    def __init__(self, settings: Settings) -> None:
        self._urls: dict[PostgresSetting, SecretStr | None] = {
            "POSTGRES_URL": settings.postgres_url,
            "POSTGRES_STANDBY_URL": settings.postgres_standby_url,
        }

    async def _connect(self, setting: PostgresSetting, seconds: float) -> asyncpg.Connection:
        import asyncpg

        url = self._urls[setting]
        if url is None:
            raise LookupError(f"{setting} is not set on this worker")
        return await asyncpg.connect(_plain(url.get_secret_value()), timeout=seconds)

    async def probe(self, setting: PostgresSetting, seconds: float) -> None:
        connection = await self._connect(setting, seconds)
        try:
            await connection.fetchval("SELECT 1", timeout=seconds)
        finally:
            await connection.close(timeout=seconds)

    async def promote(self, setting: PostgresSetting, seconds: float) -> bool:
        """Make the server a primary: True if this call promoted it, False if it was one
        already (a retry, or a server promoted by hand), which is success too."""
        connection = await self._connect(setting, seconds)
        try:
            promoted = False
            if await connection.fetchval("SELECT pg_is_in_recovery()"):
                # Waits until the server accepts writes (or the timeout passes: False).
                if not await connection.fetchval("SELECT pg_promote(true, $1)", int(seconds)):
                    raise RuntimeError(f"{setting}: still in recovery after {seconds:g}s")
                promoted = True
            await _without_missing_sync_standby(connection)
            return promoted
        finally:
            await connection.close(timeout=seconds)


async def _without_missing_sync_standby(connection: asyncpg.Connection) -> None:
    """A standby copied from a primary with ``synchronous_standby_names`` keeps the setting:
    promoted, it would make every commit wait for a standby it does not have. As Patroni's
    (non-strict) synchronous mode does, the new primary commits alone until a synchronous
    standby is attached again (README "PostgreSQL failover")."""
    if not await connection.fetchval("SELECT current_setting('synchronous_standby_names')"):
        return
    attached = await connection.fetchval(
        "SELECT count(*) FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum')"
    )
    if attached:
        return
    await connection.execute("ALTER SYSTEM SET synchronous_standby_names = ''")
    await connection.execute("SELECT pg_reload_conf()")
