"""Configuration, inputs, outputs and progress of cross-database sync."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator

DATASET_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"


class CaptureMode(StrEnum):
    # The source's log (PostgreSQL logical decoding, a trigger-fed change table in SQLite):
    # every insert, update and delete, in commit order.
    LOG = "log"
    # A keyset on (``updated_at_column``, key): misses hard deletes and rows whose transaction
    # commits after a newer row was synced. For sources that offer no log.
    POLL = "poll"


class SyncSource(BaseModel):
    """A table of a SQL provider that a dataset is read from: its change log, or a keyset on
    (``updated_at_column``, ``key_column``) when ``capture`` is "poll"."""

    provider: str = "postgres"
    table: str = Field(min_length=1, max_length=128)
    key_column: str = "id"
    capture: CaptureMode = CaptureMode.LOG
    # Polling only: a timestamp (its microseconds since the epoch become the version) or an
    # integer version.
    updated_at_column: str = "updated_at"
    # A boolean soft-delete flag: a true row travels as a tombstone. None: rows are never deleted.
    deleted_column: str | None = "deleted"
    # A JSON column holding the row's fields; None: every other column is a field.
    data_column: str | None = None
    # Only rows whose columns equal these values belong to the dataset.
    where: dict[str, str] = Field(default_factory=dict)


class DatasetConfig(BaseModel):
    """One dataset kept consistent from its source to its targets."""

    name: str = Field(pattern=DATASET_NAME_PATTERN)
    source: SyncSource
    # None: every enabled provider except the source's.
    targets: list[str] | None = None
    # "package.module:Model", a pydantic model a row's fields must satisfy; None: any fields.
    row_schema: str | None = Field(default=None, alias="schema")
    batch_size: int | None = Field(default=None, gt=0, le=100_000)
    # The fields targets receive (None: every field); a secret stays where the source keeps it.
    columns: list[str] | None = None
    # Fields targets receive as "sha256:<hex>" of their value: joinable, not readable.
    masked: list[str] = Field(default_factory=list)

    model_config = {"populate_by_name": True}


class PositionKind(StrEnum):
    # Polling: (version, key) of the last row.
    VERSIONS = "versions"
    # Log capture's copy of the table: the last key copied; version is the log position the
    # copy is taken at (the version its rows get in the targets).
    SNAPSHOT = "snapshot"
    # Log capture's stream: version is the log position (PostgreSQL LSN, change sequence).
    LOG = "log"


class Watermark(BaseModel):
    """Where the verified part of a dataset ends: the next batch reads what comes after."""

    model_config = ConfigDict(frozen=True)

    version: int
    id: str = ""
    kind: PositionKind = PositionKind.VERSIONS


class SyncPlan(BaseModel):
    """The dataset as the worker's configuration resolves it, recorded in history."""

    dataset: str
    source: str
    targets: list[str]
    capture: CaptureMode = CaptureMode.POLL
    batch_size: int
    repair_attempts: int
    batches_per_run: int
    step_deadline_seconds: float
    # A follow run: how long it waits when the source has nothing new before it looks again.
    follow_poll_seconds: float = 0.5


class SyncInput(BaseModel):
    dataset: str = Field(pattern=DATASET_NAME_PATTERN)
    # Ignore the stored watermark and sync everything again (a full resync).
    full: bool = False
    # Write nothing first: verify every range from the start and repair what differs (a
    # target edited behind the sync's back); the stored watermark stays where it is.
    audit: bool = False
    # Never end on its own: tail the change stream, applying micro-batches as they come, until
    # stopped (the ``stop`` signal: `sync stop`, POST /api/sync/{dataset}/stop).
    follow: bool = False
    # Set by the workflow itself when it continues as new.
    carry: SyncProgress | None = None

    @model_validator(mode="after")
    def _one_mode(self) -> SyncInput:
        if self.follow and self.audit:
            raise ValueError("follow and audit exclude each other: an audit ends by itself")
        return self


class PlanSyncInput(BaseModel):
    dataset: str


class LoadWatermarkInput(BaseModel):
    plan: SyncPlan


class SaveWatermarkInput(BaseModel):
    plan: SyncPlan
    watermark: Watermark


class RecordPositionInput(BaseModel):
    """Record ``after`` as verified (what ``detect_changes`` does first) without reading on:
    the end of a stopped run."""

    plan: SyncPlan
    after: Watermark


