"""Inputs and outputs of the user onboarding saga and of offboarding."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, EmailStr, Field, field_validator

from nexpo_workflows.providers.base import UserRecord
from nexpo_workflows.sync.erasure import ErasedCopy


class StepMode(StrEnum):
    ACTIVITY = "activity"
    LOCAL = "local"


class SagaOptions(BaseModel):
    """Per-run choices; anything left None comes from the worker's settings."""

    providers: list[str] | None = None
    step_mode: StepMode | None = None
    parallel: bool | None = None
    timeout_seconds: float | None = Field(default=None, gt=0)


class OnboardingInput(BaseModel):
    email: EmailStr
    name: str = Field(min_length=1, max_length=200)
    # An Argon2id hash made at the edge: no plaintext password ever enters a workflow.
    password_hash: str = Field(min_length=1, max_length=512, repr=False)
    profile: dict[str, Any] | None = None
    # Fixed by the caller when given, else by the workflow before any step runs.
    user_id: str | None = Field(default=None, min_length=1, max_length=64)
    options: SagaOptions = SagaOptions()

    @field_validator("email")
    @classmethod
    def _lower_case_email(cls, value: str) -> str:
        return value.lower()

    @field_validator("password_hash")
    @classmethod
    def _is_a_hash(cls, value: str) -> str:
        if not value.startswith("$argon2"):
            raise ValueError("must be an Argon2 hash ($argon2id$...), never a password")
        return value

    def to_record(self, default_id: str, now: datetime) -> UserRecord:
        """The record every provider stores: the caller's id if given, else ``default_id``."""
        return UserRecord(
            id=self.user_id or default_id,
            email=self.email,
            name=self.name,
            password_hash=self.password_hash,
            # Millisecond precision: what every provider stores, so records compare equal.
            created_at=now.replace(microsecond=now.microsecond // 1000 * 1000),
            profile=self.profile,
        )


class OffboardingInput(BaseModel):
    user_id: str = Field(min_length=1, max_length=64)
    options: SagaOptions = SagaOptions()


class PlanInput(BaseModel):
    options: SagaOptions = SagaOptions()


class ProviderStep(BaseModel):
    provider: str
    create_activity: str
    delete_activity: str


class SagaPlan(BaseModel):
    """What the worker's configuration says, recorded in history so replays agree."""

    steps: list[ProviderStep]
    step_mode: StepMode
    parallel: bool
    # In a parallel plan, the first provider is written alone before the others: its unique
    # email index decides which of two sagas for one email goes on. Written all at once, two
    # rivals could each win a different database and both roll back. Plans recorded before
    # this existed read False and replay as they ran.
    claim_first: bool = False
    timeout_seconds: float
    step_timeout_seconds: float
    compensation_attempts: int


class CreateUserStepInput(BaseModel):
    provider: str
    user: UserRecord


class DeleteUserStepInput(BaseModel):
    provider: str
    user_id: str


class DeleteUserStepResult(BaseModel):
    provider: str
    existed: bool


class ProviderStatus(StrEnum):
    CREATED = "created"
    COMPENSATED = "compensated"
    FAILED = "failed"
    COMPENSATION_FAILED = "compensation_failed"
    NOT_STARTED = "not_started"
    DELETED = "deleted"
    ABSENT = "absent"


class ProviderOutcome(BaseModel):
    provider: str
    status: ProviderStatus
    error: str | None = None
    compensation_error: str | None = None


class SagaStatus(StrEnum):
    COMPLETED = "completed"
    ROLLED_BACK = "rolled_back"
    # A compensation kept failing: a record may remain; the outcome names where.
    ROLLBACK_INCOMPLETE = "rollback_incomplete"
    FAILED = "failed"


class SagaResult(BaseModel):
    user_id: str
    status: SagaStatus
    providers: list[ProviderOutcome]
    # The kind of the error that stopped the saga (e.g. DuplicateEmail), for callers to map.
    failure_kind: str | None = None
    # Offboarding: the user's copies removed from sync targets and quarantines.
    erased_copies: list[ErasedCopy] = Field(default_factory=list)

    def summary(self) -> str:
        parts = [
            f"{o.provider}: {o.status}" + (f" ({o.error})" if o.error else "")
            for o in self.providers
        ]
        return f"user {self.user_id} {self.status}: " + "; ".join(parts)
