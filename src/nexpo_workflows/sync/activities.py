"""The sync activities: plan, detect changes, validate, write to a target, verify.

Rows never pass through workflow history: a step reads its batch's key range from the source
(a keyset range query), or takes the rows this worker has just validated, so history holds
only bounds and counts, whatever the number of rows.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from nexpo_workflows.errors import first_line
from nexpo_workflows.heartbeats import heartbeating
from nexpo_workflows.providers import DatabaseProvider, DatasetRecord, ProviderUnavailableError
from nexpo_workflows.providers.base import RecordVersion
from nexpo_workflows.services import Services
from nexpo_workflows.sync.datasets import (
    QUARANTINE_PREFIX,
    WATERMARKS_DATASET,
    DatasetConfigError,
    RowValidator,
    find_dataset,
    plan_dataset,
)
from nexpo_workflows.sync.models import (
    BatchInput,
    ChangeBatch,
    DatasetConfig,
    DetectChangesInput,
    LoadWatermarkInput,
    PlanSyncInput,
    SyncBatchInput,
    SyncPlan,
    TargetMismatch,
    TargetWrite,
    ValidationOutcome,
    VerifyInput,
    VerifyOutcome,
    Watermark,
)
from nexpo_workflows.sync.source import SourceConfigError, SourceRow, SourceTable

BAD_DATASET = "BadDatasetConfig"
PROVIDER_UNAVAILABLE = "ProviderUnavailable"
_AS_JSON = RowValidator(None)
# Validated batches a worker keeps for the writes that follow (one per dataset in flight).
VALIDATED_BATCHES_KEPT = 4


def checksum(versions: Iterable[RecordVersion]) -> str:
    """SHA-256 over the sorted (id, version, tombstone) triples of a range."""
    digest = hashlib.sha256()
    for item in sorted(versions, key=lambda v: v.id):
        digest.update(f"{item.id}\x1f{item.version}\x1f{int(item.deleted)}\n".encode())
    return digest.hexdigest()


def _refusal(error: Exception) -> ApplicationError:
    return ApplicationError(str(error), type=BAD_DATASET, non_retryable=True)


def _unavailable(error: ProviderUnavailableError) -> ApplicationError:
    return ApplicationError(str(error), type=PROVIDER_UNAVAILABLE)


class SyncActivities:
    def __init__(self, services: Services) -> None:
        self._settings = services.settings
        self._providers = services.providers
        self._sources: dict[str, SourceTable] = {}
        self._validators: dict[str, RowValidator] = {}
        # The last batches validated here, as targets store them: the writes of a batch,
        # usually on this worker right after, then neither read nor validate it again. A worker
        # that did not validate the batch reads it itself. Bounded: memory stays flat.
        self._validated: OrderedDict[tuple[str, ChangeBatch], list[DatasetRecord]] = OrderedDict()

    def _dataset(self, name: str) -> DatasetConfig:
        try:
            return find_dataset(self._settings, name)
        except DatasetConfigError as error:
            raise _refusal(error) from error

    def _provider(self, name: str) -> DatabaseProvider:
        if name not in self._providers:
            raise _refusal(
                DatasetConfigError(
                    f"provider {name!r} is not enabled on this worker; "
                    f"enabled: {sorted(self._providers)}"
                )
            )
        return self._providers[name]

    def _source(self, plan: SyncPlan) -> SourceTable:
        if plan.dataset not in self._sources:
            provider = self._provider(plan.source).sql_source()
            if provider is None:
                raise _refusal(DatasetConfigError(f"source {plan.source!r} is not a SQL provider"))
            self._sources[plan.dataset] = SourceTable(provider, self._dataset(plan.dataset).source)
        return self._sources[plan.dataset]

    def _validator(self, dataset: str) -> RowValidator:
        if dataset not in self._validators:
            try:
                self._validators[dataset] = RowValidator(self._dataset(dataset).row_schema)
            except DatasetConfigError as error:
                raise _refusal(error) from error
        return self._validators[dataset]

    async def _rows(self, plan: SyncPlan, batch: ChangeBatch) -> list[SourceRow]:
        try:
            async with heartbeating("reading the source"):
                return await self._source(plan).rows(batch.after, batch.last)
        except SourceConfigError as error:
            raise _refusal(error) from error
        except ProviderUnavailableError as error:
            raise _unavailable(error) from error

    @activity.defn(name="plan_sync")
    async def plan_sync(self, input: PlanSyncInput) -> SyncPlan:
        try:
            plan = plan_dataset(self._settings, list(self._providers), input.dataset)
        except DatasetConfigError as error:
            raise _refusal(error) from error
        self._validator(plan.dataset)  # refuses a schema this worker cannot import
        return plan

    @activity.defn(name="load_watermark")
    async def load_watermark(self, input: LoadWatermarkInput) -> Watermark | None:
        """The last verified watermark of the dataset, kept in the source's records."""
        source = self._provider(input.plan.source)
        try:
            stored = await source.get_records(WATERMARKS_DATASET, [input.plan.dataset])
        except ProviderUnavailableError as error:
            raise _unavailable(error) from error
        if not stored:
            return None
        return Watermark(version=stored[0].version, id=stored[0].data["id"])

    @activity.defn(name="detect_changes")
    async def detect_changes(self, input: DetectChangesInput) -> ChangeBatch:
        """Record ``after`` as the verified watermark, then find the next batch after it."""
        plan = input.plan
        try:
            if input.record and input.after is not None:
                await self._provider(plan.source).upsert_records(
                    WATERMARKS_DATASET,
                    [
                        DatasetRecord(
                            id=plan.dataset,
                            version=input.after.version,
                            data={"id": input.after.id},
                        )
                    ],
                )
            batch = await self._source(plan).next_batch(input.after, plan.batch_size)
        except SourceConfigError as error:
            raise _refusal(error) from error
        except ProviderUnavailableError as error:
            raise _unavailable(error) from error
        if input.record:
            _record_lag(plan, input.after, caught_up=batch.count == 0)
        return batch

    async def _validated_rows(
        self, plan: SyncPlan, batch: ChangeBatch
    ) -> tuple[list[DatasetRecord], list[DatasetRecord]]:
        """The batch's rows as targets store them, and its invalid rows as quarantined."""
        validate = self._validator(plan.dataset)
        valid: list[DatasetRecord] = []
        quarantine: list[DatasetRecord] = []
        for row in await self._rows(plan, batch):
            try:
                # A tombstone carries no fields to check.
                data = {} if row.deleted else validate(row.data)
            except ValidationError as error:
                quarantine.append(
                    DatasetRecord(
                        id=row.id,
                        version=row.version,
                        data={"reason": _reason(error), "row": _AS_JSON(row.data)},
                    )
                )
                continue
            # Validating the record costs less than model_construct, pure Python in pydantic 2.
            valid.append(
                DatasetRecord(id=row.id, version=row.version, deleted=row.deleted, data=data)
            )
        self._validated[plan.dataset, batch] = valid
        while len(self._validated) > VALIDATED_BATCHES_KEPT:
            self._validated.popitem(last=False)
        return valid, quarantine

    @activity.defn(name="validate_data")
    async def validate_data(self, input: BatchInput) -> ValidationOutcome:
        """Check each row against the dataset's schema; the invalid ones go to quarantine
        with their reason (counted, never written to a target)."""
        valid, quarantine = await self._validated_rows(input.plan, input.batch)
        if quarantine:
            try:
                await self._provider(input.plan.source).upsert_records(
                    QUARANTINE_PREFIX + input.plan.dataset, quarantine
                )
            except ProviderUnavailableError as error:
                raise _unavailable(error) from error
        return ValidationOutcome(
            valid=len(valid),
            quarantined=len(quarantine),
            invalid_ids=[record.id for record in quarantine],
        )

    @activity.defn(name="sync_to_providers")
    async def sync_to_providers(self, input: SyncBatchInput) -> TargetWrite:
        """Write the batch's valid rows to one target in one bulk upsert (idempotent)."""
        plan, batch = input.plan, input.batch
        # A repair reads the source again: what differs may be a row that arrived late.
        validated = (
            None if input.only_ids is not None else self._validated.get((plan.dataset, batch))
        )
        if validated is None:
            validated, _ = await self._validated_rows(plan, batch)
        skip, only = set(input.skip_ids), set(input.only_ids or ())
        records = [
            record
            for record in validated
            if record.id not in skip and (input.only_ids is None or record.id in only)
        ]
        try:
            async with heartbeating(f"writing {len(records)} rows"):
                await self._provider(input.target).upsert_records(plan.dataset, records)
        except ProviderUnavailableError as error:
            raise _unavailable(error) from error
        return TargetWrite(target=input.target, written=len(records))

    @activity.defn(name="verify_sync")
    async def verify_sync(self, input: VerifyInput) -> VerifyOutcome:
        """Compare the batch's range between the source and every target: count and checksum
        over ids and versions; the differing ids of each target that does not match."""
        plan, skip = input.plan, set(input.skip_ids)
        try:
            expected = [
                v
                for v in await self._source(plan).versions(input.batch.after, input.batch.last)
                if v.id not in skip
            ]
            ids = [v.id for v in expected]
            async with heartbeating("reading the targets"):
                found = await asyncio.gather(
                    *(
                        self._provider(target).record_versions(plan.dataset, ids)
                        for target in plan.targets
                    )
                )
        except SourceConfigError as error:
            raise _refusal(error) from error
        except ProviderUnavailableError as error:
            raise _unavailable(error) from error
        # Tuples, not the models: comparing pydantic models is the slower part of a large batch.
        wanted = {v.id: (v.version, v.deleted) for v in expected}
        mismatches = []
        for target, versions in zip(plan.targets, found, strict=True):
            held = {v.id: (v.version, v.deleted) for v in versions}
            differing = [i for i, v in wanted.items() if held.get(i) != v]
            if differing:
                mismatches.append(
                    TargetMismatch(
                        target=target,
                        source_count=len(expected),
                        target_count=len(versions),
                        source_checksum=checksum(expected),
                        target_checksum=checksum(versions),
                        ids=differing,
                    )
                )
        return VerifyOutcome(mismatches=mismatches)

    def all(self) -> list[Any]:
        return [
            self.plan_sync,
            self.load_watermark,
            self.detect_changes,
            self.validate_data,
            self.sync_to_providers,
            self.verify_sync,
        ]


def _record_lag(plan: SyncPlan, verified: Watermark | None, *, caught_up: bool) -> None:
    """How far the targets trail the source: 0 when nothing is left to sync, else the age of
    the last verified change (versions are microseconds since the epoch)."""
    if caught_up:
        lag = 0.0
    elif verified is not None:
        lag = max(time.time() - verified.version / 1_000_000, 0.0)
    else:
        return  # a first run: nothing verified yet, no age to report
    gauge = activity.metric_meter().create_gauge_float(
        "sync_lag_seconds", "How far each target's copy of a dataset trails its source", "s"
    )
    for target in plan.targets:
        gauge.set(lag, {"dataset": plan.dataset, "provider": target})


def _reason(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'row'}: {e['msg']}" for e in error.errors()
    ) or first_line(error)
