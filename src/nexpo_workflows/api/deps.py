"""FastAPI dependencies: the objects the gateway shares between requests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from temporalio.client import Client

from nexpo_workflows.services import Services


@dataclass
class GatewayState:
    services: Services
    client: Client | None
    metrics_url: str | None


# Coroutines, though they never wait: FastAPI runs a plain function dependency on a thread
# of its pool, a hand-off per request that the profile of benchmarks/gateway_load.py showed.
async def get_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


async def get_temporal_client(state: Annotated[GatewayState, Depends(get_state)]) -> Client:
    if state.client is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "ENABLE_TEMPORAL is false: this gateway runs no workflows",
        )
    return state.client


StateDep = Annotated[GatewayState, Depends(get_state)]
ClientDep = Annotated[Client, Depends(get_temporal_client)]
