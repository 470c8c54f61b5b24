"""FastAPI dependencies: the objects the gateway shares between requests."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from temporalio.client import Client

from nexpo_workflows import registry
from nexpo_workflows.execution import InProcessRuns
from nexpo_workflows.services import Services


@dataclass
class GatewayState:
    services: Services
    client: Client | None
    metrics_url: str | None

    @cached_property
    def in_process(self) -> InProcessRuns:
        """Runs the workflows in this process when there is no Temporal client."""
        return InProcessRuns(registry.activities(self.services))


# Coroutines, though they never wait: FastAPI runs a plain function dependency on a thread
# of its pool, a hand-off per request that the profile of benchmarks/gateway_load.py showed.
async def get_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


async def get_temporal_client(state: Annotated[GatewayState, Depends(get_state)]) -> Client:
    if state.client is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "this needs ENABLE_TEMPORAL=true: the gateway runs without Temporal, and without it "
            "nothing waits durably (reviews, approvals, schedules, monitors, run status)",
        )
    return state.client


StateDep = Annotated[GatewayState, Depends(get_state)]
ClientDep = Annotated[Client, Depends(get_temporal_client)]


IN_PROCESS_DESCRIPTION = (
    "ENABLE_TEMPORAL=false: the workflow ran to its end in this process (not durable); its result"
)


def in_process_result(result: BaseModel) -> JSONResponse:
    """A workflow run in this process: its result, where Temporal would answer 202."""
    return JSONResponse(jsonable_encoder(result), status_code=status.HTTP_200_OK)
