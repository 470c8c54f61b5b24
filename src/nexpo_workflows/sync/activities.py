"""The sync activities: plan, open the capture, detect changes, validate, write to a target,
verify.

Rows never pass through workflow history: a step reads its batch from the source (a keyset
range of the table, or the change log up to the batch's last position and the rows of the keys
it names), or takes the rows this worker has just validated, so history holds only bounds and
counts, whatever the number of rows.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic_core import to_json
from temporalio import activity
from temporalio.exceptions import ApplicationError

from nexpo_workflows.heartbeats import heartbeating
from nexpo_workflows.providers import DatasetRecord, ProviderUnavailableError
from nexpo_workflows.providers.base import (
    KeysChecksum,
    RecordBatch,
    RecordVersion,
    chunked,
    keys_checksum,
    row_hash,
)
from nexpo_workflows.services import Services
from nexpo_workflows.sync.capture import (
    CaptureRefusedError,
    ChangeLog,
    change_log,
)
from nexpo_workflows.sync.datasets import (
    QUARANTINE_PREFIX,
    WATERMARKS_DATASET,
    DatasetConfigError,
    plan_dataset,
)
from nexpo_workflows.sync.erasure import EraseCopiesInput, EraseCopiesResult, erase_copies
from nexpo_workflows.sync.models import (
    BatchInput,
    CaptureMode,
    CaptureStart,
    ChangeBatch,
    DetectChangesInput,
    LoadWatermarkInput,
    OpenCaptureInput,
    PlanSyncInput,
    PositionKind,
    RecordPositionInput,
    SyncBatchInput,
    SyncPlan,
    TargetMismatch,
    TargetWrite,
    ValidationOutcome,
    VerifyInput,
    VerifyOutcome,
    Watermark,
)
from nexpo_workflows.sync.reading import (
    BatchReader,
    Encodings,
    PreparedBatch,
    WorkAhead,
    refusal,
)
from nexpo_workflows.sync.source import SourceConfigError, SourceRow

PROVIDER_UNAVAILABLE = "ProviderUnavailable"
# Validated batches a worker keeps for the writes that follow (one per dataset in flight).
VALIDATED_BATCHES_KEPT = 4
# Keys per checksum that verification compares first; a set that differs is halved until
# ``READ_BACK_KEYS`` or fewer, whose versions are then read back and compared one by one.
CHECKSUM_KEYS = 1000
READ_BACK_KEYS = 125
# Batches smaller than this are read ahead in the worker's own process: their checks are too
# short for a second process (about 0.5 s of CPU and 100 MiB to start) to pay for itself.
READ_AHEAD_PROCESS_MIN_BATCH = 1000


@dataclass(slots=True)
class SnapshotState:
    """Log capture's copy of the table: the log position it is taken at, the last key copied
    and verified, the largest key when the copy began, and whether it is complete (then the
    log is streamed)."""

    version: int
    after: str = ""
    # Read after the log's start: a row with a larger key was inserted since, and is in the
    # log, so the copy ends here even while the table grows. None: the table was empty.
    until: str | None = None
    done: bool = False


def content_version(record: DatasetRecord) -> int:
    """A number that changes with the record's fields: what an audit of a log-captured dataset
    compares, since target rows carry the log positions of their changes."""
    return int.from_bytes(hashlib.sha256(to_json(record.data)).digest()[:6], "big")


def _spelled(checksum: KeysChecksum) -> str:
    return f"{checksum.count}:{checksum.total:x}"


def _unavailable(error: ProviderUnavailableError) -> ApplicationError:
    return ApplicationError(str(error), type=PROVIDER_UNAVAILABLE)


class SyncActivities:
    def __init__(self, services: Services) -> None:
        self._settings = services.settings
        self._providers = services.providers
        self._reader = BatchReader(
            services.settings, services.providers, fetch_ahead=services.read_ahead is None
        )
        self._read_ahead = services.read_ahead
        self._logs: dict[str, ChangeLog] = {}
        # The last batches validated here, as targets store them: the writes of a batch,
        # usually on this worker right after, then neither read nor validate it again. A worker
        # that did not validate the batch reads it itself. Bounded: memory stays flat.
        self._validated: OrderedDict[tuple[str, ChangeBatch], PreparedBatch] = OrderedDict()
        # Per dataset, the copy's next batch being read and checked ahead, while the targets
        # write and verify the current one.
        self._ahead: WorkAhead[tuple[ChangeBatch, PreparedBatch]] = WorkAhead()

    def _log(self, plan: SyncPlan) -> ChangeLog:
        if plan.dataset not in self._logs:
            provider = self._reader.provider(plan.source).sql_source()
            assert provider is not None  # _source refused it first
            dataset = self._reader.dataset(plan.dataset)
            self._logs[plan.dataset] = change_log(provider, dataset.source, plan.dataset)
        return self._logs[plan.dataset]

    async def _rows(self, plan: SyncPlan, batch: ChangeBatch) -> tuple[list[SourceRow], list[str]]:
        """The batch's rows, and (log capture) the keys it changed that are gone."""
        async with heartbeating("reading the source"):
            source = self._reader.source(plan)
            if batch.kind is not PositionKind.LOG:
                return await source.rows(batch.after, batch.last), []
            assert batch.last is not None
            changes = (await self._log(plan).read(upto=batch.last.version)).changes
            found = await source.rows_by_key({key: at for key, (at, _) in changes.items()})
            # Where the table no longer agrees with a key's last change in the batch (a row
            # deleted since, or inserted again), a later change of the key follows in the log:
            # that key is left to its batch, so each batch's outcome stays what its log says.
            rows = [row for row in found if not changes[row.id][1]]
            present = {row.id for row in found}
            return rows, [
                key for key, (_, removed) in changes.items() if removed and key not in present
            ]

    async def _prepare(self, plan: SyncPlan, batch: ChangeBatch) -> PreparedBatch:
        """The batch as targets receive it: its valid rows, its invalid rows as quarantined,
        and the keys gone from the source."""
        try:
            rows, gone = await self._rows(plan, batch)
        except (SourceConfigError, CaptureRefusedError) as error:
            raise refusal(error) from error
        except ProviderUnavailableError as error:
            raise _unavailable(error) from error
        return self._keep(
            plan, batch, self._reader.checked(plan, rows, gone, self._encodings(plan))
        )

    def _keep(self, plan: SyncPlan, batch: ChangeBatch, prepared: PreparedBatch) -> PreparedBatch:
        # One run of a dataset at a time, and its batches one after the other: another batch
        # of the dataset kept here is done with (memory holds one batch per dataset, plus the
        # one read ahead).
        for key in [key for key in self._validated if key[0] == plan.dataset and key[1] != batch]:
            del self._validated[key]
        self._validated[plan.dataset, batch] = prepared
        while len(self._validated) > VALIDATED_BATCHES_KEPT:
            self._validated.popitem(last=False)
        return prepared

    async def _prepared(self, plan: SyncPlan, batch: ChangeBatch, *, fresh: bool) -> PreparedBatch:
        """The batch as this worker last prepared it, unless ``fresh`` (or it did not)."""
        kept = None if fresh else self._validated.get((plan.dataset, batch))
        return kept if kept is not None else await self._prepare(plan, batch)

    async def _load_state(self, plan: SyncPlan) -> tuple[Watermark | None, SnapshotState | None]:
        """The dataset's stored position: a polling watermark, or log capture's copy state."""
        try:
            stored = await self._reader.provider(plan.source).get_records(
                WATERMARKS_DATASET, [plan.dataset]
            )
        except ProviderUnavailableError as error:
            raise _unavailable(error) from error
        if not stored:
            return None, None
        record = stored[0]
        if record.data.get("capture") == CaptureMode.LOG:
            data = record.data
            state = SnapshotState(record.version, data["after"], data["until"], data["done"])
            return None, state
        return Watermark(version=record.version, id=record.data["id"]), None

    async def _save_state(self, plan: SyncPlan, record: DatasetRecord) -> None:
        try:
            await self._reader.provider(plan.source).upsert_records(WATERMARKS_DATASET, [record])
        except ProviderUnavailableError as error:
            raise _unavailable(error) from error

    async def _save_snapshot(self, plan: SyncPlan, state: SnapshotState) -> None:
        await self._save_state(
            plan,
            DatasetRecord(
                id=plan.dataset,
                version=state.version,
                data={
                    "capture": CaptureMode.LOG,
                    "after": state.after,
                    "until": state.until,
                    "done": state.done,
                },
            ),
        )

    @activity.defn(name="plan_sync")
    async def plan_sync(self, input: PlanSyncInput) -> SyncPlan:
        try:
            plan = plan_dataset(self._settings, list(self._providers), input.dataset)
        except DatasetConfigError as error:
            raise refusal(error) from error
        self._reader.validator(plan.dataset)  # refuses a schema this worker cannot import
        return plan

    @activity.defn(name="load_watermark")
    async def load_watermark(self, input: LoadWatermarkInput) -> Watermark | None:
        """The last verified watermark of the dataset, kept in the source's records."""
        watermark, _ = await self._load_state(input.plan)
        return watermark

    @activity.defn(name="open_capture")
    async def open_capture(self, input: OpenCaptureInput) -> CaptureStart:
        """Create the dataset's change log if it is missing; where the run starts (in the copy
        of the table: a new log, a full resync, a copy not finished; or in the log) and the
        position it ends at."""
        plan, log = input.plan, self._log(input.plan)
        try:
            created = await log.ensure()
            _, state = await self._load_state(plan)
            if created is not None or state is None or input.full:
                # Every change after the log's start is streamed after the copy, so the copy
                # may read rows at any later moment: what it misses or reads early, the log
                # brings.
                start = created if created is not None else await log.position()
                last_key = await self._reader.source(plan).last_key()
                state = SnapshotState(version=start, until=last_key, done=last_key is None)
                await self._save_snapshot(plan, state)
            until = await log.current()
        except (SourceConfigError, CaptureRefusedError) as error:
            raise refusal(error) from error
        except ProviderUnavailableError as error:
            raise _unavailable(error) from error
        if state.done:
            return CaptureStart(after=None, until=until)
        after = Watermark(kind=PositionKind.SNAPSHOT, version=state.version, id=state.after)
        return CaptureStart(after=after, until=until)

    @activity.defn(name="detect_changes")
    async def detect_changes(self, input: DetectChangesInput) -> ChangeBatch:
        """Record ``after`` as verified (the watermark, the copy's last key, or the log
        confirmed up to it), then find the next batch after it."""
        try:
            if input.plan.capture is CaptureMode.LOG:
                return await self._detect_in_log(input)
            return await self._detect_by_polling(input)
        except (SourceConfigError, CaptureRefusedError) as error:
            raise refusal(error) from error
        except ProviderUnavailableError as error:
            raise _unavailable(error) from error

    async def _detect_by_polling(self, input: DetectChangesInput) -> ChangeBatch:
        plan, after = input.plan, input.after
        if input.record and after is not None:
            await self._save_state(
                plan, DatasetRecord(id=plan.dataset, version=after.version, data={"id": after.id})
            )
        batch = await self._reader.source(plan).next_batch(after, plan.batch_size)
        if input.record:
            if batch.count == 0:
                return _with_lag(plan, batch, 0.0)
            if after is not None:
                return _with_lag(plan, batch, max(time.time() - after.version / 1_000_000, 0.0))
        return batch

    async def _detect_in_log(self, input: DetectChangesInput) -> ChangeBatch:
        plan, after, log = input.plan, input.after, self._log(input.plan)
        if not input.record:
            # An audit: every key range of the table, compared by content; the log untouched.
            start = after or Watermark(kind=PositionKind.SNAPSHOT, version=await log.position())
            return await self._reader.source(plan).next_batch(start, plan.batch_size)
        if after is not None and after.kind is PositionKind.LOG:
            await log.confirm(after.version)
        if after is not None and after.kind is PositionKind.SNAPSHOT:
            _, state = await self._load_state(plan)
            assert state is not None  # open_capture saved it
            state.after = after.id
            batch, prepared = await self._copy_batch(plan, after, state.until)
            state.done = batch.count == 0
            await self._save_snapshot(plan, state)
            if batch.count:
                # Read and checked with the batch: quarantined here, no validation step.
                checked = await self._quarantined(plan, prepared)
                return batch.model_copy(update={"checked": checked})
        segment = await log.read(limit=plan.batch_size, upto=input.until)
        # Transactions that changed no row of the dataset: confirmed at once, or the log
        # would be held for them.
        while segment.end is not None and not segment.changes:
            await log.confirm(segment.end)
            segment = await log.read(limit=plan.batch_size, upto=input.until)
        oldest = segment.oldest_commit
        lag = None
        if oldest is not None:
            lag = max((datetime.now(UTC) - oldest).total_seconds(), 0.0)
        elif segment.end is None:
            lag = 0.0  # caught up; a log without commit times leaves it unknown
        start = Watermark(kind=PositionKind.LOG, version=segment.start)
        if segment.end is None:
            return _with_lag(plan, ChangeBatch(after=start, last=None, count=0), lag)
        batch = ChangeBatch(
            after=start,
            last=Watermark(kind=PositionKind.LOG, version=segment.end),
            count=len(segment.changes),
        )
        return _with_lag(plan, batch, lag)

    @activity.defn(name="record_position")
    async def record_position(self, input: RecordPositionInput) -> None:
        """Record ``after`` as verified, as ``detect_changes`` does before it reads on: the
        watermark, the copy's last key, or the log confirmed up to it (idempotent: a log never
        moves backwards, a stored position is overwritten with the same one)."""
        plan, after = input.plan, input.after
        try:
            if after.kind is PositionKind.LOG:
                await self._log(plan).confirm(after.version)
            elif after.kind is PositionKind.SNAPSHOT:
                _, state = await self._load_state(plan)
                if state is not None and state.version == after.version:
                    state.after = after.id
                    await self._save_snapshot(plan, state)
            else:
                await self._save_state(
                    plan,
                    DatasetRecord(id=plan.dataset, version=after.version, data={"id": after.id}),
                )
        except (SourceConfigError, CaptureRefusedError) as error:
            raise refusal(error) from error
        except ProviderUnavailableError as error:
            raise _unavailable(error) from error

    async def _copy_batch(
        self, plan: SyncPlan, after: Watermark, until: str | None
    ) -> tuple[ChangeBatch, PreparedBatch]:
        """The copy's next batch after ``after``, read with its rows in one query and checked
        (kept for the writes); the batch after it is then read and checked in the background,
        so that work overlaps the writes and verification of this one."""
        async with heartbeating("reading the source"):
            found = await self._ahead.take(plan, after, until)
            if found is None:  # none read ahead, or it failed: read here, where errors count
                found = await self._reader.copy_batch(plan, after, until, self._encodings(plan))
        batch, prepared = found
        if batch.count:
            self._keep(plan, batch, prepared)
        if batch.count == plan.batch_size and batch.last is not None:
            self._ahead.start(
                plan, batch.last, until, self._read_ahead_batch(plan, batch.last, until)
            )
        return batch, prepared

    async def _read_ahead_batch(
        self, plan: SyncPlan, after: Watermark, until: str | None
    ) -> tuple[ChangeBatch, PreparedBatch]:
        """The copy's batch after ``after`` read and checked in the read-ahead process, or in
        this one while that process is starting (or where it is not wanted)."""
        encodings = self._encodings(plan)
        reading = None
        if self._read_ahead is not None and plan.batch_size >= READ_AHEAD_PROCESS_MIN_BATCH:
            reading = self._read_ahead.read(plan, after, until, encodings)
        if reading is None:
            return await self._reader.copy_batch(plan, after, until, encodings)
        return await reading

    def _encodings(self, plan: SyncPlan) -> Encodings:
        sql = [self._reader.provider(target).sql_source() is not None for target in plan.targets]
        return Encodings(json=any(sql), values=not all(sql))

    @activity.defn(name="validate_data")
    async def validate_data(self, input: BatchInput) -> ValidationOutcome:
        """Check each row against the dataset's schema; the invalid ones go to quarantine
        with their reason (counted, never written to a target). A key gone from the source
        leaves the quarantine too: nothing of an erased row stays behind."""
        prepared = await self._prepare(input.plan, input.batch)
        return await self._quarantined(input.plan, prepared)

    async def _quarantined(self, plan: SyncPlan, prepared: PreparedBatch) -> ValidationOutcome:
        """Quarantine the batch's invalid rows (and release the keys gone from the source);
        the batch's validation outcome."""
        source = self._reader.provider(plan.source)
        quarantine = QUARANTINE_PREFIX + plan.dataset
        try:
            if prepared.quarantine:
                await source.upsert_records(quarantine, prepared.quarantine)
            if prepared.gone:
                await source.delete_records(quarantine, prepared.gone)
        except ProviderUnavailableError as error:
            raise _unavailable(error) from error
        return ValidationOutcome(
            valid=len(prepared.records),
            quarantined=len(prepared.quarantine),
            invalid_ids=[record.id for record in prepared.quarantine],
            deleted=len(prepared.gone),
        )

    @activity.defn(name="sync_to_providers")
    async def sync_to_providers(self, input: SyncBatchInput) -> TargetWrite:
        """Write the batch to one target: one bulk upsert of its valid rows, one delete of the
        keys gone from the source (both idempotent)."""
        plan, batch = input.plan, input.batch
        # A repair reads the source again (what differs may be a row that arrived late), except
        # in a copy of the table, which repairs what it wrote.
        repair = input.only_ids is not None and batch.kind is not PositionKind.SNAPSHOT
        prepared = await self._prepared(plan, batch, fresh=repair)
        only = None if input.only_ids is None else set(input.only_ids)
        records = _selected(prepared.records, set(input.skip_ids), only)
        gone = [key for key in prepared.gone if only is None or key in only]
        target = self._reader.provider(input.target)
        try:
            async with heartbeating(f"writing {len(records)} rows"):
                await target.upsert_batch(plan.dataset, records)
                if gone:
                    await target.delete_records(plan.dataset, gone)
        except ProviderUnavailableError as error:
            raise _unavailable(error) from error
        return TargetWrite(target=input.target, written=len(records) + len(gone))

    async def _expected(
        self, plan: SyncPlan, batch: ChangeBatch, skip: set[str], *, by_content: bool
    ) -> tuple[dict[str, tuple[int, bool]], list[str], dict[str, int] | None]:
        """What every target must hold for the batch now: (version, tombstone) by id, the
        keys it must not hold, and (when known) the ``row_hash`` of each wanted id."""
        if batch.kind is PositionKind.VERSIONS:
            versions = await self._reader.source(plan).versions(batch.after, batch.last)
            wanted = {v.id: (v.version, v.deleted) for v in versions if v.id not in skip}
            return wanted, [], None
        # The rows this worker validated and wrote (a worker that did not reads the batch
        # again): a row changed since is in a later batch of the log, and a row inserted into
        # a copied range since arrives with the log. An audit compares the fields of the
        # source as it is now.
        prepared = await self._prepared(plan, batch, fresh=by_content)
        records = _selected(prepared.records, skip, None)
        if by_content:
            wanted = {r.id: (content_version(r), r.deleted) for r in records.records()}
            return wanted, prepared.gone, None
        states = zip(records.versions, records.deleted, strict=True)
        hashes = dict(zip(records.ids, records.hashes(), strict=True))
        return dict(zip(records.ids, states, strict=True)), prepared.gone, hashes

    async def _held(
        self, plan: SyncPlan, target: str, ids: list[str], *, by_content: bool
    ) -> list[RecordVersion]:
        provider = self._reader.provider(target)
        if not by_content:
            return await provider.record_versions(plan.dataset, ids)
        return [
            RecordVersion(id=r.id, version=content_version(r), deleted=r.deleted)
            for r in await provider.get_records(plan.dataset, ids)
        ]

    async def _differing(
        self,
        plan: SyncPlan,
        target: str,
        wanted: dict[str, tuple[int, bool]],
        key_sets: list[list[str]],
        hashes: dict[str, int] | None = None,
    ) -> tuple[list[str], KeysChecksum]:
        """The keys among ``key_sets`` whose (version, tombstone) on ``target`` is not the
        wanted one (absent from ``wanted``: must not be there), and what the target holds of
        them all. Each set is compared by its checksum, computed in the database; one that
        differs is halved, and a small one read back."""
        provider = self._reader.provider(target)
        found = await provider.checksums(plan.dataset, key_sets)
        held = KeysChecksum(sum(c.count for c in found), sum(c.total for c in found))
        pending = [
            keys
            for keys, checksum in zip(key_sets, found, strict=True)
            if checksum != _checksum_of(keys, wanted, hashes)
        ]
        differing: list[str] = []
        while pending:
            small = [key for keys in pending if len(keys) <= READ_BACK_KEYS for key in keys]
            if small:
                versions = await provider.record_versions(plan.dataset, small)
                stored = {v.id: (v.version, v.deleted) for v in versions}
                differing += [key for key in small if stored.get(key) != wanted.get(key)]
            halves = [
                half
                for keys in pending
                if len(keys) > READ_BACK_KEYS
                for half in (keys[: len(keys) // 2], keys[len(keys) // 2 :])
            ]
            found = await provider.checksums(plan.dataset, halves) if halves else []
            pending = [
                keys
                for keys, checksum in zip(halves, found, strict=True)
                if checksum != _checksum_of(keys, wanted, hashes)
            ]
        return differing, held

    async def _by_content(
        self, plan: SyncPlan, wanted: dict[str, tuple[int, bool]], gone: list[str]
    ) -> list[TargetMismatch]:
        """An audit: every row's fields read back from every target and compared."""
        ids = [*wanted, *gone]
        async with heartbeating("reading the targets"):
            found = await asyncio.gather(
                *(self._held(plan, target, ids, by_content=True) for target in plan.targets)
            )
        mismatches = []
        for target, versions in zip(plan.targets, found, strict=True):
            held = {v.id: (v.version, v.deleted) for v in versions}
            differing = [i for i, v in wanted.items() if held.get(i) != v]
            differing += [key for key in gone if key in held]
            if differing:
                mismatches.append(
                    TargetMismatch(
                        target=target,
                        source_count=len(wanted),
                        target_count=len(versions),
                        source_checksum=_spelled(_checksum_of(list(wanted), wanted)),
                        target_checksum=_spelled(keys_checksum(versions)),
                        ids=differing,
                    )
                )
        return mismatches

    @activity.defn(name="verify_sync")
    async def verify_sync(self, input: VerifyInput) -> VerifyOutcome:
        """Compare the batch between the source and every target: per set of keys, the count
        and the sum of a hash of (id, version, tombstone), computed by each database and, for
        the source, from the batch in memory; where they differ, the ids that do (a row
        missing or different, a key that should be gone)."""
        plan, batch = input.plan, input.batch
        try:
            wanted, gone, hashes = await self._expected(
                plan, batch, set(input.skip_ids), by_content=input.by_content
            )
            if input.by_content:
                return VerifyOutcome(mismatches=await self._by_content(plan, wanted, gone))
            key_sets = [list(keys) for keys in chunked(list(wanted), CHECKSUM_KEYS)]
            key_sets += [list(keys) for keys in chunked(gone, CHECKSUM_KEYS)]
            async with heartbeating("comparing checksums"):
                found = await asyncio.gather(
                    *(
                        self._differing(plan, target, wanted, key_sets, hashes)
                        for target in plan.targets
                    )
                )
        except SourceConfigError as error:
            raise refusal(error) from error
        except ProviderUnavailableError as error:
            raise _unavailable(error) from error
        mismatches = [
            TargetMismatch(
                target=target,
                source_count=len(wanted),
                target_count=held.count,
                source_checksum=_spelled(_checksum_of(list(wanted), wanted, hashes)),
                target_checksum=_spelled(held),
                ids=differing,
            )
            for target, (differing, held) in zip(plan.targets, found, strict=True)
            if differing
        ]
        return VerifyOutcome(mismatches=mismatches)

    @activity.defn(name="erase_synced_copies")
    async def erase_synced_copies(self, input: EraseCopiesInput) -> EraseCopiesResult:
        """Remove a source row's copies from every sync target and quarantine."""
        try:
            return await erase_copies(self._settings, self._providers, input)
        except ProviderUnavailableError as error:
            raise _unavailable(error) from error

    def all(self) -> list[Any]:
        return [
            self.plan_sync,
            self.load_watermark,
            self.open_capture,
            self.detect_changes,
            self.record_position,
            self.validate_data,
            self.sync_to_providers,
            self.verify_sync,
            self.erase_synced_copies,
        ]


def _selected(records: RecordBatch, skip: set[str], only: set[str] | None) -> RecordBatch:
    """The records whose id is not in ``skip`` and (unless None) is in ``only``."""
    if not skip and only is None:
        return records
    keep = [
        n
        for n, record_id in enumerate(records.ids)
        if record_id not in skip and (only is None or record_id in only)
    ]
    hashes, encoded, data = records.hashes(), records.computed_json, records.data
    return RecordBatch(
        ids=[records.ids[n] for n in keep],
        versions=[records.versions[n] for n in keep],
        deleted=[records.deleted[n] for n in keep],
        # Left to be parsed from the JSON text, where the batch came without its values.
        data=[data[n] for n in keep] if len(data) == len(records) else [],
        computed_hashes=[hashes[n] for n in keep],
        computed_json=None if encoded is None else [encoded[n] for n in keep],
    )


def _checksum_of(
    keys: list[str], wanted: dict[str, tuple[int, bool]], hashes: dict[str, int] | None = None
) -> KeysChecksum:
    """What a target must hold of ``keys``: the wanted ones, none of the others (``hashes``:
    the ``row_hash`` of the wanted ones, when already computed)."""
    if hashes is not None:
        known = [hashes[key] for key in keys if key in wanted]
        return KeysChecksum(len(known), sum(known))
    present = [(key, wanted[key]) for key in keys if key in wanted]
    return KeysChecksum(
        len(present), sum(row_hash(key, version, deleted) for key, (version, deleted) in present)
    )


def _with_lag(plan: SyncPlan, batch: ChangeBatch, lag: float | None) -> ChangeBatch:
    """The batch with the lag found with it, also set on the ``sync_lag_seconds`` gauge."""
    _record_lag(plan, lag)
    return batch if lag is None else batch.model_copy(update={"lag_seconds": round(lag, 3)})


def _record_lag(plan: SyncPlan, lag: float | None) -> None:
    """How far the targets trail the source: 0 when nothing is left to sync, else the age of
    the oldest change not yet verified (None: unknown, a first run)."""
    if lag is None:
        return
    gauge = activity.metric_meter().create_gauge_float(
        "sync_lag_seconds", "How far each target's copy of a dataset trails its source", "s"
    )
    for target in plan.targets:
        gauge.set(lag, {"dataset": plan.dataset, "provider": target})
