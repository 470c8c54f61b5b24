"""/api/sync: start a dataset's sync, follow it, schedule it, and reset its capture."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import timedelta
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Body, HTTPException, Path, Query, Request, Response, status
from pydantic import BaseModel, BeforeValidator, ConfigDict, WithJsonSchema, model_validator

from nexpo_workflows.api.deps import (
    IN_PROCESS_DESCRIPTION,
    ClientDep,
    StateDep,
    in_process_result,
)
from nexpo_workflows.api.routes.cloud import accepted
from nexpo_workflows.sync.capture import CaptureRefusedError
from nexpo_workflows.sync.datasets import DatasetConfigError, UnknownDatasetError
from nexpo_workflows.sync.models import DATASET_NAME_PATTERN, SyncInput, SyncResult
from nexpo_workflows.sync.runs import (
    CaptureReset,
    SyncAlreadyRunningError,
    SyncFailedError,
    SyncNotRunningError,
    SyncRunView,
    reset_capture,
    run_sync_in_process,
    start_sync,
    stop_sync,
    sync_status,
)
from nexpo_workflows.sync.schedules import (
    ScheduleNotFoundError,
    SyncSchedules,
    SyncScheduleView,
    parse_interval,
)
from nexpo_workflows.users.service import WorkflowAccepted

router = APIRouter(prefix="/api/sync", tags=["sync"])

DatasetPath = Annotated[str, Path(pattern=DATASET_NAME_PATTERN)]
T = TypeVar("T")

_NO_DATASET: dict[int | str, dict[str, Any]] = {404: {"description": "No such dataset"}}
_NO_SCHEDULE: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such dataset, or it has no schedule"}
}


class SyncRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    full: bool = False
    audit: bool = False
    # A long-running run that tails the source's changes until stopped (POST .../stop).
    follow: bool = False

    @model_validator(mode="after")
    def _one_mode(self) -> SyncRequest:
        if self.follow and self.audit:
            raise ValueError("follow and audit exclude each other: an audit ends by itself")
        return self


def _interval(value: object) -> timedelta:
    # Only the spelled-out form: pydantic would also take seconds or ISO 8601 durations.
    if not isinstance(value, str):
        raise ValueError("every must be a string such as 30s, 5m, 1h or 1d")
    return parse_interval(value)


class ScheduleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    every: Annotated[
        timedelta,
        BeforeValidator(_interval),
        WithJsonSchema({"type": "string", "examples": ["30s", "5m", "1h30m", "1d"]}),
    ]


async def _answer(call: Awaitable[T]) -> T:
    """The outcome of a sync operation, its refusals as 404 and 409 (a dataset this
    configuration cannot run, a source its change log cannot capture, or a run going on), and
    503 when the source cannot be asked (the gateway's one mapping of unavailable
    dependencies answers it)."""
    try:
        return await call
    except (UnknownDatasetError, ScheduleNotFoundError, SyncNotRunningError) as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from None
    except (DatasetConfigError, CaptureRefusedError) as error:
        raise HTTPException(status.HTTP_409_CONFLICT, {"message": str(error)}) from None
    except SyncAlreadyRunningError as error:
        raise HTTPException(
            status.HTTP_409_CONFLICT, {"message": str(error), "workflowId": error.workflow_id}
        ) from None


@router.post(
    "/{dataset}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=WorkflowAccepted,
    responses={
        200: {"model": SyncResult, "description": IN_PROCESS_DESCRIPTION},
        **_NO_DATASET,
        409: {
            "description": "A sync of this dataset is running, or it cannot run here (the "
            "source's server or table cannot be captured: the message says what to change)"
        },
        503: {
            "description": "The source cannot be reached; ENABLE_TEMPORAL=false: rows still "
            "differ after repair (the report names them)"
        },
    },
)
async def start_dataset_sync(
    dataset: DatasetPath,
    request: Request,
    state: StateDep,
    body: Annotated[SyncRequest | None, Body()] = None,
) -> Any:
    """Start DataSyncWorkflow for the dataset (`full`: ignore the watermark; `audit`: verify
    and repair every range, write nothing else; `follow`: do not end when caught up, apply
    the source's changes as they come until `POST /api/sync/{dataset}/stop`). While a run of
    the dataset goes on, a follow run included, another start is 409 and a scheduled start
    ends `skipped`.

    ENABLE_TEMPORAL=false: the same run is done in this process (one-shot, not durable) and
    the answer is its result; rows still differing after repair answer 503 with the report;
    `follow` is 409 (only a durable run can go on until stopped)."""
    options = body or SyncRequest()
    input = SyncInput(
        dataset=dataset, full=options.full, audit=options.audit, follow=options.follow
    )
    if state.client is None:
        if input.follow:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                {
                    "message": "a follow run needs ENABLE_TEMPORAL=true: it goes on until "
                    "stopped, which only a durable run can"
                },
            )
        try:
            result = await _answer(run_sync_in_process(state.in_process, state.services, input))
        except SyncFailedError as error:
            report = error.report.model_dump(mode="json") if error.report else None
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE, {"message": str(error), "result": report}
            ) from None
        return in_process_result(result)
    handle = await _answer(start_sync(state.client, state.services, input))
    return accepted(request, handle.id)


@router.post(
    "/{dataset}/stop",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=WorkflowAccepted,
    responses={404: {"description": "No such dataset, or no run of it is going on"}},
)
async def stop_dataset_sync(
    dataset: DatasetPath, request: Request, client: ClientDep, state: StateDep
) -> Any:
    """Stop the dataset's run after its current batch (how a follow run ends): the run
    records what it verified and ends `stopped`; `GET /api/sync/{dataset}` shows its result
    once it has."""
    handle = await _answer(stop_sync(client, state.services, dataset))
    return accepted(request, handle.id)


@router.get(
    "/{dataset}",
    response_model=SyncRunView,
    responses={404: {"description": "No such dataset, or it never ran"}},
)
async def get_dataset_sync(dataset: DatasetPath, client: ClientDep, state: StateDep) -> Any:
    """The current run's progress, or the last run's result or failure; for a dataset read
    from its source's log, the log's lag (`capture`)."""
    view = await _answer(sync_status(client, state.services, dataset))
    if view is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no sync of {dataset} has run")
    return view


@router.put(
    "/{dataset}/schedule",
    response_model=SyncScheduleView,
    responses={**_NO_DATASET, 422: {"description": "Not an interval, or shorter than 10s"}},
)
async def schedule_dataset_sync(
    dataset: DatasetPath, body: ScheduleRequest, client: ClientDep, state: StateDep
) -> Any:
    """Sync the dataset every `every` (e.g. `30s`, `5m`, `1h`, `1d`); an existing schedule
    gets the new interval and keeps its paused state."""
    schedules = SyncSchedules(client, state.services.settings)
    return await _answer(schedules.upsert(dataset, body.every))


@router.get("/{dataset}/schedule", response_model=SyncScheduleView, responses=_NO_SCHEDULE)
async def describe_dataset_schedule(
    dataset: DatasetPath, client: ClientDep, state: StateDep
) -> Any:
    """Interval, paused or not, the next start times and the recent scheduled runs."""
    return await _answer(SyncSchedules(client, state.services.settings).describe(dataset))


@router.post("/{dataset}/schedule/pause", response_model=SyncScheduleView, responses=_NO_SCHEDULE)
async def pause_dataset_schedule(dataset: DatasetPath, client: ClientDep, state: StateDep) -> Any:
    """Stop starting runs (a run going on is not stopped)."""
    schedules = SyncSchedules(client, state.services.settings)
    return await _answer(schedules.pause(dataset, "paused through the gateway"))


@router.post("/{dataset}/schedule/resume", response_model=SyncScheduleView, responses=_NO_SCHEDULE)
async def resume_dataset_schedule(dataset: DatasetPath, client: ClientDep, state: StateDep) -> Any:
    schedules = SyncSchedules(client, state.services.settings)
    return await _answer(schedules.resume(dataset, "resumed through the gateway"))


@router.delete(
    "/{dataset}/schedule",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={
        **_NO_SCHEDULE,
        409: {"description": "dropCapture: a sync of this dataset is running, or it is polled"},
        503: {"description": "dropCapture: the source cannot be reached"},
    },
)
async def delete_dataset_schedule(
    dataset: DatasetPath,
    client: ClientDep,
    state: StateDep,
    drop_capture: Annotated[bool, Query(alias="dropCapture")] = False,
) -> Response:
    """Remove the schedule (a run it started goes on to its end); `dropCapture=true` also
    resets the dataset's capture, as `DELETE /api/sync/{dataset}/capture` does, so its source
    no longer keeps WAL for it."""
    schedules = SyncSchedules(client, state.services.settings)
    if drop_capture:
        # Refused (no schedule, a run going on) before anything changes.
        await _answer(schedules.describe(dataset))
        await _answer(reset_capture(client, state.services, dataset))
    await _answer(schedules.delete(dataset))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.delete(
    "/{dataset}/capture",
    response_model=CaptureReset,
    responses={
        **_NO_DATASET,
        409: {"description": "A sync of this dataset is running, or the dataset is polled"},
        503: {"description": "The source cannot be reached"},
    },
)
async def reset_dataset_capture(dataset: DatasetPath, client: ClientDep, state: StateDep) -> Any:
    """Drop the dataset's change log (a PostgreSQL replication slot and publication, SQLite
    triggers) and its stored copy state: the source keeps no WAL for it, and the next run
    copies the table anew."""
    return await _answer(reset_capture(client, state.services, dataset))
