"""Inputs, state and records of the failover monitor."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Literal, Self

from pydantic import BaseModel, Field, HttpUrl, model_validator

# The error type of a probe refused by the worker's FAILOVER_PROBE_ALLOWED_HOSTS.
PROBE_TARGET_REFUSED = "ProbeTargetRefused"
# The error type of a PostgreSQL promotion the worker's settings do not allow.
POSTGRES_FAILOVER_REFUSED = "PostgresFailoverRefused"
# What a PostgreSQL target may name: a setting, whose URL (and password) stays in the workers'
# configuration and never reaches the workflow's input or history.
PostgresSetting = Literal["POSTGRES_URL", "POSTGRES_STANDBY_URL"]
# Below the minimum a monitor is a tight loop against its targets; above the maximum an
# outage goes unnoticed too long.
MIN_PROBE_INTERVAL_SECONDS = 1.0
MAX_PROBE_INTERVAL_SECONDS = 3600.0


class Side(StrEnum):
    PRIMARY = "primary"
    SECONDARY = "secondary"

    @property
    def other(self) -> Side:
        return Side.SECONDARY if self is Side.PRIMARY else Side.PRIMARY


class ProbeTarget(BaseModel):
    """What one side is: an object store of the registry (probed with ``ping()``), an HTTP
    URL (probed with a GET that must answer 2xx), or a PostgreSQL server named by the setting
    that holds its URL (probed with ``SELECT 1``; promoted with ``pg_promote()``)."""

    store: str | None = None
    url: HttpUrl | None = None
    postgres: PostgresSetting | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if [self.store, self.url, self.postgres].count(None) != 2:
            raise ValueError(
                "a probe target is one of a store name, a URL or a postgres setting name"
            )
        return self

    def describe(self) -> str:
        if self.postgres is not None:
            return f"postgres:{self.postgres}"
        return f"store:{self.store}" if self.store is not None else str(self.url)

    def refusal(self, allowed_hosts: Sequence[str]) -> str | None:
        """Why this target may not be probed (a URL whose host is not allowed), or None."""
        if self.url is None:
            return None
        host = (self.url.host or "").lower()
        if host in {allowed.lower() for allowed in allowed_hosts}:
            return None
        return (
            f"probe target host {host!r} is not allowed: FAILOVER_PROBE_ALLOWED_HOSTS is "
            f"{', '.join(allowed_hosts) or 'empty (no URL targets)'}"
        )


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
    # Set by an operator's ``hold``: no automatic switch until ``release``.
    held: bool = False
    hold_reason: str | None = None
    # The epoch of the last routing record this monitor wrote (0: none yet).
    epoch: int = Field(default=0, ge=0)
    # Set by a failback: the writes the store pairs of this service took on the secondary
    # are still to be copied back to the primary.
    reconcile_pending: bool = False


class FailoverInput(BaseModel):
    # Bounded so that a switch's notification id stays within a notification's.
    service: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")
    primary: ProbeTarget
    secondary: ProbeTarget
    probe_interval_seconds: float = Field(
        default=30.0, ge=MIN_PROBE_INTERVAL_SECONDS, le=MAX_PROBE_INTERVAL_SECONDS
    )
    probe_timeout_seconds: float = Field(default=5.0, gt=0, le=300)
    failures_to_promote: int = Field(default=3, ge=1)
    successes_to_fail_back: int = Field(default=5, ge=1)
    history_limit: int = Field(default=20, ge=1, le=1000)
    continue_as_new_after: int = Field(default=500, ge=1)
    # Set only by the workflow itself when it continues as new.
    carry: FailoverCarry | None = None

    @model_validator(mode="after")
    def _postgres_in_pairs(self) -> Self:
        # Fixed, because the providers map the record's side to these settings.
        pair = (self.primary.postgres, self.secondary.postgres)
        if self.postgres and pair != ("POSTGRES_URL", "POSTGRES_STANDBY_URL"):
            raise ValueError(
                "a PostgreSQL monitor's primary is POSTGRES_URL and its secondary "
                "POSTGRES_STANDBY_URL"
            )
        return self

    @property
    def postgres(self) -> bool:
        """A PostgreSQL primary and standby: a switch promotes, and nothing fails back by
        itself (the old primary must first be rebuilt as a standby)."""
        return self.primary.postgres is not None or self.secondary.postgres is not None


def postgres_refusal(
    service: str, failover_service: str | None, standby_configured: bool
) -> str | None:
    """Why a worker may not promote for the PostgreSQL monitor of ``service`` (its settings
    follow another service's record, or name no standby), or None."""
    if failover_service != service:
        return (
            f"POSTGRES_FAILOVER_SERVICE is {failover_service or 'unset'}, not {service}: "
            "the PostgreSQL providers would not follow this monitor"
        )
    if not standby_configured:
        return "POSTGRES_STANDBY_URL is not set"
    return None


class FailoverState(BaseModel):
    """What the ``state`` query (and the ``set_active_side`` update) return."""

    service: str
    active_side: Side
    consecutive_failures: int
    consecutive_successes: int
    recent_probes: list[ProbeResult]
    rounds_since_continue_as_new: int
    total_rounds: int
    held: bool = False
    hold_reason: str | None = None
    epoch: int = 0
    reconcile_pending: bool = False


class SetActiveSideInput(BaseModel):
    # Plain strings, checked by the update's validator, so a wrong value is rejected with a
    # clear message rather than failing to decode.
    side: str
    reason: str
    # Hold the side moved to (e.g. a manual promotion) in the same step: no automatic
    # failback until ``release``.
    hold: bool = False


class HoldInput(BaseModel):
    """The ``hold`` and ``release`` updates' input; the reason is checked by their validator."""

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
    # Raised by every switch (never lowered, also across monitors): a reader that sees it
    # change drops its connections to the side it used and reconnects.
    epoch: int = Field(default=0, ge=0)

    @property
    def transition_id(self) -> str:
        """The id of this switch's notification: the same on every retry and channel, so a
        receiver can drop duplicates."""
        return f"failover-{self.service}-{self.epoch}"


class PromoteInput(BaseModel):
    """Promote the PostgreSQL server of ``target`` (a standby) to a primary."""

    service: str
    target: ProbeTarget
    timeout_seconds: float = Field(gt=0, le=300)


class NotifyInput(BaseModel):
    record: RoutingRecord
    previous_side: Side
    # The notifier channel to send on; None (runs from before channels): a log line only.
    channel: str | None = None


class ChannelsInput(BaseModel):
    """Which service's switch is to be announced (channels are the worker's, for any)."""

    service: str


class ReconcileInput(BaseModel):
    service: str


class ReconcileReport(BaseModel):
    """What a reconcile pass of the store pairs bound to a service did."""

    pairs: list[str] = Field(default_factory=list)
    copied: int = Field(default=0, ge=0)
    deleted: int = Field(default=0, ge=0)
    already_present: int = Field(default=0, ge=0)