class OpenCaptureInput(BaseModel):
    plan: SyncPlan
    # Copy the whole table again before streaming on (log capture's full resync).
    full: bool = False


class CaptureStart(BaseModel):
    """Where a log-captured run starts (in the copy of the table; None: in the log) and the log
    position it ends at: the source's latest change when it started, so a run under steady
    writes ends, and the next one takes what came since."""

    after: Watermark | None
    until: int


class DetectChangesInput(BaseModel):
    plan: SyncPlan
    after: Watermark | None
    # Log capture: read no change past this position.
    until: int | None = None
    # Store ``after`` as the dataset's verified watermark (or confirm the log up to it) first;
    # not in an audit.
    record: bool = True


class ValidationOutcome(BaseModel):
    valid: int
    quarantined: int
    # Rows gone from the source (log capture): deleted from every target.
    deleted: int = 0
    # Never written to targets; the quarantine holds each with its reason.
    invalid_ids: list[str]


class ChangeBatch(BaseModel):
    """The next rows after ``after``, up to ``last`` inclusive (bounds only: rows stay out of
    history, and the steps read the range, or the log up to ``last``, from the source)."""

    model_config = ConfigDict(frozen=True)

    after: Watermark | None
    last: Watermark | None
    count: int
    # Set by detection when it has already read and checked the batch (log capture's copy of
    # the table) and quarantined its invalid rows: the workflow skips the validation step
    # and passes the batch on without it.
    checked: ValidationOutcome | None = None
    # How far the targets trail the source when it was found: the age of the oldest change not
    # yet verified, 0 when nothing is pending (None: unknown).
    lag_seconds: float | None = None

    @property
    def kind(self) -> PositionKind:
        return (self.last or self.after or Watermark(version=0)).kind


class BatchInput(BaseModel):
    plan: SyncPlan
    batch: ChangeBatch


class SyncBatchInput(BaseModel):
    plan: SyncPlan
    batch: ChangeBatch
    target: str
    skip_ids: list[str] = Field(default_factory=list)
    # A repair: write only these ids (None: the whole range).
    only_ids: list[str] | None = None


class TargetWrite(BaseModel):
    target: str
    written: int


class VerifyInput(BaseModel):
    plan: SyncPlan
    batch: ChangeBatch
    skip_ids: list[str] = Field(default_factory=list)
    # Compare the rows' fields, not their versions (an audit of a log-captured dataset, whose
    # target rows carry the log positions of their last changes).
    by_content: bool = False


class TargetMismatch(BaseModel):
    target: str
    source_count: int
    target_count: int
    source_checksum: str
    target_checksum: str
    # Ids whose version or tombstone differs, or that are missing on the target.
    ids: list[str]


class VerifyOutcome(BaseModel):
    mismatches: list[TargetMismatch]


class SyncPhase(StrEnum):
    PLANNING = "planning"
    DETECTING = "detecting"
    VALIDATING = "validating"
    SYNCING = "syncing"
    VERIFYING = "verifying"
    REPAIRING = "repairing"
    # A follow run that has caught up, waiting to look again.
    WAITING = "waiting"
    DONE = "done"
    FAILED = "failed"


class SyncProgress(BaseModel):
    dataset: str = ""
    phase: SyncPhase = SyncPhase.PLANNING
    rows_seen: int = 0
    rows_synced: int = 0
    rows_quarantined: int = 0
    rows_repaired: int = 0
    rows_deleted: int = 0
    batches: int = 0
    watermark: Watermark | None = None
    # Log capture: the position this run ends at (see CaptureStart).
    until: int | None = None
    runs: int = 1
    # A follow run: whether it tails the source, and how far the targets trail it at the last
    # look (seconds; see ChangeBatch.lag_seconds).
    following: bool = False
    lag_seconds: float | None = None


class SyncStatus(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    # A scheduled start that found a run of the dataset going on.
    SKIPPED = "skipped"
    # Stopped on request (the ``stop`` signal), after its current batch: a follow run's end.
    STOPPED = "stopped"


class SyncResult(BaseModel):
    dataset: str
    status: SyncStatus
    progress: SyncProgress
    # Rows that still differed after the bounded repair, by target.
    unrepaired: list[TargetMismatch] = Field(default_factory=list)
