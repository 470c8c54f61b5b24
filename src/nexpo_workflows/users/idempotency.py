"""Idempotency keys bound to their request, as Stripe's API binds them.

A key is stored with a fingerprint of the request it came with (``request_fingerprint``). The
same key with the same request gets the first request's outcome again; with another request it
is refused (``IdempotencyKeyReusedError``, 422). In-process (``ENABLE_TEMPORAL=false``) the
saga of a new key writes a fresh user id, so its compensation can only delete what it wrote.

In-process, keys are records of the dataset ``idempotency_keys`` in the first database of the
saga's plan (shared by every gateway on these databases), under a SHA-256 of the key, never the
key. A record says whose request holds the key (its fingerprint), the user id its saga writes,
and, once the saga completed, its result. A saga that failed releases its key, so a retry runs a
new saga with a new id. Two requests with one key that arrive at the same moment may both pass
the claim (the store has no insert-if-absent); both sagas then write different ids under the
same email, one fails as a duplicate, and each compensation deletes only its own id.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel

from nexpo_workflows.providers import DatabaseProvider, DatasetRecord
from nexpo_workflows.users.models import SagaResult

DATASET = "idempotency_keys"


class IdempotencyKeyError(Exception):
    """The key cannot serve this request; the message says why."""


class IdempotencyKeyReusedError(IdempotencyKeyError):
    """The key was used with another request (another email, name, profile or password):
    the caller's mistake, answered 422 (exit 2 in the CLI)."""


class IdempotencyKeyConflictError(IdempotencyKeyError):
    """The key's request is still being carried out, or the user it created has been deleted
    since: answered 409."""


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def request_fingerprint(email: str, name: str, profile: dict[str, Any] | None) -> str:
    """SHA-256 of the request's canonical JSON, without the password: a fast hash of a
    password would be a way to guess it. The password is checked against the stored user's
    Argon2 hash when an outcome is replayed."""
    canonical = json.dumps(
        {"email": email.lower(), "name": name, "profile": profile},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class KeyState(BaseModel):
    """What a key's record holds."""

    fingerprint: str
    user_id: str
    started_at: datetime
    result: SagaResult | None = None


@dataclass
class Claim:
    """The key is this request's: its saga writes ``user_id``; ``result`` is the outcome to
    replay when the key's saga already completed."""

    digest: str
    state: KeyState


@dataclass
class IdempotencyKeys:
    store: DatabaseProvider
    # After this long a claim whose saga never finished is abandoned (its process died): a
    # new request may take the key over.
    abandoned_after: timedelta

    async def _read(self, digest: str) -> KeyState | None:
        found = await self.store.get_records(DATASET, [digest])
        live = [record for record in found if not record.deleted]
        return KeyState.model_validate(live[0].data) if live else None

    async def _write(self, digest: str, state: KeyState) -> None:
        now = datetime.now(UTC)
        version = int(now.timestamp() * 1_000_000)
        await self.store.upsert_records(
            DATASET,
            [DatasetRecord(id=digest, version=version, data=state.model_dump(mode="json"))],
        )

    async def claim(self, key: str, fingerprint: str) -> Claim:
        """Take ``key`` for this request, or get the outcome of the key's earlier saga."""
        digest = key_digest(key)
        now = datetime.now(UTC)
        held = await self._read(digest)
        if held is not None:
            if held.fingerprint != fingerprint:
                raise IdempotencyKeyReusedError(
                    "this Idempotency-Key was used with another request "
                    "(email, name or profile differ); use a new key"
                )
            if held.result is not None:
                return Claim(digest, held)
            if now - held.started_at < self.abandoned_after:
                raise IdempotencyKeyConflictError(
                    "a request with this Idempotency-Key is being carried out; retry later"
                )
        state = KeyState(fingerprint=fingerprint, user_id=str(uuid.uuid4()), started_at=now)
        await self._write(digest, state)
        # Read back: of two requests that claimed at once, the one whose claim was
        # overwritten backs off.
        stored = await self._read(digest)
        if stored is None or stored.user_id != state.user_id:
            raise IdempotencyKeyConflictError(
                "a request with this Idempotency-Key is being carried out; retry later"
            )
        return Claim(digest, state)

    async def complete(self, claim: Claim, result: SagaResult) -> None:
        await self._write(claim.digest, claim.state.model_copy(update={"result": result}))

    async def release(self, claim: Claim) -> None:
        """Free the key after a failed saga, unless another request has taken it since."""
        held = await self._read(claim.digest)
        if held is not None and held.user_id == claim.state.user_id:
            await self.store.delete_records(DATASET, [claim.digest])
