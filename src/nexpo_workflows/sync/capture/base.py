"""The change log a dataset is read from: one small interface, one module per engine.

A change log yields the keys a source table's transactions changed, in commit order, with the
log position of each key's last change; the rows themselves are read from the table by key.
Nothing is consumed by reading: a position is released only by ``confirm``, which the sync
calls once the changes up to it are written to every target and verified, so a worker killed
anywhere re-reads what was not confirmed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel

if TYPE_CHECKING:
    from nexpo_workflows.providers.sql import SQLProvider
    from nexpo_workflows.sync.models import SyncSource


class CaptureRefusedError(Exception):
    """The source cannot be captured as configured (a setting, a key, a privilege); the
    message says what to change. Retrying cannot help."""


class CaptureLostError(CaptureRefusedError):
    """The log no longer holds changes the sync has not confirmed (a slot invalidated by
    ``max_slot_wal_keep_size``, a truncated table): the dataset must be captured anew."""


@dataclass(slots=True)
class LogSegment:
    """The changes after the confirmed position, net per key: the last change of each key
    decides whether it is upserted (read from the table) or deleted."""

    # The confirmed position the segment starts after, and the position of its last change
    # (None: nothing pending).
    start: int
    end: int | None = None
    # Each changed key: the position of its last change and whether that change removed the
    # row from the dataset (a delete, an update that moved it out), in the order of those
    # changes.
    changes: dict[str, tuple[int, bool]] = field(default_factory=dict)
    # Every change read, before netting per key.
    count: int = 0
    # When the oldest transaction of the segment committed (lag in seconds).
    oldest_commit: datetime | None = None


class CaptureLag(BaseModel):
    """How far the confirmed position trails the source's log."""

    # Log bytes (PostgreSQL) or pending change rows (a change table) not yet confirmed.
    pending: int
    unit: str
    # Age of the oldest unconfirmed change; 0 when nothing is pending; None when unknown.
    seconds: float | None
    # PostgreSQL's wal_status of the slot (reserved, extended, unreserved, lost), if any.
    state: str | None = None


class ChangeLog(ABC):
    """One dataset's change log on its source."""

    def __init__(self, provider: SQLProvider, source: SyncSource, dataset: str) -> None:
        self._provider = provider
        self._source = source
        self._dataset = dataset

    @abstractmethod
    async def check(self) -> None:
        """Raise CaptureRefusedError, saying what to change, when the source cannot be
        captured as configured (a server setting, the table, its key). ``ensure`` runs the
        same checks; this lets a run be refused before it starts."""

    @abstractmethod
    async def ensure(self) -> int | None:
        """Check the source (``check``) and create the log if it is missing (idempotent).
        The position the new log starts from, if it was created by this call; None if it was
        already there."""

    @abstractmethod
    async def exists(self) -> bool:
        """Whether the log is there."""

    @abstractmethod
    async def position(self) -> int:
        """The confirmed position: everything up to it reached every target."""

    @abstractmethod
    async def current(self) -> int:
        """The position of the source's latest change (where a run that started now ends)."""

    @abstractmethod
    async def read(self, *, limit: int | None = None, upto: int | None = None) -> LogSegment:
        """The changes after the confirmed position, in commit order: whole transactions,
        stopping at the first transaction boundary after ``limit`` changes or at ``upto``."""

    @abstractmethod
    async def confirm(self, position: int) -> None:
        """Release the log up to ``position`` (idempotent; never moves backwards)."""

    @abstractmethod
    async def lag(self) -> CaptureLag:
        """How much is pending, without consuming it."""

    @abstractmethod
    async def drop(self) -> bool:
        """Remove the log (and what feeds it); True if there was one."""
