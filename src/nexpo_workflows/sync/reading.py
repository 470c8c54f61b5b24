"""A dataset's rows read from its source and checked against its schema: the batch as the
targets receive it. Serves the sync's steps in the worker, and the copy's read ahead in a
process of its own (``read_ahead``), which builds one of these from the same settings.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import ValidationError
from pydantic_core import to_json
from temporalio.exceptions import ApplicationError

from nexpo_workflows.config import Settings
from nexpo_workflows.errors import first_line
from nexpo_workflows.providers import DatabaseProvider, DatasetRecord
from nexpo_workflows.providers.base import RecordBatch
from nexpo_workflows.sync.datasets import DatasetConfigError, RowValidator, find_dataset
from nexpo_workflows.sync.models import ChangeBatch, DatasetConfig, SyncPlan, Watermark
from nexpo_workflows.sync.source import EncodedRows, SourceRow, SourceTable

BAD_DATASET = "BadDatasetConfig"
T = TypeVar("T")
_AS_JSON = RowValidator(None)


@dataclass(slots=True)
class PreparedBatch:
    """A batch as the targets receive it."""

    # Valid rows, as targets store them (upserted), as columns.
    records: RecordBatch = field(default_factory=RecordBatch)
    # Keys gone from the source (log capture): deleted from every target.
    gone: list[str] = field(default_factory=list)
    quarantine: list[DatasetRecord] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Encodings:
    """What a plan's targets write from: the records' JSON text (a SQL target) and their
    fields as values (any other)."""

    json: bool
    values: bool


def refusal(error: Exception) -> ApplicationError:
    return ApplicationError(str(error), type=BAD_DATASET, non_retryable=True)


def _masked(value: Any) -> str:
    return "sha256:" + hashlib.sha256(to_json(value)).hexdigest()


def _carried(dataset: DatasetConfig, data: dict[str, Any]) -> dict[str, Any]:
    """The fields a dataset copies, masked ones as digests."""
    if dataset.columns is not None:
        data = {name: data[name] for name in dataset.columns if name in data}
    for name in dataset.masked:
        if name in data:
            data[name] = _masked(data[name])
    return data


def _reason(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'row'}: {e['msg']}" for e in error.errors()
    ) or first_line(error)


class BatchReader:
    """Reads batches of the datasets of ``settings`` from ``providers`` (at least each
    dataset's source) and checks them; keeps one source table and validator per dataset.
    With ``fetch_ahead``, a copy's next batch is fetched while one is checked (where the copy
    is read batch after batch: not where another process reads it ahead)."""

    def __init__(
        self,
        settings: Settings,
        providers: Mapping[str, DatabaseProvider],
        *,
        fetch_ahead: bool,
    ) -> None:
        self._settings = settings
        self._providers = providers
        self._fetch_ahead = fetch_ahead
        self._sources: dict[str, SourceTable] = {}
        self._validators: dict[str, RowValidator] = {}
        # Per dataset, the copy's next encoded rows being fetched.
        self._fetching: WorkAhead[EncodedRows | None] = WorkAhead()

    def dataset(self, name: str) -> DatasetConfig:
        try:
            return find_dataset(self._settings, name)
        except DatasetConfigError as error:
            raise refusal(error) from error

    def provider(self, name: str) -> DatabaseProvider:
        if name not in self._providers:
            raise refusal(
                DatasetConfigError(
                    f"provider {name!r} is not enabled on this worker; "
                    f"enabled: {sorted(self._providers)}"
                )
            )
        return self._providers[name]

    def source(self, plan: SyncPlan) -> SourceTable:
        if plan.dataset not in self._sources:
            provider = self.provider(plan.source).sql_source()
            if provider is None:
                raise refusal(DatasetConfigError(f"source {plan.source!r} is not a SQL provider"))
            self._sources[plan.dataset] = SourceTable(provider, self.dataset(plan.dataset).source)
        return self._sources[plan.dataset]

    def validator(self, dataset: str) -> RowValidator:
        if dataset not in self._validators:
            try:
                self._validators[dataset] = RowValidator(self.dataset(dataset).row_schema)
            except DatasetConfigError as error:
                raise refusal(error) from error
        return self._validators[dataset]

    def checked(
        self, plan: SyncPlan, rows: list[SourceRow], gone: list[str], encodings: Encodings
    ) -> PreparedBatch:
        """``rows`` checked against the dataset's schema: the valid ones as targets store them,
        the invalid ones as quarantined."""
        validate = self.validator(plan.dataset)
        dataset = self.dataset(plan.dataset)
        prepared = PreparedBatch(gone=gone)
        # A tombstone carries no fields to check.
        live = [row for row in rows if not row.deleted]
        fields, errors = validate.batch([_carried(dataset, row.data) for row in live])
        checked = iter(enumerate(fields))
        records = prepared.records
        for row in rows:
            data: dict[str, Any] | None = {}
            if not row.deleted:
                index, data = next(checked)
                if data is None:
                    prepared.quarantine.append(
                        DatasetRecord(
                            id=row.id,
                            version=row.version,
                            data={"reason": _reason(errors[index]), "row": _AS_JSON(row.data)},
                        )
                    )
                    continue
            records.ids.append(row.id)
            records.versions.append(row.version)
            records.deleted.append(row.deleted)
            records.data.append(data or {})
        # Computed here, ahead of the steps that need them when the batch is read ahead: the
        # hashes for the verification (and a write storing them), the JSON text for SQL writes.
        records.hashes()
        if encodings.json:
            records.json_data()
        return prepared

    async def copy_batch(
        self, plan: SyncPlan, after: Watermark, until: str | None, encodings: Encodings
    ) -> tuple[ChangeBatch, PreparedBatch]:
        """The copy's next batch after ``after`` (up to the key ``until``), read with its rows
        in one query and checked."""
        encoded = await self._encoded_copy_batch(plan, after, until, encodings)
        if encoded is not None:
            return encoded
        rows = await self.source(plan).next_rows(after, plan.batch_size, until)
        if not rows:
            return ChangeBatch(after=after, last=None, count=0), PreparedBatch()
        last = after.model_copy(update={"id": rows[-1].id})
        batch = ChangeBatch(after=after, last=last, count=len(rows))
        return batch, self.checked(plan, rows, [], encodings)

    async def _encoded_copy_batch(
        self, plan: SyncPlan, after: Watermark, until: str | None, encodings: Encodings
    ) -> tuple[ChangeBatch, PreparedBatch] | None:
        """The copy's next batch encoded by the source and checked in one call, where the
        source can and every row passes; None otherwise (then it is read row by row, each
        failing row quarantined with its reason). The batch after it is fetched meanwhile: the
        source encodes it while this one is checked."""
        dataset, validator = self.dataset(plan.dataset), self.validator(plan.dataset)
        if validator.plain_fields is None or dataset.masked:
            return None
        encoded = await self._encoded(plan, after, until)
        if encoded is None:
            return None
        if not encoded.ids:
            return ChangeBatch(after=after, last=None, count=0), PreparedBatch()
        last = after.model_copy(update={"id": encoded.ids[-1]})
        if self._fetch_ahead and len(encoded.ids) == plan.batch_size:
            self._fetching.start(plan, last, until, self._fetch(plan, last, until))
        # In a thread: the event loop goes on meanwhile (it sends the fetch ahead, if any).
        records = await asyncio.to_thread(_encoded_records, validator, encoded, after, encodings)
        if records is None:
            return None
        batch = ChangeBatch(after=after, last=last, count=len(encoded.ids))
        return batch, PreparedBatch(records=records)

    async def _encoded(
        self, plan: SyncPlan, after: Watermark, until: str | None
    ) -> EncodedRows | None:
        """The encoded rows after ``after``: fetched ahead (unless it failed), or now."""
        fetched = await self._fetching.take(plan, after, until)
        return fetched if fetched is not None else await self._fetch(plan, after, until)

    async def _fetch(
        self, plan: SyncPlan, after: Watermark, until: str | None
    ) -> EncodedRows | None:
        dataset, validator = self.dataset(plan.dataset), self.validator(plan.dataset)
        assert validator.plain_fields is not None
        return await self.source(plan).encoded_rows(
            after, plan.batch_size, until, validator.plain_fields, dataset.columns
        )


def _encoded_records(
    validator: RowValidator, encoded: EncodedRows, after: Watermark, encodings: Encodings
) -> RecordBatch | None:
    """Encoded rows checked in one call, as targets store them; None when a row fails."""
    live = validator.encoded_batch(encoded.live)
    if live is None:
        return None
    fields_of = iter(live)
    records = RecordBatch(
        ids=encoded.ids,
        versions=[after.version] * len(encoded.ids),
        deleted=encoded.deleted,
        data=[{} if gone else next(fields_of) for gone in encoded.deleted],
        computed_hashes=encoded.hashes,
    )
    if encodings.json:
        records.json_data()
    return records


def _retrieved(task: asyncio.Task[Any]) -> None:
    """A task's error, retrieved so asyncio does not log it: whoever wanted its result does
    the work again and reports its own."""
    if not task.cancelled():
        task.exception()


class WorkAhead(Generic[T]):
    """Per dataset, one piece of a copy's work started ahead for the batch after a position:
    taken by whoever asks for that very batch, dropped (cancelled) when another is asked for."""

    def __init__(self) -> None:
        self._started: dict[str, tuple[tuple[Watermark, str | None, int], asyncio.Task[T]]] = {}

    def start(
        self, plan: SyncPlan, after: Watermark, until: str | None, work: Coroutine[Any, Any, T]
    ) -> None:
        task = asyncio.create_task(work)
        task.add_done_callback(_retrieved)
        self._started[plan.dataset] = ((after, until, plan.batch_size), task)

    async def take(self, plan: SyncPlan, after: Watermark, until: str | None) -> T | None:
        """What was started for the batch after ``after``; None when nothing was, or it failed
        (the caller does the work again, where its error counts)."""
        started = self._started.pop(plan.dataset, None)
        if started is None:
            return None
        position, task = started
        if position != (after, until, plan.batch_size):
            task.cancel()
            return None
        try:
            return await task
        except Exception:
            return None
