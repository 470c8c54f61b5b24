"""User operations behind the gateway and the CLI, in both modes.

With a Temporal client they start the durable workflows; without one
(``ENABLE_TEMPORAL=false``) they run the same saga in this process, which is not durable:
if the process dies mid-saga, what was written stays written.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, EmailStr, Field, SecretStr, field_validator
from pydantic.alias_generators import to_camel
from pydantic_core import to_json
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from nexpo_workflows.errors import first_line
from nexpo_workflows.providers import DatabaseProvider, ProviderUnavailableError
from nexpo_workflows.services import Services
from nexpo_workflows.sync.datasets import USERS_TABLE
from nexpo_workflows.sync.erasure import EraseCopiesInput, erase_copies
from nexpo_workflows.users.idempotency import (
    IdempotencyKeyConflictError,
    IdempotencyKeyReusedError,
    IdempotencyKeys,
    request_fingerprint,
)
from nexpo_workflows.users.models import (
    OffboardingInput,
    OnboardingInput,
    SagaOptions,
    SagaPlan,
    SagaResult,
    SagaStatus,
)
from nexpo_workflows.users.saga import offboard, onboard
from nexpo_workflows.users.steps import (
    MAX_DELAY_SECONDS,
    InProcessSteps,
    UserSteps,
    plan_saga,
)
from nexpo_workflows.users.workflows import (
    UserOffboardingWorkflow,
    UserOnboardingWorkflow,
)

T = TypeVar("T")

log = logging.getLogger(__name__)

_IDEMPOTENCY_MEMO = "idempotency_key_sha256"
_REQUEST_MEMO = "request_sha256"


# What one of the supported databases refuses, checked at the edge so that such input is a
# 422 naming its field and never reaches a database: PostgreSQL text and jsonb cannot hold a
# NUL character (nor can a MongoDB field name), MongoDB stores integers of at most 8 bytes and
# nests documents at most 100 deep, PostgreSQL's JSON has no NaN or Infinity, and a Cosmos DB
# item is at most 2 MB. The lengths of the other fields are their columns' sizes.
PROFILE_MAX_DEPTH = 32
PROFILE_MAX_BYTES = 64 * 1024
_INT64 = range(-(2**63), 2**63)


def _storable_text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain a NUL character")
    return value


def _check_storable(value: Any, depth: int) -> None:
    """Raise ValueError for the first part of a JSON value some database cannot store."""
    if depth > PROFILE_MAX_DEPTH:
        raise ValueError(f"must not nest deeper than {PROFILE_MAX_DEPTH} levels")
    if isinstance(value, str):
        _storable_text(value)
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        if value not in _INT64:
            raise ValueError("integers must fit in 64 bits")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("numbers must be finite")
    elif isinstance(value, dict):
        for key, item in value.items():
            _storable_text(key)
            _check_storable(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_storable(item, depth + 1)


class CreateUserRequest(BaseModel):
    email: EmailStr
    name: str = Field(min_length=1, max_length=200)
    password: SecretStr = Field(min_length=8, max_length=1024)
    profile: dict[str, Any] | None = None

    @field_validator("name")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return _storable_text(value.strip())

    @field_validator("profile")
    @classmethod
    def _storable_everywhere(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        _check_storable(value, 1)
        if len(to_json(value)) > PROFILE_MAX_BYTES:
            raise ValueError(f"must be at most {PROFILE_MAX_BYTES} bytes as JSON")
        return value


class UserView(BaseModel):
    """A user as the API shows it: never the password hash."""

    id: str
    email: str
    name: str
    created_at: datetime
    profile: dict[str, Any] | None = None
    # Which enabled databases hold the record (all of them, or none, if the saga did its job).
    stored_in: dict[str, bool]


class WorkflowAccepted(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    workflow_id: str
    status_url: str


class AlreadyOnboardingError(Exception):
    def __init__(self, workflow_id: str) -> None:
        super().__init__(f"an onboarding for this email exists: workflow {workflow_id}")
        self.workflow_id = workflow_id


class SagaFailedError(Exception):
    def __init__(self, result: SagaResult) -> None:
        super().__init__(result.summary())
        self.result = result


class OnboardingEndedError(Exception):
    """The saga's run ended without an outcome: cancelled (its writes compensated),
    terminated, or its plan refused by the worker. The email may register again."""

    def __init__(self, workflow_id: str, reason: str) -> None:
        super().__init__(f"onboarding workflow {workflow_id} ended without an outcome: {reason}")
        self.workflow_id = workflow_id


@dataclass(frozen=True)
class StillRunning:
    """The saga goes on: it was not waited for, or had not finished when the wait ended."""

    workflow_id: str


@dataclass(frozen=True)
class OnboardingStart:
    """One attempt at starting the saga of an email, as both kinds of start make it."""

    workflow_id: str
    task_queue: str
    reuse: WorkflowIDReusePolicy
    memo: dict[str, str]
    input: OnboardingInput

    def options(self) -> dict[str, Any]:
        return {
            "id": self.workflow_id,
            "task_queue": self.task_queue,
            "id_reuse_policy": self.reuse,
            "id_conflict_policy": WorkflowIDConflictPolicy.FAIL,
            "memo": self.memo,
        }


def _completed(result: SagaResult) -> SagaResult:
    if result.status is not SagaStatus.COMPLETED:
        raise SagaFailedError(result)
    return result


async def saga_outcome(handle: WorkflowHandle[Any, SagaResult]) -> SagaResult:
    """The result of a saga's run, or SagaFailedError with the result its failure carries."""
    try:
        return await handle.result()
    except WorkflowFailureError as error:
        cause = error.cause
        if isinstance(cause, ApplicationError) and cause.details:
            raise SagaFailedError(SagaResult.model_validate(cause.details[0])) from error
        raise


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def onboarding_workflow_id(email: str) -> str:
    # Hashed: an email address is personal data and workflow ids are shown everywhere.
    return f"user-onboarding-{_digest(email.lower())}"


