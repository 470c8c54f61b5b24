"""Tracing and log context, end to end: real gateway, Temporal server, worker and databases."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import logging
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio import activity, workflow
from temporalio.client import Client

from nexpo_workflows.api.app import create_app
from nexpo_workflows.api.deps import GatewayState
from nexpo_workflows.client import connect
from nexpo_workflows.config import ConfigError, Settings
from nexpo_workflows.services import Services
from nexpo_workflows.telemetry import configure_logging
from nexpo_workflows.tracing import OTLP_TRACES_PATH, Tracing, configure_tracing
from nexpo_workflows.users.models import SagaResult
from nexpo_workflows.users.service import CreateUserRequest, UserService
from tests.conftest import SUBMITTED_PASSWORDS, saga_worker


def new_user() -> dict[str, str]:
    unique = uuid.uuid4().hex[:12]
    password = f"traced-secret-{unique}"
    SUBMITTED_PASSWORDS.add(password)
    return {"email": f"ada.{unique}@example.com", "name": "Ada Lovelace", "password": password}


@contextlib.contextmanager
def tracing_on(settings: Settings, exporter: InMemorySpanExporter) -> Iterator[Tracing]:
    # The process-wide provider can be set once only; the test's own is passed explicitly.
    tracing = configure_tracing(settings, exporter=exporter, set_global=False)
    try:
        yield tracing
    finally:
        tracing.shutdown()


def chain(span: ReadableSpan, spans: dict[int, ReadableSpan]) -> list[str]:
    """The names of ``span``'s ancestors, nearest first."""
    names = []
    parent = span.parent
    while parent is not None and parent.span_id in spans:
        ancestor = spans[parent.span_id]
        names.append(ancestor.name)
        parent = ancestor.parent
    return names


async def test_one_trace_from_the_gateway_request_to_the_sql_insert(
    saga_settings: Settings, api_key: str
) -> None:
    exporter = InMemorySpanExporter()
    body = new_user()
    with tracing_on(saga_settings, exporter) as tracing:
        client = await connect(saga_settings, interceptors=tracing.interceptors)
        services = Services.from_settings(saga_settings, client)
        app = create_app(GatewayState(services, client, metrics_url=None))
        tracing.instrument_app(app)
        try:
            async with (
                saga_worker(client, saga_settings),
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app),
                    base_url="http://gw",
                    headers={"X-API-Key": api_key},
                ) as http,
            ):
                response = await http.post("/api/users", json=body)
                assert response.status_code == 202, response.text
                workflow_id = response.json()["workflowId"]
                await client.get_workflow_handle(workflow_id, result_type=SagaResult).result()
        finally:
            await services.close()
    finished = exporter.get_finished_spans()
    spans = {span.context.span_id: span for span in finished}

    def one(predicate: Callable[[ReadableSpan], bool], what: str) -> ReadableSpan:
        found = [span for span in finished if predicate(span)]
        assert len(found) == 1, f"{what}: {[span.name for span in finished]}"
        return found[0]

    def named(name: str) -> ReadableSpan:
        return one(lambda span: span.name == name, name)

    request = one(
        lambda span: (
            span.kind is trace.SpanKind.SERVER
            and (span.attributes or {}).get("http.route") == "/api/users"
        ),
        "the gateway's request span",
    )
    start = named("StartWorkflow:UserOnboardingWorkflow")
    run = named("RunWorkflow:UserOnboardingWorkflow")
    create = named("RunActivity:create_postgres_user")
    insert = one(
        lambda span: (
            span.name.startswith("INSERT")
            and (span.attributes or {}).get("db.system") == "postgresql"
            and create.name in chain(span, spans)
        ),
        "the PostgreSQL INSERT under create_postgres_user",
    )
    assert {span.context.trace_id for span in (request, start, run, create, insert)} == {
        request.context.trace_id
    }
    assert request.name in chain(start, spans)
    # The SDK's workflow spans take no time, so the workflow's own calls are siblings of
    # RunWorkflow under the StartWorkflow span that the workflow's headers carry.
    assert chain(run, spans)[0] == start.name
    assert chain(create, spans)[:2] == ["StartActivity:create_postgres_user", start.name]
    assert "nexpo_users" in str((insert.attributes or {}).get("db.statement"))
    assert finished[0].resource.attributes["service.name"] == "nexpo-workflows"
    # Statements are traced with their placeholders, never with the values bound to them.
    for span in finished:
        shown = str(dict(span.attributes or {}))
        assert body["password"] not in shown
        assert "$argon2id$" not in shown


