"""One object copied from one store to another, streaming, with its SHA-256 checked."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from nexpo_workflows.storage.base import ChecksumMismatchError, ObjectInfo, ObjectStore


def _unchanged(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    return chunks


async def copy_verified(
    source: ObjectStore,
    target: ObjectStore,
    key: str,
    *,
    through: Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]] = _unchanged,
) -> tuple[bool, ObjectInfo]:
    """Stream ``key`` from ``source`` to ``target`` (each chunk ``through`` the given filter,
    e.g. to report progress) and return whether it was copied and what the target holds.

    Idempotent: a target that already holds the same content is left alone. Raises KeyError
    when the source has no such object, ChecksumMismatchError when the target received other
    content than the source's, StoreUnavailableError when either store is down."""
    # Idempotent, and creates a missing bucket (a store restarted empty, say).
    await source.connect()
    await target.connect()
    wanted = await source.head(key)
    if wanted is None:
        raise KeyError(key)
    present = await target.head(key)
    if present is not None and wanted.sha256 and present.sha256 == wanted.sha256:
        return False, present
    copied = await target.put(key, through(source.get(key)), content_type=wanted.content_type)
    if wanted.sha256 and copied.sha256 != wanted.sha256:
        raise ChecksumMismatchError(
            f"{target.name} received content whose SHA-256 differs from {source.name}'s"
        )
    return True, copied
