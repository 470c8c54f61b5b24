"""Replication activities: plan the copy, and copy one object to one store, streaming."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from nexpo_workflows.replication.models import (
    CopyObjectInput,
    ReplicaOutcome,
    ReplicaStatus,
    ReplicationPlan,
    ReplicationPlanInput,
)
from nexpo_workflows.services import Services
from nexpo_workflows.storage import ChecksumMismatchError, ObjectStore, StoreUnavailableError
from nexpo_workflows.storage.copying import copy_verified

UNKNOWN_STORE = "UnknownStore"
SOURCE_MISSING = "SourceMissing"


class ReplicationActivities:
    def __init__(self, services: Services) -> None:
        self._stores = services.stores

    def _store(self, name: str) -> ObjectStore:
        try:
            return self._stores[name]
        except KeyError:
            raise ApplicationError(
                f"store {name!r} is not enabled on this worker; enabled: {sorted(self._stores)}",
                type=UNKNOWN_STORE,
                non_retryable=True,
            ) from None

    @activity.defn(name="plan_replication")
    async def plan_replication(self, input: ReplicationPlanInput) -> ReplicationPlan:
        self._store(input.source)
        targets = input.targets
        if targets is None:
            targets = [name for name in self._stores if name != input.source]
        for target in targets:
            self._store(target)
        if input.source in targets:
            raise ApplicationError(
                "the source cannot be a target", type=UNKNOWN_STORE, non_retryable=True
            )
        return ReplicationPlan(source=input.source, targets=targets)

    @activity.defn(name="copy_object")
    async def copy_object(self, input: CopyObjectInput) -> ReplicaOutcome:
        """Stream the object from source to target and check the SHA-256 on both sides.

        Idempotent: a target that already holds the same content is left alone."""
        source, target = self._store(input.source), self._store(input.target)
        try:
            copied, stored = await copy_verified(
                source, target, input.key, through=_with_heartbeats
            )
        except KeyError:
            raise ApplicationError(
                f"{input.source} has no object {input.key!r}",
                type=SOURCE_MISSING,
                non_retryable=True,
            ) from None
        except (StoreUnavailableError, ChecksumMismatchError) as error:
            # Retryable: the store may come back, and a corrupted transfer is sent again.
            raise ApplicationError(str(error), type=type(error).__name__) from error
        return ReplicaOutcome(
            store=input.target,
            status=ReplicaStatus.COPIED if copied else ReplicaStatus.ALREADY_PRESENT,
            sha256=stored.sha256,
            size=stored.size,
        )

    def all(self) -> list[Callable[..., Any]]:
        return [self.plan_replication, self.copy_object]


async def _with_heartbeats(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Report progress per chunk, so a long copy is seen alive and can be cancelled."""
    copied = 0
    async for chunk in chunks:
        copied += len(chunk)
        activity.heartbeat(copied)
        yield chunk
