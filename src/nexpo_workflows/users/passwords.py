"""Argon2id password hashing at the edges (the gateway and the CLI), bounded.

A hash costs tens of milliseconds of one core by design, so the edges hash on a pool of
threads, one per core by default: argon2-cffi releases the GIL while it hashes, so the threads
run in parallel and the event loop stays free (a process pool was measured no faster; see
README). Requests beyond the threads wait in a queue of bounded length; past it a request is
refused at once (PasswordHashingBusyError, a 503 with Retry-After at the gateway) rather than
waiting behind every other, which would let latency grow without limit.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pydantic import SecretStr

from nexpo_workflows.config import Settings

T = TypeVar("T")

# Requests that may wait for a hasher per hashing thread when PASSWORD_HASH_QUEUE_LIMIT is
# unset: at ~65 ms a hash (the default parameters), under 0.6 s of waiting at most.
QUEUE_PER_WORKER = 8


class PasswordHashingBusyError(Exception):
    """Every hasher is busy and the queue in front of them is full: try again later."""


@dataclass(frozen=True)
class PasswordCheck:
    matches: bool
    # The password hashed with the current parameters, when it matched a hash made with
    # others: what the caller should store in place of the old hash.
    rehashed: str | None = None


class PasswordHashing:
    """Hashes and checks passwords on ``workers`` threads, with at most ``queue_limit``
    more waiting; thread-safe, shared by every request of a process."""

    def __init__(self, hasher: PasswordHasher, workers: int, queue_limit: int) -> None:
        self.hasher = hasher
        self.workers = workers
        self.queue_limit = queue_limit
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="argon2")
        self._lock = threading.Lock()
        # Hashes submitted and not finished (running or waiting): one whose request was
        # abandoned still counts while its thread works on it.
        self._pending = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> PasswordHashing:
        workers = settings.password_hash_workers or os.cpu_count() or 1
        queue_limit = settings.password_hash_queue_limit
        return cls(
            PasswordHasher(
                time_cost=settings.password_hash_time_cost,
                memory_cost=settings.password_hash_memory_kib,
                parallelism=settings.password_hash_parallelism,
            ),
            workers,
            QUEUE_PER_WORKER * workers if queue_limit is None else queue_limit,
        )

    @property
    def pending(self) -> int:
        """Hashes being computed or waiting for a thread."""
        return self._pending

    async def hash(self, password: SecretStr) -> str:
        return await self._submit(self.hasher.hash, password.get_secret_value())

    async def check(self, password_hash: str, password: SecretStr) -> PasswordCheck:
        """Whether ``password`` is the one ``password_hash`` was made from; if it is and the
        hash was made with other parameters than the current ones, the password rehashed."""
        return await self._submit(self._check, password_hash, password.get_secret_value())

    def _check(self, password_hash: str, password: str) -> PasswordCheck:
        try:
            self.hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return PasswordCheck(matches=False)
        if self.hasher.check_needs_rehash(password_hash):
            return PasswordCheck(matches=True, rehashed=self.hasher.hash(password))
        return PasswordCheck(matches=True)

    async def _submit(self, function: Callable[..., T], *args: str) -> T:
        with self._lock:
            if self._pending >= self.workers + self.queue_limit:
                raise PasswordHashingBusyError(
                    f"all {self.workers} hashers are busy and {self.queue_limit} requests "
                    "wait for one"
                )
            self._pending += 1
        future = self._executor.submit(function, *args)
        future.add_done_callback(self._finished)
        return await asyncio.wrap_future(future)

    def _finished(self, _: Future[Any]) -> None:
        with self._lock:
            self._pending -= 1

    def close(self) -> None:
        """Drop the hashes still waiting; the ones running finish on their threads."""
        self._executor.shutdown(wait=False, cancel_futures=True)
