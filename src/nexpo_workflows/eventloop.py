"""The event loop the commands run on: uvloop (libuv) where it is built, not on Windows.

Measured in benchmarks/gateway_load.py, it cuts what the loop itself costs per HTTP request
and per Temporal task, in the dev stack where the gateway and the worker share one loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_new_event_loop: Callable[[], asyncio.AbstractEventLoop] | None
try:
    from uvloop import new_event_loop as _new_event_loop
except ImportError:
    _new_event_loop = None


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on the fastest loop available."""
    with asyncio.Runner(loop_factory=_new_event_loop) as runner:
        return runner.run(coroutine)
