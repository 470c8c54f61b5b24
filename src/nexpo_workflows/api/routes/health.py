"""Liveness, readiness and metrics: the routes that stay open without credentials."""

from __future__ import annotations

import httpx
from fastapi import APIRouter, HTTPException, Response, status
from fastapi.responses import JSONResponse

from nexpo_workflows.api.deps import StateDep
from nexpo_workflows.health.models import HealthReport
from nexpo_workflows.health.run import HealthCheckUnavailableError, run_health_check

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=HealthReport,
    responses={503: {"description": "A dependency is down, or no worker answered"}},
)
async def readyz(state: StateDep) -> Response:
    """Every enabled dependency answers (through a worker when ENABLE_TEMPORAL=true)."""
    try:
        report = await run_health_check(state.services, state.client)
    except HealthCheckUnavailableError as error:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(error)) from error
    return JSONResponse(
        report.model_dump(mode="json"),
        status_code=status.HTTP_200_OK if report.healthy else status.HTTP_503_SERVICE_UNAVAILABLE,
    )


@router.get("/metrics", response_class=Response)
async def metrics(state: StateDep) -> Response:
    """Prometheus text from this process's Temporal runtime (SDK and workflow metrics)."""
    if state.metrics_url is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "metrics are off (empty bind address)")
    async with httpx.AsyncClient(timeout=5) as http:
        upstream = await http.get(state.metrics_url)
    return Response(upstream.content, media_type=upstream.headers.get("content-type"))
