"""The baseline of the onboarding benchmark: a workflow running N no-op activities in parallel."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from pydantic import BaseModel
from temporalio import activity, workflow


class BareInput(BaseModel):
    activities: int
    local: bool


class NoopInput(BaseModel):
    index: int


@activity.defn(name="bench_noop")
async def bench_noop(input: NoopInput) -> None:
    return None


@workflow.defn(name="BenchBareWorkflow")
class BareWorkflow:
    @workflow.run
    async def run(self, input: BareInput) -> None:
        timeout = timedelta(seconds=10)
        if input.local:
            calls = [
                workflow.execute_local_activity(
                    bench_noop, NoopInput(index=i), start_to_close_timeout=timeout
                )
                for i in range(input.activities)
            ]
        else:
            calls = [
                workflow.execute_activity(
                    bench_noop, NoopInput(index=i), start_to_close_timeout=timeout
                )
                for i in range(input.activities)
            ]
        await asyncio.gather(*calls)
