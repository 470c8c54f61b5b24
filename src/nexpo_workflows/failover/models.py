"""Inputs, state and records of the failover monitor."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Self

from pydantic import BaseModel, Field, HttpUrl, model_validator


class Side(StrEnum):
    PRIMARY = "primary"
    SECONDARY = "secondary"

    @property
    def other(self) -> Side:
        return Side.SECONDARY if self is Side.PRIMARY else Side.PRIMARY


class ProbeTarget(BaseModel):
    """What one side is: an object store of the registry (probed with ``ping()``) or an HTTP
    URL (probed with a GET that must answer 2xx)."""

    store: str | None = None
    url: HttpUrl | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.store is None) == (self.url is None):
            raise ValueError("a probe target is either a store name or a URL, not both or neither")
        return self

    def describe(self) -> str:
        return f"store:{self.store}" if self.store is not None else str(self.url)


class ProbeResult(BaseModel):
    at: datetime
    side: Side
    target: str
    up: bool
    latency_ms: float = Field(ge=0)
    error: str | None = None


class FailoverCarry(BaseModel):
    """What a run hands to the next one at continue-as-new."""

    active_side: Side = Side.PRIMARY
    consecutive_failures: int = Field(default=0, ge=0)
    consecutive_successes: int = Field(default=0, ge=0)
    recent_probes: list[ProbeResult] = Field(default_factory=list)
    total_rounds: int = Field(default=0, ge=0)


class FailoverInput(BaseModel):
    service: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    primary: ProbeTarget
    secondary: ProbeTarget
    probe_interval_seconds: float = Field(default=30.0, gt=0)
    probe_timeout_seconds: float = Field(default=5.0, gt=0, le=300)
    failures_to_promote: int = Field(default=3, ge=1)
    successes_to_fail_back: int = Field(default=5, ge=1)
    history_limit: int = Field(default=20, ge=1, le=1000)
    continue_as_new_after: int = Field(default=500, ge=1)
    # Set only by the workflow itself when it continues as new.
    carry: FailoverCarry | None = None


class FailoverState(BaseModel):
    """What the ``state`` query (and the ``set_active_side`` update) return."""

    service: str
    active_side: Side
    consecutive_failures: int
    consecutive_successes: int
    recent_probes: list[ProbeResult]
    rounds_since_continue_as_new: int
    total_rounds: int


class SetActiveSideInput(BaseModel):
    # Plain strings, checked by the update's validator, so a wrong value is rejected with a
    # clear message rather than failing to decode.
    side: str
    reason: str


class ProbeInput(BaseModel):
    side: Side
    target: ProbeTarget
    timeout_seconds: float = Field(gt=0, le=300)


class RoutingRecord(BaseModel):
    service: str
    active_side: Side
    since: datetime
    reason: str
    workflow_id: str | None = None


class NotifyInput(BaseModel):
    record: RoutingRecord
    previous_side: Side