async def test_without_an_otlp_endpoint_nothing_is_configured(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(otel_exporter_otlp_endpoint=None)
    tracing = configure_tracing(settings)
    assert tracing.provider is None
    assert tracing.interceptors == []
    assert not SQLAlchemyInstrumentor().is_instrumented_by_opentelemetry
    assert not HTTPXClientInstrumentor().is_instrumented_by_opentelemetry
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    app = create_app(GatewayState(Services(settings=settings), None, metrics_url=None))
    tracing.instrument_app(app)
    assert not getattr(app, "_is_instrumented_by_opentelemetry", False)
    tracing.shutdown()


def test_an_endpoint_without_the_otel_extra_is_a_configuration_error(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # as if not installed
    settings = make_settings(otel_exporter_otlp_endpoint="http://127.0.0.1:4318")
    with pytest.raises(ConfigError, match=r"OTEL_EXPORTER_OTLP_ENDPOINT .*\[otel\]"):
        configure_tracing(settings)
    assert not SQLAlchemyInstrumentor().is_instrumented_by_opentelemetry


class _Collector(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, bytes]]

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.received.append((self.path, self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads what was received instead."""


async def test_spans_are_exported_to_the_otlp_endpoint(
    make_settings: Callable[..., Settings],
) -> None:
    received: list[tuple[str, bytes]] = []
    handler = type("Collector", (_Collector,), {"received": received})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        settings = make_settings(
            otel_exporter_otlp_endpoint=f"http://127.0.0.1:{port}/",
            otel_service_name="nexpo-test-exporter",
        )
        tracing = configure_tracing(settings, set_global=False)
        assert tracing.provider is not None
        tracing.provider.get_tracer(__name__).start_span("probe").end()
        await asyncio.to_thread(tracing.shutdown)
    finally:
        server.shutdown()
        server.server_close()
    assert [path for path, _ in received] == [OTLP_TRACES_PATH]
    payload = received[0][1]
    assert b"probe" in payload
    assert b"nexpo-test-exporter" in payload


@contextlib.contextmanager
def root_logging_only_from(configure: Callable[[], None]) -> Iterator[None]:
    """Run ``configure`` on a root logger without pytest's handlers, then put them back."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    for handler in saved_handlers:
        root.removeHandler(handler)
    try:
        configure()
        yield
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)


async def test_log_lines_carry_workflow_id_run_id_and_activity(
    settings: Settings,
    client: Client,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # configure_logging changes these process-wide; put them back for the other tests.
    monkeypatch.setattr(workflow.logger, "workflow_info_on_message", True)
    monkeypatch.setattr(activity.logger, "activity_info_on_message", True)
    body = new_user()
    services = Services.from_settings(settings, client)
    try:
        with root_logging_only_from(lambda: configure_logging("INFO")):
            # The embedded SQLite store is down for the first attempt: one activity failure.
            async with saga_worker(client, settings, sqlite={"unavailable_for": 1}):
                handle = await UserService(services, client).start_onboarding(
                    CreateUserRequest.model_validate(body), None
                )
                await handle.result()
    finally:
        await services.close()
    err = capsys.readouterr().err
    run_id = handle.result_run_id
    workflow_line = next(line for line in err.splitlines() if " onboarding user " in line)
    assert workflow_line.endswith(f"workflow_id={handle.id} run_id={run_id}"), workflow_line
    activity_line = next(line for line in err.splitlines() if "create on sqlite failed" in line)
    assert activity_line.endswith(
        f"workflow_id={handle.id} run_id={run_id} activity=create_sqlite_user"
    ), activity_line
    # The SDK's own dict of the same details is no longer repeated in the message.
    assert "'workflow_id':" not in err
    assert "$argon2id$" not in err
    assert body["password"] not in err
