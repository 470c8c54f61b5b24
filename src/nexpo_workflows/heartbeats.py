"""Heartbeats from a background task while an activity waits on something slow.

With a heartbeat timeout, a worker that dies mid-activity is noticed within that timeout (not
at the start-to-close timeout), and a cancelled workflow's cancellation reaches the activity,
which then stops instead of finishing work nobody wants.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from temporalio import activity

HEARTBEAT_SECONDS = 2.0


@contextlib.asynccontextmanager
async def heartbeating(*details: object) -> AsyncIterator[None]:
    """Heartbeat every HEARTBEAT_SECONDS (with ``details``) until the block ends; outside an
    activity (a direct call), do nothing."""
    if not activity.in_activity() or activity.info().is_local:
        # A local activity has no heartbeat: its workflow task's timeout stands for it.
        yield
        return

    async def beat() -> None:
        while True:
            activity.heartbeat(*details)
            await asyncio.sleep(HEARTBEAT_SECONDS)

    beating = asyncio.create_task(beat())
    try:
        yield
    finally:
        beating.cancel()
