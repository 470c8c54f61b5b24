"""PostgreSQL for the tests: a fresh database on the machine's server (127.0.0.1:5432, trust
auth), or on a private cluster started with ``wal_level=logical`` (change capture reads its
log; the machine's server runs with ``replica``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg

from nexpo_workflows.ports import free_port

ADMIN_URL = os.environ.get(
    "NEXPO_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
# An existing server at wal_level=logical to use instead of starting a private cluster.
LOGICAL_ADMIN_URL = os.environ.get("NEXPO_TEST_LOGICAL_POSTGRES_URL")
# The newest server installed from Debian's packages, unless named.
BIN = Path(
    os.environ.get("NEXPO_TEST_POSTGRES_BIN")
    or max(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name),
        default=Path("/usr/lib/postgresql/15/bin"),
    )
)


def database_url(name: str, admin_url: str = ADMIN_URL) -> str:
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{name}"


@contextlib.asynccontextmanager
async def fresh_database(admin_url: str = ADMIN_URL) -> AsyncIterator[str]:
    """Create an empty database, yield its URL, drop it (its connections and replication
    slots first) afterwards."""
    name = f"nexpo_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield database_url(name, admin_url)
    finally:
        # A slot is released by its session a moment after that session is terminated.
        for _ in range(100):
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )
            await admin.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE database = $1 AND NOT active",
                name,
            )
            if not await admin.fetchval(
                "SELECT count(*) FROM pg_replication_slots WHERE database = $1", name
            ):
                break
            await asyncio.sleep(0.05)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _as_postgres(*command: str) -> None:
    """Run a server command as the ``postgres`` user (initdb refuses root)."""
    argv = ["su", "postgres", "-c", " ".join(command)] if os.geteuid() == 0 else list(command)
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    if process.returncode:
        raise RuntimeError(f"{' '.join(command)} failed: {output.decode()}")


class Server:
    """One server of a private cluster: its data directory, port and options, so a test can
    stop it (as a crash, ``immediate``) and start it again on the same port."""

    def __init__(self, name: str, options: tuple[str, ...]) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="nexpo-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres")
        self.data = self.directory / name
        self.port = free_port()
        self.options = options

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    async def start(self) -> None:
        flags = " ".join(
            [f"-p {self.port}", "-c listen_addresses=127.0.0.1", f"-k {self.directory}",
             *self.options]
        )  # fmt: skip
        await _as_postgres(
            f"{BIN}/pg_ctl", "-D", str(self.data), "-o", f"'{flags}'", "-w", "-l",
            str(self.directory / f"{self.data.name}.log"), "start",
        )  # fmt: skip

    async def stop(self, mode: str = "fast") -> None:
        await _as_postgres(f"{BIN}/pg_ctl", "-D", str(self.data), f"-m {mode}", "-w", "stop")


@contextlib.asynccontextmanager
async def _stopped_and_removed(server: Server) -> AsyncIterator[Server]:
    try:
        yield server
    finally:
        with contextlib.suppress(RuntimeError):  # already stopped by the test
            await server.stop("immediate")
        shutil.rmtree(server.directory, ignore_errors=True)


@contextlib.asynccontextmanager
async def cluster_server(*options: str) -> AsyncIterator[Server]:
    """A new cluster on a free port (``-c name=value`` options added), stopped and removed
    afterwards, also when the test fails."""
    server = Server("data", options)
    async with _stopped_and_removed(server):
        await _as_postgres(f"{BIN}/initdb", "-D", str(server.data), "-U postgres --auth=trust -N")
        await server.start()
        yield server


@contextlib.asynccontextmanager
async def private_cluster(*options: str) -> AsyncIterator[tuple[str, Path]]:
    """A new cluster (see ``cluster_server``): its admin URL and data directory."""
    async with cluster_server(*options) as server:
        yield server.url, server.data


@contextlib.asynccontextmanager
async def streaming_standby(primary: Server, *options: str) -> AsyncIterator[Server]:
    """A standby of ``primary`` (``pg_basebackup -R``: it streams from the primary and is in
    recovery until promoted) on a free port, stopped and removed afterwards."""
    server = Server("standby", options)
    async with _stopped_and_removed(server):
        await _as_postgres(
            f"{BIN}/pg_basebackup", "-h 127.0.0.1", f"-p {primary.port}", "-U postgres",
            "-D", str(server.data), "-R", "--checkpoint=fast",
        )  # fmt: skip
        await server.start()
        yield server


@contextlib.asynccontextmanager
async def logical_server() -> AsyncIterator[str]:
    """The admin URL of a server at ``wal_level=logical``."""
    if LOGICAL_ADMIN_URL:
        yield LOGICAL_ADMIN_URL
        return
    async with private_cluster(
        "-c wal_level=logical",
        "-c max_replication_slots=20",
        "-c max_wal_senders=20",
        "-c max_connections=200",
        "-c fsync=off",
        "-c full_page_writes=off",
    ) as (url, _):
        yield url