def offboarding_workflow_id(user_id: str) -> str:
    return f"user-offboarding-{user_id}"


def fingerprint(request: CreateUserRequest) -> str:
    return request_fingerprint(request.email, request.name, request.profile)


def in_process_saga_bound(plan: SagaPlan) -> timedelta:
    """How long an in-process saga can last at most: its deadline, then every compensation
    with all its attempts (each a step's timeout and the longest back-off)."""
    compensation = plan.compensation_attempts * (plan.step_timeout_seconds + MAX_DELAY_SECONDS)
    return timedelta(seconds=plan.timeout_seconds + compensation * len(plan.steps))


@dataclass
class UserService:
    services: Services
    client: Client | None

    async def _onboarding_input(
        self, request: CreateUserRequest, user_id: str | None
    ) -> OnboardingInput:
        return OnboardingInput(
            email=request.email,
            name=request.name,
            password_hash=await self.services.passwords.hash(request.password),
            profile=request.profile,
            user_id=user_id,
        )

    async def start_onboarding(
        self, request: CreateUserRequest, idempotency_key: str | None
    ) -> WorkflowHandle[Any, SagaResult]:
        """Start the saga of this email (see ``_start_or_join``) and return its handle."""

        async def join(handle: WorkflowHandle[Any, SagaResult]) -> WorkflowHandle[Any, SagaResult]:
            return handle

        input = await self._onboarding_input(request, None)
        return await self._start_or_join(request, input, idempotency_key, self._start, join)

    async def _start(self, onboarding: OnboardingStart) -> WorkflowHandle[Any, SagaResult]:
        assert self.client is not None
        return await self.client.start_workflow(
            UserOnboardingWorkflow.run,
            onboarding.input,
            **onboarding.options(),
            # When a worker of this client polls the queue (the dev stack), the server hands
            # it the saga's first task in its answer, skipping a dispatch through the task
            # queue; otherwise this asks for nothing.
            request_eager_start=True,
        )

    async def onboard_and_wait(
        self, request: CreateUserRequest, idempotency_key: str | None, bound: timedelta
    ) -> SagaResult | StillRunning:
        """Start the saga of this email (see ``_start_or_join``) and wait at most ``bound``
        for its outcome: the result, SagaFailedError, or StillRunning when it goes on.

        The start is eager (see ``_start``) and the wait a long poll for the run's result,
        sent as soon as the start is answered. Measured in benchmarks/sync_onboarding.py,
        this answers sooner than an update-with-start, which cannot start eagerly. A retry
        that joins a run waits for its result the same way."""
        input = await self._onboarding_input(request, None)
        # The bound is on the wait for the saga, not on hashing the password before it.
        deadline = asyncio.get_running_loop().time() + bound.total_seconds()

        async def join(handle: WorkflowHandle[Any, SagaResult]) -> SagaResult | StillRunning:
            try:
                async with asyncio.timeout_at(deadline):
                    return _completed(await saga_outcome(handle))
            except TimeoutError:
                return StillRunning(handle.id)
            except WorkflowFailureError as error:
                # Cancelled, terminated, or its plan refused by the worker: no outcome.
                raise OnboardingEndedError(handle.id, first_line(error.cause or error)) from error

        async def start(onboarding: OnboardingStart) -> SagaResult | StillRunning:
            return await join(await self._start(onboarding))

        return await self._start_or_join(request, input, idempotency_key, start, join)

    async def _start_or_join(
        self,
        request: CreateUserRequest,
        input: OnboardingInput,
        idempotency_key: str | None,
        start: Callable[[OnboardingStart], Awaitable[T]],
        join: Callable[[WorkflowHandle[Any, SagaResult]], Awaitable[T]],
    ) -> T:
        """Start the saga of this email, unless one is under way or its user exists (then
        AlreadyOnboardingError, or ``join`` that saga for a retry with the same key and
        request). An email whose user has been offboarded registers again: a new run under
        the same workflow id, so that two onboardings of one email still conflict."""
        assert self.client is not None
        workflow_id = onboarding_workflow_id(request.email)
        memo = {_REQUEST_MEMO: fingerprint(request)}
        if idempotency_key:
            memo[_IDEMPOTENCY_MEMO] = _digest(idempotency_key)
        handle = self.client.get_workflow_handle_for(UserOnboardingWorkflow.run, workflow_id)
        # A first onboarding, or one after a failed run, starts without a look first; after
        # a completed run, only once its user is gone (FAIL still refuses a run under way).
        for reuse in (
            WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
            WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        ):
            onboarding = OnboardingStart(
                workflow_id, self.services.settings.temporal_task_queue, reuse, memo, input
            )
            try:
                return await start(onboarding)
            except WorkflowAlreadyStartedError:
                if await self._holds_the_email(handle, memo):
                    return await join(handle)
        raise AlreadyOnboardingError(workflow_id)

    async def _holds_the_email(
        self, handle: WorkflowHandle[Any, SagaResult], memo: dict[str, str]
    ) -> bool:
        """Whether the email's latest onboarding is this request's (True: join it). Raise
        AlreadyOnboardingError if it is another's and is under way or its user exists,
        IdempotencyKeyReusedError if it carries this key with another request; False when
        there is none, it failed, or its user has been offboarded since."""
        try:
            description = await handle.describe()
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                return False
            raise
        state = description.status
        if state is WorkflowExecutionStatus.COMPLETED:
            created = await handle.result(follow_runs=False)
            if await self.get(created.user_id) is None:
                return False  # offboarded: the email is free again
        elif state is not WorkflowExecutionStatus.RUNNING:
            return False  # failed, cancelled, terminated: every write was undone
        held = await description.memo()
        key = memo.get(_IDEMPOTENCY_MEMO)
        if key is None or held.get(_IDEMPOTENCY_MEMO) != key:
            raise AlreadyOnboardingError(handle.id)
        # Runs started before requests were fingerprinted have none to compare.
        if held.get(_REQUEST_MEMO, memo[_REQUEST_MEMO]) != memo[_REQUEST_MEMO]:
            raise IdempotencyKeyReusedError(
                "this Idempotency-Key was used with another request "
                "(name or profile differ); use a new key"
            )
        return True

    def _in_process_plan(self) -> SagaPlan:
        return plan_saga(self.services.settings, list(self.services.providers), SagaOptions())

    async def onboard_in_process(
        self, request: CreateUserRequest, idempotency_key: str | None
    ) -> SagaResult:
        """The same saga without Temporal. A key is bound to its request (see
        idempotency.py): the same request gets the user its first saga created."""
        plan = self._in_process_plan()
        if idempotency_key is None:
            return await self._onboard_in_process(request, str(uuid.uuid4()), plan)
        keys = IdempotencyKeys(
            self.services.providers[plan.steps[0].provider], in_process_saga_bound(plan)
        )
        claim = await keys.claim(idempotency_key, fingerprint(request))
        if claim.state.result is not None:
            await self._check_replay(keys.store, claim.state.result, request)
            return claim.state.result
        try:
            result = await self._onboard_in_process(request, claim.state.user_id, plan)
        except SagaFailedError:
            await keys.release(claim)
            raise
        await keys.complete(claim, result)
        return result

    async def _onboard_in_process(
        self, request: CreateUserRequest, user_id: str, plan: SagaPlan
    ) -> SagaResult:
        input = await self._onboarding_input(request, user_id)
        user = input.to_record(user_id, datetime.now(UTC))
        steps = InProcessSteps(UserSteps(self.services.providers), plan)
        result = await onboard(plan, user, steps)
        if result.status is not SagaStatus.COMPLETED:
            raise SagaFailedError(result)
        return result

    async def _check_replay(
        self, store: DatabaseProvider, result: SagaResult, request: CreateUserRequest
    ) -> None:
        """The stored outcome is this request's only if its user is still there and the
        password is the one it was created with (then a hash made with other parameters
        than the current ones is replaced)."""
        record = await store.get_user(result.user_id)
        if record is None:
            raise IdempotencyKeyConflictError(
                f"user {result.user_id}, created with this Idempotency-Key, has been deleted "
                "since; use a new key to create the user again"
            )
        check = await self.services.passwords.check(record.password_hash, request.password)
        if not check.matches:
            raise IdempotencyKeyReusedError(
                "this Idempotency-Key was used with another request (the password differs); "
                "use a new key"
            )
        if check.rehashed is not None:
            await self._store_rehash(result.user_id, check.rehashed)

    async def _store_rehash(self, user_id: str, password_hash: str) -> None:
        """Put the rehashed password in every enabled database. Both hashes verify the same
        password, so one a database keeps (it is down) does no harm: the answer goes on."""
        names = list(self.services.providers)
        outcomes = await asyncio.gather(
            *(
                self.services.providers[name].set_password_hash(user_id, password_hash)
                for name in names
            ),
            return_exceptions=True,
        )
        for name, outcome in zip(names, outcomes, strict=True):
            if isinstance(outcome, ProviderUnavailableError):
                log.warning(
                    "%s: the rehashed password of user %s is not stored: %s",
                    name,
                    user_id,
                    first_line(outcome),
                )
            elif isinstance(outcome, BaseException):
                raise outcome

    async def start_offboarding(self, user_id: str) -> WorkflowHandle[Any, SagaResult]:
        assert self.client is not None
        return await self.client.start_workflow(
            UserOffboardingWorkflow.run,
            OffboardingInput(user_id=user_id),
            id=offboarding_workflow_id(user_id),
            task_queue=self.services.settings.temporal_task_queue,
            # Deleting twice is harmless: a second request joins a running offboarding.
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )

    async def offboard_in_process(self, user_id: str) -> SagaResult:
        plan = self._in_process_plan()
        steps = InProcessSteps(UserSteps(self.services.providers), plan)
        result = await offboard(plan, user_id, steps)
        if result.status is not SagaStatus.COMPLETED:
            raise SagaFailedError(result)
        erased = await erase_copies(
            self.services.settings,
            self.services.providers,
            EraseCopiesInput(table=USERS_TABLE, key=user_id),
        )
        result.erased_copies = erased.copies
        return result

    async def get(self, user_id: str) -> UserView | None:
        """Read every enabled database directly: the record, and where it is stored."""
        names = list(self.services.providers)
        records = await asyncio.gather(
            *(self.services.providers[name].get_user(user_id) for name in names)
        )
        found = [record for record in records if record is not None]
        if not found:
            return None
        record = found[0]
        return UserView(
            id=record.id,
            email=record.email,
            name=record.name,
            created_at=record.created_at,
            profile=record.profile,
            stored_in={name: rec is not None for name, rec in zip(names, records, strict=True)},
        )
