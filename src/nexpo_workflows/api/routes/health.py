"""Liveness, readiness and metrics: the routes that stay open without credentials."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Literal

import httpx
from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from nexpo_workflows.api.auth import has_credentials
from nexpo_workflows.api.deps import GatewayState, StateDep
from nexpo_workflows.edge_errors import RETRY_AFTER_SECONDS, classify
from nexpo_workflows.health.models import HealthReport
from nexpo_workflows.health.run import HealthCheckUnavailableError, run_health_check

router = APIRouter(tags=["health"])


class Readiness(BaseModel):
    """What an anonymous caller learns: ready or not, nothing about the dependencies."""

    status: Literal["ready", "unavailable"]


class ReadinessFailure(BaseModel):
    """Why no report could be made (no worker answered, Temporal down); with credentials."""

    status: Literal["unavailable"] = "unavailable"
    detail: str


@dataclass(frozen=True)
class CheckOutcome:
    report: HealthReport | None = None
    error: str | None = None

    @property
    def ready(self) -> bool:
        return self.report is not None and self.report.healthy


class ReadinessProbe:
    """At most one health check in flight (concurrent callers share it), and its outcome
    reused for ``cache_seconds``: /readyz is open, and each check reaches every dependency."""

    def __init__(self, state: GatewayState) -> None:
        self._state = state
        self._cache_seconds = state.services.settings.readyz_cache_seconds
        self._last: tuple[float, CheckOutcome] | None = None
        self._in_flight: asyncio.Task[CheckOutcome] | None = None

    async def outcome(self) -> CheckOutcome:
        if self._last is not None and time.monotonic() - self._last[0] < self._cache_seconds:
            return self._last[1]
        if self._in_flight is None:
            self._in_flight = asyncio.create_task(self._check())
        # Shielded: a caller that hangs up must not cancel the check the others wait for.
        return await asyncio.shield(self._in_flight)

    async def _check(self) -> CheckOutcome:
        try:
            try:
                outcome = CheckOutcome(
                    report=await run_health_check(self._state.services, self._state.client)
                )
            except HealthCheckUnavailableError as error:
                outcome = CheckOutcome(error=classify(error).message)
            self._last = (time.monotonic(), outcome)
            return outcome
        finally:
            self._in_flight = None


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=None,
    responses={
        200: {
            "model": HealthReport | Readiness,
            "description": "Every dependency is up: the report with credentials, else a bare "
            "status",
        },
        503: {
            "model": HealthReport | ReadinessFailure | Readiness,
            "description": "A dependency is down, or no worker answered (details only with "
            "credentials)",
        },
    },
)
async def readyz(request: Request) -> Response:
    """Every enabled dependency answers (through a worker when ENABLE_TEMPORAL=true). One
    check at a time, its outcome reused for READYZ_CACHE_SECONDS."""
    probe: ReadinessProbe = request.app.state.readiness
    outcome = await probe.outcome()
    body: BaseModel
    if not has_credentials(request):
        body = Readiness(status="ready" if outcome.ready else "unavailable")
    elif outcome.report is not None:
        body = outcome.report
    else:
        body = ReadinessFailure(detail=outcome.error or "no report")
    if outcome.ready:
        return JSONResponse(body.model_dump(mode="json"))
    return JSONResponse(
        body.model_dump(mode="json"),
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        404: {"description": "Metrics are off (API_METRICS_BIND_ADDRESS empty)"},
        503: {"description": "The runtime's metrics endpoint did not answer"},
    },
)
async def metrics(state: StateDep) -> Response:
    """Prometheus text from this process's Temporal runtime (SDK and workflow metrics)."""
    if state.metrics_url is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "metrics are off (empty bind address)")
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            upstream = await http.get(state.metrics_url)
    except httpx.TransportError as error:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"metrics: the runtime's endpoint did not answer: {error}",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        ) from error
    return Response(upstream.content, media_type=upstream.headers.get("content-type"))
