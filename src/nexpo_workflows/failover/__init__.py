"""Failover of a service between a primary and a secondary (issue "Multi-cloud operations").

The integrator registers ``FailoverWorkflow`` and ``FailoverActivities(services).all()`` on
the worker; the gateway and the CLI read the active side through ``RoutingTable``.

The names load on first use: the workflow sandbox imports this package before the workflow
module, and must not import the activities' clients (httpx, the stores) with it.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nexpo_workflows.failover.activities import FailoverActivities
    from nexpo_workflows.failover.models import (
        FailoverInput,
        FailoverState,
        HoldInput,
        ProbeResult,
        ProbeTarget,
        RoutingRecord,
        SetActiveSideInput,
        Side,
    )
    from nexpo_workflows.failover.routing import RoutingTable
    from nexpo_workflows.failover.workflow import FailoverWorkflow

_MODULES = {
    "FailoverActivities": "activities",
    "FailoverInput": "models",
    "FailoverState": "models",
    "HoldInput": "models",
    "ProbeResult": "models",
    "ProbeTarget": "models",
    "RoutingRecord": "models",
    "SetActiveSideInput": "models",
    "Side": "models",
    "RoutingTable": "routing",
    "FailoverWorkflow": "workflow",
}

__all__ = [
    "FailoverActivities",
    "FailoverInput",
    "FailoverState",
    "FailoverWorkflow",
    "HoldInput",
    "ProbeResult",
    "ProbeTarget",
    "RoutingRecord",
    "RoutingTable",
    "SetActiveSideInput",
    "Side",
]


def __getattr__(name: str) -> Any:
    try:
        module = _MODULES[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    return getattr(import_module(f"{__name__}.{module}"), name)
