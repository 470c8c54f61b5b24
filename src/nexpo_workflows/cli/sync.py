"""``sync``: runs, status, schedules and log capture of the datasets."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from temporalio.client import (
    Client,
    WorkflowHandle,
)

from nexpo_workflows.cli._common import (
    T,
    app,
    command_settings,
    err,
    fail,
    in_process,
    out,
    refuse_no_wait_in_process,
    require_temporal,
    run_async,
)
from nexpo_workflows.client import connect
from nexpo_workflows.execution import InProcessRuns
from nexpo_workflows.providers import (
    enabled_provider_names,
    enabled_providers,
)
from nexpo_workflows.services import Services
from nexpo_workflows.sync.capture import CaptureRefusedError
from nexpo_workflows.sync.datasets import DatasetConfigError, dataset_configs, plan_dataset
from nexpo_workflows.sync.models import SyncInput, SyncProgress, SyncResult
from nexpo_workflows.sync.runs import (
    CaptureReset,
    SyncAlreadyRunningError,
    SyncFailedError,
    SyncNotRunningError,
    SyncRunView,
    current_progress,
    reset_capture,
    run_sync_in_process,
    start_sync,
    stop_sync,
    sync_outcome,
    sync_status,
)
from nexpo_workflows.sync.schedules import (
    IntervalError,
    ScheduleNotFoundError,
    SyncSchedules,
    SyncScheduleView,
    parse_interval,
)
from nexpo_workflows.telemetry import create_runtime

sync_app = typer.Typer(
    help="Sync datasets across databases, now or on a schedule.", no_args_is_help=True
)
app.add_typer(sync_app, name="sync")
# How often `sync run` asks the running workflow how far it got.
_SYNC_POLL_SECONDS = 0.5


def _sync_call(
    dataset: str,
    command: str,
    call: Callable[[Client, Services], Awaitable[T]],
    *,
    configured: bool = True,
    in_process_call: Callable[[InProcessRuns, Services], Awaitable[T]] | None = None,
) -> T:
    """Run ``call`` connected to Temporal, with the enabled providers (the source's change
    log), or ``in_process_call`` when ENABLE_TEMPORAL is false; an unknown dataset, or a
    refusal of its configuration or of its source's capture, exits 2 (``configured=False``:
    not checked first, so a schedule can be removed after its dataset left the
    configuration)."""
    settings = command_settings()
    if in_process_call is None:
        require_temporal(settings, f"sync {command}")
    if configured:
        try:
            plan_dataset(settings, enabled_provider_names(settings), dataset)
        except DatasetConfigError as error:
            fail(str(error), 2)

    async def connected() -> T:
        if not settings.enable_temporal:
            assert in_process_call is not None
            async with in_process(settings) as (runs, services):
                return await in_process_call(runs, services)
        client = await connect(settings, runtime=create_runtime(""))
        services = Services(settings=settings, client=client, providers=enabled_providers(settings))
        try:
            return await call(client, services)
        finally:
            await services.close()

    try:
        return run_async(connected())
    except (DatasetConfigError, CaptureRefusedError) as error:
        fail(str(error), 2)
    except (SyncAlreadyRunningError, SyncNotRunningError, ScheduleNotFoundError) as error:
        fail(str(error), 1)


def _counts(progress: SyncProgress) -> str:
    watermark = progress.watermark
    lag = progress.lag_seconds
    return (
        f"{progress.rows_seen} rows seen, {progress.rows_synced} synced, "
        f"{progress.rows_quarantined} quarantined, {progress.rows_repaired} repaired"
        + (f", watermark {watermark.version}/{watermark.id}" if watermark else "")
        + (f", lag {lag:.1f} s" if progress.following and lag is not None else "")
    )


@contextmanager
def _progress_display(dataset: str) -> Iterator[Callable[[SyncProgress], None]]:
    """A live bar on a terminal; otherwise (a log, a pipe) a line whenever progress moved."""
    if out.is_terminal:
        with Progress(
            SpinnerColumn(),
            TextColumn(f"sync {dataset}"),
            BarColumn(),
            TextColumn("{task.fields[phase]}: {task.fields[counts]}"),
            TimeElapsedColumn(),
            console=out,
        ) as bar:
            task = bar.add_task(dataset, total=None, phase="starting", counts="")
            yield lambda p: bar.update(task, phase=str(p.phase), counts=_counts(p))
        return
    shown: list[str] = []

    def print_line(progress: SyncProgress) -> None:
        line = f"sync {dataset} {progress.phase}: {_counts(progress)}"
        if shown[-1:] != [line]:
            shown.append(line)
            out.print(line, soft_wrap=True, highlight=False)

    yield print_line


async def _follow(
    client: Client, handle: WorkflowHandle[Any, SyncResult], dataset: str
) -> SyncResult:
    outcome = asyncio.ensure_future(sync_outcome(handle.result()))
    with _progress_display(dataset) as show:
        while not outcome.done():
            progress = await current_progress(client, dataset)
            if progress is not None:
                show(progress)
            await asyncio.wait({outcome}, timeout=_SYNC_POLL_SECONDS)
    return await outcome


def _print_sync_result(result: SyncResult) -> None:
    out.print(
        f"sync {result.dataset}: {result.status}; {_counts(result.progress)}; "
        f"{result.progress.batches} batches",
        soft_wrap=True,
        highlight=False,
    )
    if result.unrepaired:
        table = Table(title="rows that still differ after repair")
        for column in ("target", "source rows", "target rows", "ids"):
            table.add_column(column)
        for mismatch in result.unrepaired:
            table.add_row(
                mismatch.target,
                str(mismatch.source_count),
                str(mismatch.target_count),
                ", ".join(mismatch.ids),
            )
        out.print(table)


def _fail_with_report(failed: SyncFailedError) -> NoReturn:
    """A run that failed: its report (the rows still differing) when it has one, exit 1."""
    if failed.report is not None:
        _print_sync_result(failed.report)
    fail(str(failed), 1)


def _print_schedule(view: SyncScheduleView) -> None:
    upcoming = f", next run {view.next_runs[0]:%Y-%m-%d %H:%M:%S %Z}" if view.next_runs else ""
    state = "paused" if view.paused else "active"
    out.print(
        f"{view.schedule_id}: every {view.every}, {state}{upcoming} ({view.note})",
        soft_wrap=True,
        highlight=False,
    )


@sync_app.command("run")
def sync_run(
    dataset: str,
    full: bool = typer.Option(False, help="Ignore the watermark: sync every row again."),
    audit: bool = typer.Option(
        False, help="Write nothing new: verify every range and repair what differs."
    ),
    follow: bool = typer.Option(
        False,
        help="Do not end when caught up: apply the source's changes as they come, until "
        "`sync stop`.",
    ),
    wait: bool = typer.Option(True, help="Show the run's progress until it ends."),
) -> None:
    """Sync a dataset now; exit 1 when rows still differ after repair (they are named), or a
    run of it is going on (a follow run included)."""
    if follow and audit:
        fail("--follow and --audit exclude each other: an audit ends by itself", 2)

    options = SyncInput(dataset=dataset, full=full, audit=audit, follow=follow)

    async def run(client: Client, services: Services) -> SyncResult | str:
        handle = await start_sync(client, services, options)
        return await _follow(client, handle, dataset) if wait else handle.id

    async def run_here(runs: InProcessRuns, services: Services) -> SyncResult:
        refuse_no_wait_in_process(services.settings, wait, "sync run")
        if follow:
            fail(
                "`sync run --follow` needs ENABLE_TEMPORAL=true: a follow run goes on until "
                "stopped, which only a durable run can",
                2,
            )
        return await run_sync_in_process(runs, services, options)

    try:
        outcome = _sync_call(dataset, "run", run, in_process_call=run_here)
    except KeyboardInterrupt:
        if not follow:
            raise
        # Interrupting the display leaves the run following on the workers.
        fail(f"the run goes on following; `nexpo-workflows sync stop {dataset}` ends it", 130)
    except SyncFailedError as failed:
        _fail_with_report(failed)
    if isinstance(outcome, str):
        out.print(f"started workflow {outcome}")
    else:
        _print_sync_result(outcome)


@sync_app.command("stop")
def sync_stop(
    dataset: str,
    wait: bool = typer.Option(True, help="Wait for the run's result and print it."),
) -> None:
    """Stop the dataset's run after its current batch (how a follow run ends): it records what
    it verified and ends `stopped`. Exit 1 when no run of it is going on."""

    async def stop(client: Client, services: Services) -> SyncResult | str:
        handle = await stop_sync(client, services, dataset)
        return await sync_outcome(handle.result()) if wait else handle.id

    try:
        outcome = _sync_call(dataset, "stop", stop)
    except SyncFailedError as failed:
        _fail_with_report(failed)
    if isinstance(outcome, str):
        out.print(f"asked workflow {outcome} to stop")
    else:
        _print_sync_result(outcome)


@sync_app.command("status")
def sync_status_command(dataset: str) -> None:
    """The progress of the dataset's current run, or the outcome of its last one, and the lag
    of its change log (JSON); a warning on stderr when the log is lost or holds too much."""

    async def status(client: Client, services: Services) -> SyncRunView | None:
        return await sync_status(client, services, dataset)

    view = _sync_call(dataset, "status", status)
    if view is None:
        fail(f"no sync of {dataset} has run", 1)
    out.print_json(view.model_dump_json())
    if view.capture is not None and view.capture.warning:
        err.print(f"warning: {view.capture.warning}", markup=False, highlight=False)


@sync_app.command("schedule")
def sync_schedule(
    dataset: str,
    every: str = typer.Option(..., help="30s, 5m, 1h, 1d or a sum such as 1h30m; at least 10s."),
) -> None:
    """Sync a dataset at an interval (a Temporal Schedule); run again to change it."""
    try:
        interval = parse_interval(every)
    except IntervalError as error:
        fail(str(error), 2)

    async def upsert(client: Client, services: Services) -> SyncScheduleView:
        return await SyncSchedules(client, services.settings).upsert(dataset, interval)

    _print_schedule(_sync_call(dataset, "schedule", upsert))


@sync_app.command("pause")
def sync_pause(dataset: str) -> None:
    """Stop the schedule from starting runs (a run going on finishes)."""

    async def pause(client: Client, services: Services) -> SyncScheduleView:
        return await SyncSchedules(client, services.settings).pause(dataset, "paused from the CLI")

    _print_schedule(_sync_call(dataset, "pause", pause))


@sync_app.command("resume")
def sync_resume(dataset: str) -> None:
    """Let a paused schedule start runs again."""

    async def resume(client: Client, services: Services) -> SyncScheduleView:
        schedules = SyncSchedules(client, services.settings)
        return await schedules.resume(dataset, "resumed from the CLI")

    _print_schedule(_sync_call(dataset, "resume", resume))


@sync_app.command("unschedule")
def sync_unschedule(
    dataset: str,
    drop_capture: bool = typer.Option(
        False, help="Also drop the dataset's change log and copy state, as `sync reset` does."
    ),
) -> None:
    """Delete the dataset's schedule (a run going on finishes). Its change log stays, and a
    PostgreSQL source keeps WAL for it, unless --drop-capture."""

    async def delete(client: Client, services: Services) -> CaptureReset | None:
        schedules = SyncSchedules(client, services.settings)
        reset = None
        if drop_capture:
            # Refused (no schedule, a run going on) before anything changes.
            await schedules.describe(dataset)
            reset = await reset_capture(client, services, dataset)
        await schedules.delete(dataset)
        return reset

    reset = _sync_call(dataset, "unschedule", delete, configured=drop_capture)
    out.print(f"schedule of {dataset} deleted", soft_wrap=True, highlight=False)
    if reset is not None:
        _print_reset(reset)


def _print_reset(reset: CaptureReset) -> None:
    dropped = "dropped" if reset.dropped else "was not there"
    out.print(
        f"change log of {reset.dataset} {dropped}; its next run copies the table anew",
        soft_wrap=True,
        highlight=False,
    )


@sync_app.command("reset")
def sync_reset(dataset: str) -> None:
    """Drop the dataset's change log (a PostgreSQL replication slot and publication, SQLite
    triggers) and copy state: the source keeps no WAL for it, and its next run copies the
    table anew. Exit 1 while a run of it goes on."""

    async def reset(client: Client, services: Services) -> CaptureReset:
        return await reset_capture(client, services, dataset)

    _print_reset(_sync_call(dataset, "reset", reset))


@sync_app.command("datasets")
def sync_datasets() -> None:
    """The datasets this configuration can sync, with their source and targets."""
    settings = command_settings()
    enabled = enabled_provider_names(settings)
    table = Table()
    for column in ("dataset", "source", "targets", "schema"):
        table.add_column(column)
    for dataset in dataset_configs(settings).values():
        source = dataset.source.provider
        targets = dataset.targets
        if targets is None:  # every enabled provider but the source, as a worker resolves it
            targets = [name for name in enabled if name != source]
        table.add_row(
            dataset.name,
            f"{source}:{dataset.source.table}",
            ", ".join(targets),
            dataset.row_schema or "",
        )
    out.print(table)
