"""The copy's next batch read and checked in a process of its own, beside the worker.

A copy of a table is bound by one core: reading, checking and encoding a batch cost about as
much CPU as writing and verifying the one before, and a worker's threads share one interpreter
lock. Here the read ahead runs in a second process (``python -m`` this module, started on the
first batch read ahead, then kept), so the worker's own process only writes and verifies. The
batch comes back pickled, as columns: its fields as values only where a target needs them (a
SQL target writes their JSON text), which keeps the handover a few milliseconds.

The process changes nothing and records nothing: a read ahead that fails, or a process that is
gone, costs only that the step reads the batch itself, where its error counts. It reads its
requests from standard input and so ends with the worker, however the worker ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import struct
import subprocess
import sys
import threading
from collections.abc import Awaitable
from typing import IO, Any

from nexpo_workflows.config import Settings
from nexpo_workflows.errors import first_line
from nexpo_workflows.providers import (
    DatabaseProvider,
    enabled_provider_names,
    load_provider_class,
)
from nexpo_workflows.sync.models import ChangeBatch, SyncPlan, Watermark
from nexpo_workflows.sync.reading import BatchReader, Encodings, PreparedBatch

log = logging.getLogger(__name__)

# A frame on the pipes: its length, then a pickle.
_LENGTH = struct.Struct("!Q")
# How long a read ahead may take before the process is taken for stuck (a batch of 100,000 rows
# takes about a second).
READ_TIMEOUT_SECONDS = 60.0
# How long a closing worker waits for the process to end before it kills it.
CLOSE_TIMEOUT_SECONDS = 5.0


class ReadAheadError(Exception):
    """A read ahead failed in the process (its cause as text), or the process is gone."""


class ReadAheadProcess:
    """One process reading ahead for a worker's copies, one batch at a time. The pipes are
    read and written in a thread, where their system calls leave the interpreter lock to the
    worker's writes and verifications."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._process: subprocess.Popen[bytes] | None = None
        self._starting: asyncio.Task[int] | None = None
        # One request on the pipes at a time (a start, then reads).
        self._pipes = threading.Lock()
        # Set when the process could not start: it is not tried again.
        self._refused: str | None = None
        # Set when a request found the process gone, before it is seen to have ended.
        self._lost = False

    @property
    def pid(self) -> int | None:
        """The process's id once it is ready, else None."""
        starting = self._starting
        if starting is None or not starting.done() or starting.exception() is not None:
            return None
        return starting.result()

    def read(
        self, plan: SyncPlan, after: Watermark, until: str | None, encodings: Encodings
    ) -> Awaitable[tuple[ChangeBatch, PreparedBatch]] | None:
        """The copy batch after ``after`` read and checked in the process; None until the
        process is ready (it is then started): the caller reads the batch itself."""
        if self._refused is not None:
            return None
        if self._starting is None:
            self._starting = asyncio.create_task(asyncio.to_thread(self._start))
        if not self._starting.done():
            return None
        error = self._starting.exception()
        if error is not None:
            self._refused = first_line(error)
            log.warning("sync: no read-ahead process, copies read ahead here: %s", self._refused)
            self._forget()
            return None
        process = self._process
        if self._lost or process is None or process.poll() is not None:
            self._forget()  # gone (killed, out of memory): another starts next time
            return None
        return self._answer(process, (plan, after, until, encodings))

    async def _answer(self, process: subprocess.Popen[bytes], request: Any) -> Any:
        exchange = asyncio.ensure_future(asyncio.to_thread(self._exchange, process, request))
        try:
            # Shielded: a caller that stops waiting leaves the answer to be read off the pipe.
            return await asyncio.wait_for(asyncio.shield(exchange), READ_TIMEOUT_SECONDS)
        except TimeoutError:
            # Stuck (a source that never answers, a stopped process): killed, its pipes close
            # and free the next request; another process starts for the next batch.
            self._lost = True
            process.kill()
            raise ReadAheadError(f"no answer in {READ_TIMEOUT_SECONDS:.0f} s") from None

    def _start(self) -> int:
        path = os.pathsep.join(entry for entry in sys.path if entry)
        process = subprocess.Popen(
            [sys.executable, "-m", __name__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": path},
        )
        self._process = process
        answer = self._exchange(process, self._settings)
        assert isinstance(answer, int)
        return answer

    def _exchange(self, process: subprocess.Popen[bytes], request: Any) -> Any:
        assert process.stdin is not None
        assert process.stdout is not None
        with self._pipes:
            try:
                _send(process.stdin, request)
                failed, answer = _frame(process.stdout)
            except (OSError, EOFError) as error:
                self._lost = True
                raise ReadAheadError(f"the read-ahead process is gone: {error!r}") from error
        if failed:
            raise ReadAheadError(answer)
        return answer

    def _forget(self) -> None:
        process, self._process, self._starting = self._process, None, None
        self._lost = False
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    async def close(self) -> None:
        """End the process (its input closed; killed if it does not end); safe to call twice."""
        process, self._process, self._starting = self._process, None, None
        if process is not None and process.poll() is None:
            await asyncio.to_thread(_end, process)


def _end(process: subprocess.Popen[bytes]) -> None:
    assert process.stdin is not None
    with contextlib.suppress(OSError):
        process.stdin.close()
    try:
        process.wait(CLOSE_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --- Both ends of the pipes, then the process ------------------------------------------------


def _frame(stream: IO[bytes]) -> Any:
    """The next frame's pickle, loaded; EOFError when the stream ends first."""
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        raise EOFError("the pipe closed")
    (length,) = _LENGTH.unpack(header)
    body = stream.read(length)
    if len(body) < length:
        raise EOFError("the pipe closed mid-frame")
    return pickle.loads(body)


def _send(stream: IO[bytes], value: Any) -> None:
    body = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(body)) + body)
    stream.flush()


async def _read(
    settings: Settings,
    reader: BatchReader,
    providers: dict[str, DatabaseProvider],
    request: tuple[SyncPlan, Watermark, str | None, Encodings],
) -> tuple[ChangeBatch, PreparedBatch]:
    plan, after, until, encodings = request
    if plan.source not in providers and plan.source in enabled_provider_names(settings):
        providers[plan.source] = load_provider_class(plan.source).from_settings(settings)
    batch, prepared = await reader.copy_batch(plan, after, until, encodings)
    records = prepared.records
    if not encodings.values and records.computed_json is not None:
        records.data = []  # parsed back from the JSON text if a step needs them after all
    return batch, prepared


def serve() -> None:
    """Answer read-ahead requests from standard input until it ends."""
    requests = sys.stdin.buffer
    # The answers' own channel: whatever else is printed goes to standard error.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    settings: Settings = _frame(requests)
    providers: dict[str, DatabaseProvider] = {}
    reader = BatchReader(settings, providers, fetch_ahead=True)
    loop = asyncio.new_event_loop()
    _send(answers, (False, os.getpid()))
    while True:
        try:
            request = _frame(requests)
        except EOFError:
            break
        try:
            answer: tuple[bool, Any] = (
                False,
                loop.run_until_complete(_read(settings, reader, providers, request)),
            )
        except Exception as error:
            answer = (True, first_line(error))
        _send(answers, answer)
    # A batch still being fetched ahead is not wanted any more.
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    for provider in providers.values():
        with contextlib.suppress(Exception):
            loop.run_until_complete(provider.close())
    loop.close()


if __name__ == "__main__":
    serve()
