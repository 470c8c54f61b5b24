"""A Temporal Schedule per dataset that starts its sync at a fixed interval.

A scheduled start has the schedule's workflow id with a timestamp appended; DataSyncWorkflow
then runs the real run as a child under the dataset's one id, or returns "skipped" while a
run of the dataset (scheduled or not) is going on. SKIP also keeps scheduled starts from
piling up behind a slow run.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable
from datetime import datetime, timedelta
from typing import TypeVar

from pydantic import BaseModel
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionExecutionStartWorkflow,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleHandle,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.service import RPCError, RPCStatusCode

from nexpo_workflows.config import Settings
from nexpo_workflows.sync.datasets import find_dataset
from nexpo_workflows.sync.models import SyncInput
from nexpo_workflows.sync.workflow import DataSyncWorkflow, sync_workflow_id

# Below this a run of even a small dataset may outlast its interval, and every start would
# be skipped anyway.
MIN_INTERVAL = timedelta(seconds=10)
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_PART = re.compile(r"(\d+)([dhms])")
_INTERVAL = re.compile(rf"(?:{_PART.pattern})+")
T = TypeVar("T")


class IntervalError(ValueError):
    """An interval that is not like ``30s``, ``5m``, ``1h30m``, ``1d``, or is too short."""


class ScheduleNotFoundError(Exception):
    def __init__(self, dataset: str) -> None:
        super().__init__(f"dataset {dataset!r} has no schedule ({sync_schedule_id(dataset)})")


def parse_interval(text: str) -> timedelta:
    """``30s``, ``5m``, ``1h``, ``1d`` or a sum of them such as ``1h30m``."""
    cleaned = text.strip().lower()
    if not _INTERVAL.fullmatch(cleaned):
        raise IntervalError(
            f"interval {text!r} is not a number followed by s, m, h or d (e.g. 30s, 5m, 1h30m)"
        )
    every = timedelta(seconds=sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(cleaned)))
    if every < MIN_INTERVAL:
        raise IntervalError(f"interval {text!r} is shorter than {format_interval(MIN_INTERVAL)}")
    return every


def format_interval(every: timedelta) -> str:
    """The shortest spelling ``parse_interval`` reads back, e.g. 5400 s -> ``1h30m``."""
    left = int(every.total_seconds())
    parts = []
    for unit, seconds in _UNITS.items():
        count, left = divmod(left, seconds)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def sync_schedule_id(dataset: str) -> str:
    return f"sync-schedule-{dataset}"


class ScheduledStart(BaseModel):
    workflow_id: str
    scheduled_at: datetime
    started_at: datetime


class SyncScheduleView(BaseModel):
    dataset: str
    schedule_id: str
    every: str
    every_seconds: float
    paused: bool
    note: str
    next_runs: list[datetime]
    recent_runs: list[ScheduledStart]
    # Starts not made because the previous scheduled one was still running.
    skipped_overlaps: int


class SyncSchedules:
    """Create or update, pause, resume, delete and describe the schedule of a dataset."""

    def __init__(self, client: Client, settings: Settings) -> None:
        self._client = client
        self._settings = settings

    def _schedule(self, dataset: str, every: timedelta, note: str) -> Schedule:
        return Schedule(
            action=ScheduleActionStartWorkflow(
                DataSyncWorkflow.run,
                SyncInput(dataset=dataset),
                id=sync_workflow_id(dataset),
                task_queue=self._settings.temporal_task_queue,
            ),
            spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
            policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
            state=ScheduleState(note=note),
        )

    def _handle(self, dataset: str) -> ScheduleHandle:
        return self._client.get_schedule_handle(sync_schedule_id(dataset))

    async def upsert(self, dataset: str, every: timedelta) -> SyncScheduleView:
        """Create the schedule, or give an existing one this interval (paused stays paused)."""
        find_dataset(self._settings, dataset)
        schedule = self._schedule(dataset, every, f"sync {dataset} every {format_interval(every)}")
        try:
            await self._client.create_schedule(sync_schedule_id(dataset), schedule)
        except ScheduleAlreadyRunningError:

            def keep_state(current: ScheduleUpdateInput) -> ScheduleUpdate:
                schedule.state = current.description.schedule.state
                return ScheduleUpdate(schedule=schedule)

            await self._handle(dataset).update(keep_state)
        return await self.describe(dataset)

    async def pause(self, dataset: str, note: str) -> SyncScheduleView:
        await _not_found_as(dataset, self._handle(dataset).pause(note=note))
        return await self.describe(dataset)

    async def resume(self, dataset: str, note: str) -> SyncScheduleView:
        await _not_found_as(dataset, self._handle(dataset).unpause(note=note))
        return await self.describe(dataset)

    async def delete(self, dataset: str) -> None:
        """Remove the schedule; a run it started goes on to its end."""
        await _not_found_as(dataset, self._handle(dataset).delete())

    async def describe(self, dataset: str) -> SyncScheduleView:
        description = await _not_found_as(dataset, self._handle(dataset).describe())
        schedule, info = description.schedule, description.info
        every = schedule.spec.intervals[0].every
        return SyncScheduleView(
            dataset=dataset,
            schedule_id=description.id,
            every=format_interval(every),
            every_seconds=every.total_seconds(),
            paused=schedule.state.paused,
            note=schedule.state.note or "",
            next_runs=info.next_action_times,
            recent_runs=[
                ScheduledStart(
                    workflow_id=result.action.workflow_id,
                    scheduled_at=result.scheduled_at,
                    started_at=result.started_at,
                )
                for result in info.recent_actions
                if isinstance(result.action, ScheduleActionExecutionStartWorkflow)
            ],
            skipped_overlaps=info.num_actions_skipped_overlap,
        )


async def _not_found_as(dataset: str, call: Awaitable[T]) -> T:
    try:
        return await call
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            raise ScheduleNotFoundError(dataset) from None
        raise
