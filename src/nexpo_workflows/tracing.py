"""OpenTelemetry traces from a gateway request down to each database statement.

One trace holds: the gateway's HTTP server span, ``StartWorkflow:<type>`` (client),
``RunWorkflow:<type>`` and ``StartActivity:<name>`` (workflow), ``RunActivity:<name>``
(worker), and under it the SQLAlchemy statements and httpx calls the activity made.

Tracing is on only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set. Otherwise nothing is installed
and the OpenTelemetry packages (the ``otel`` extra) are not even imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nexpo_workflows.config import ConfigError, Settings

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from temporalio.client import Interceptor

OTLP_TRACES_PATH = "/v1/traces"


@dataclass
class Tracing:
    """What ``configure_tracing`` installed; without a provider, tracing is off and every
    method is a no-op, so callers need no branch of their own."""

    provider: TracerProvider | None = None
    # For ``client.connect``: workers built from that client inherit them.
    interceptors: list[Interceptor] = field(default_factory=list)

    def instrument_app(self, app: FastAPI) -> None:
        if self.provider is None:
            return
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(
            app,
            tracer_provider=self.provider,
            # One span per request is enough; ASGI send/receive spans only add noise.
            exclude_spans=["receive", "send"],
        )

    def shutdown(self) -> None:
        """Export the spans still buffered and remove the library instrumentation."""
        if self.provider is None:
            return
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

        HTTPXClientInstrumentor().uninstrument()
        SQLAlchemyInstrumentor().uninstrument()
        self.provider.shutdown()


def configure_tracing(
    settings: Settings,
    *,
    exporter: SpanExporter | None = None,
    set_global: bool = True,
) -> Tracing:
    """Turn tracing on for this process when an OTLP endpoint is set (or ``exporter`` given).

    Call it before any database engine is created: SQLAlchemy is instrumented at engine
    creation. ``exporter`` replaces the OTLP/HTTP exporter (tests). ``set_global=False`` keeps
    the process-wide provider untouched, since OpenTelemetry allows setting it only once; every
    instrumentation here is handed the provider explicitly and does not need the global one.
    """
    endpoint = settings.otel_exporter_otlp_endpoint
    if exporter is None and endpoint is None:
        return Tracing()
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from temporalio.contrib.opentelemetry import TracingInterceptor
    except ImportError as error:
        raise ConfigError(
            f"OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed ({error}); "
            "install it with: pip install 'nexpo-workflows[otel]'"
        ) from None

    if exporter is None:
        assert endpoint is not None
        # The variable names the collector's base URL; the HTTP exporter wants the signal's.
        exporter = OTLPSpanExporter(endpoint=endpoint.rstrip("/") + OTLP_TRACES_PATH)
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: settings.otel_service_name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    if set_global:
        trace.set_tracer_provider(provider)
    HTTPXClientInstrumentor().instrument(tracer_provider=provider)
    # Imported before the instrumentor wraps create_engine, so create_async_engine keeps the
    # unwrapped one it binds at import; otherwise both wrappers would instrument each async
    # engine and every statement would be traced twice.
    import sqlalchemy.ext.asyncio  # noqa: F401

    # Its declared range ends below SQLAlchemy 2.1, whose engine events (all it hooks) are
    # unchanged; tests/test_tracing.py checks that each statement is traced once.
    SQLAlchemyInstrumentor().instrument(tracer_provider=provider, skip_dep_check=True)
    interceptor = TracingInterceptor(provider.get_tracer(TracingInterceptor.__module__))
    return Tracing(provider=provider, interceptors=[interceptor])
