"""A fresh database on the machine's real PostgreSQL server (127.0.0.1:5432, trust auth)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator

import asyncpg

ADMIN_URL = os.environ.get(
    "NEXPO_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def database_url(name: str) -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


@contextlib.asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """Create an empty database, yield its URL, drop it (and its connections) afterwards."""
    name = f"nexpo_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield database_url(name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
