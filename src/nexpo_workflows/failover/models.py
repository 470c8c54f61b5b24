"""Inputs, state and records of the failover monitor."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Self

from pydantic import BaseModel, Field, HttpUrl, model_validator

# The error type of a probe refused by the worker's FAILOVER_PROBE_ALLOWED_HOSTS.
PROBE_TARGET_REFUSED = "ProbeTargetRefused"
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
    # Switches so far: the routing record's epoch, and the id of each switch's notification.
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
    # One more on each switch; readers of several copies of the record take the latest.
    epoch: int = Field(default=0, ge=0)

    @property
    def transition_id(self) -> str:
        """The id of this switch's notification: the same on every retry and channel, so a
        receiver can drop duplicates. With the time of the switch, because a monitor started
        again counts its epochs from 0 again, and its switches are new ones."""
        return f"failover-{self.service}-{self.epoch}-{self.since.astimezone(UTC):%Y%m%dT%H%M%S%fZ}"


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
