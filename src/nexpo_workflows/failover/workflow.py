"""FailoverWorkflow: probe a service's primary and secondary, and move the routing record
to the secondary after N failed primary probes, back after M healthy ones. An operator's
``hold`` stops the automatic switches (e.g. after a manual promotion) until ``release``.

For a PostgreSQL primary and standby, a switch promotes the server it moves to before the
record names it, is followed by a hold, and never goes back by itself: the old primary must
first be rebuilt as a standby (README "PostgreSQL failover")."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from nexpo_workflows.failover.activities import FailoverActivities
    from nexpo_workflows.failover.models import (
        POSTGRES_FAILOVER_REFUSED,
        PROBE_TARGET_REFUSED,
        ChannelsInput,
        FailoverCarry,
        FailoverInput,
        FailoverState,
        HoldInput,
        NotifyInput,
        ProbeInput,
        ProbeResult,
        PromoteInput,
        ReconcileInput,
        RoutingRecord,
        SetActiveSideInput,
        Side,
    )
    from nexpo_workflows.notify.delivery import send_on_each_channel

RECORD_NOT_WRITTEN = "RoutingRecordNotWritten"
# The probe reports a dead target as data; a retry only covers a lost task or a worker restart.
_PROBE_RETRY = RetryPolicy(maximum_attempts=2, initial_interval=timedelta(milliseconds=200))
# Bounded, so a store that refuses the record cannot hold the loop (or an update) forever: an
# automatic switch is tried again at the next round, a manual one fails back to its caller.
_RECORD_RETRY = RetryPolicy(
    maximum_attempts=5,
    initial_interval=timedelta(milliseconds=500),
    maximum_interval=timedelta(seconds=5),
)
_NOTIFY_RETRY = RetryPolicy(maximum_attempts=3)
# How long pg_promote() may wait for the standby to replay what it received and open for writes.
_PROMOTE_TIMEOUT = timedelta(seconds=60)
# From this patch on, the monitor keeps the epoch the record activity stored (runs recorded
# before it ignored that activity's result).
_ROUTING_EPOCH_PATCH = "routing-epoch"
# Bounded: a primary that fails again during the pass leaves it to the round after the next.
_RECONCILE_RETRY = RetryPolicy(
    maximum_attempts=3,
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=10),
)
# Runs recorded before these send one log-line activity per switch, and reconcile nothing.
NOTIFY_ON_CHANNELS_PATCH = "failover-notify-on-channels"
RECONCILE_AFTER_FAILBACK_PATCH = "failover-reconcile-after-failback"
_SIDES = {side.value for side in Side}


@workflow.defn(name="FailoverWorkflow")
class FailoverWorkflow:
    @workflow.init
    def __init__(self, input: FailoverInput) -> None:
        self._input = input
        self._carry = input.carry.model_copy(deep=True) if input.carry else FailoverCarry()
        self._rounds = 0
        self._wake = False
        # One side change at a time: the loop's and an operator's.
        self._switching = asyncio.Lock()

    @workflow.run
    async def run(self, input: FailoverInput) -> None:
        while True:
            await self._round()
            if self._carry.reconcile_pending and self._carry.active_side is Side.PRIMARY:
                await self._reconcile()
            self._rounds += 1
            self._carry.total_rounds += 1
            # A durable timer that an operator's command cuts short.
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(
                    lambda: self._wake, timeout=input.probe_interval_seconds
                )
            self._wake = False
            # After the wait, so the next run's first round keeps the interval.
            if (
                self._rounds >= input.continue_as_new_after
                or workflow.info().is_continue_as_new_suggested()
            ):
                # An update in flight would be lost with this run.
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(input.model_copy(update={"carry": self._carry}))

    async def _round(self) -> None:
        primary, secondary = await asyncio.gather(
            self._probe(Side.PRIMARY), self._probe(Side.SECONDARY)
        )
        carry = self._carry
        carry.recent_probes = [*carry.recent_probes, primary, secondary][
            -self._input.history_limit :
        ]
        async with self._switching:
            if primary.up:
                carry.consecutive_successes += 1
                carry.consecutive_failures = 0
            else:
                carry.consecutive_failures += 1
                carry.consecutive_successes = 0
            if carry.held:
                return
            if carry.active_side is Side.PRIMARY:
                if carry.consecutive_failures < self._input.failures_to_promote:
                    return
                if not secondary.up:
                    # Moving to a side that is down too would not help anyone.
                    workflow.logger.warning(
                        "%s: primary down but secondary down too (%s): staying on primary",
                        self._input.service,
                        secondary.error,
                    )
                    return
                reason = (
                    f"primary down for {carry.consecutive_failures} consecutive probes: "
                    f"{primary.error}"
                )
                await self._try_switch(Side.SECONDARY, reason)
            elif (
                carry.consecutive_successes >= self._input.successes_to_fail_back
                and not self._input.postgres
            ):
                reason = f"primary healthy for {carry.consecutive_successes} consecutive probes"
                await self._try_switch(Side.PRIMARY, reason)

    async def _probe(self, side: Side) -> ProbeResult:
        target = self._input.primary if side is Side.PRIMARY else self._input.secondary
        timeout = self._input.probe_timeout_seconds
        try:
            return await workflow.execute_activity_method(
                FailoverActivities.probe_target,
                ProbeInput(side=side, target=target, timeout_seconds=timeout),
                # The probe bounds itself; this only catches a worker that never answers.
                start_to_close_timeout=timedelta(seconds=timeout + 5),
                retry_policy=_PROBE_RETRY,
                summary=f"probe {side}",
            )
        except ActivityError as error:
            cause = error.cause or error
            if isinstance(cause, ApplicationError) and cause.type == PROBE_TARGET_REFUSED:
                # Not an outage: this monitor may not run here at all.
                raise ApplicationError(
                    str(cause), type=PROBE_TARGET_REFUSED, non_retryable=True
                ) from error
            return ProbeResult(
                at=workflow.now(),
                side=side,
                target=target.describe(),
                up=False,
                latency_ms=0,
                error=str(cause) or type(cause).__name__,
            )

    async def _try_switch(self, side: Side, reason: str) -> None:
        try:
            await self._switch(side, reason)
        except ActivityError as error:
            # The counters stay past the threshold, so the next round tries again.
            workflow.logger.error(
                "%s: routing record not written, still on %s: %s",
                self._input.service,
                self._carry.active_side,
                error.cause or error,
            )

    async def _switch(self, side: Side, reason: str) -> None:
        """Write the record first: the state follows only what is durably recorded."""
        previous = self._carry.active_side
        await self._promote_postgres(side)
        record = RoutingRecord(
            service=self._input.service,
            active_side=side,
            since=workflow.now(),
            reason=reason,
            workflow_id=workflow.info().workflow_id,
            epoch=self._carry.epoch + 1,
        )
        stored = await workflow.execute_activity_method(
            FailoverActivities.record_active_side,
            record,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=_RECORD_RETRY,
            summary=f"route {self._input.service} to {side}",
        )
        if workflow.patched(_ROUTING_EPOCH_PATCH):
            record = stored
        self._carry.epoch = record.epoch
        self._carry.active_side = side
        self._reset_counters()
        self._hold_after_postgres_switch(side)
        if side is Side.PRIMARY and workflow.patched(RECONCILE_AFTER_FAILBACK_PATCH):
            self._carry.reconcile_pending = True
        await self._announce(record, previous)

    async def _announce(self, record: RoutingRecord, previous: Side) -> None:
        """One notification per switch on each notifier channel; a lost notice must not undo
        the switch, which is done and recorded."""
        if not workflow.patched(NOTIFY_ON_CHANNELS_PATCH):
            try:
                await workflow.execute_activity_method(
                    FailoverActivities.notify_failover,
                    NotifyInput(record=record, previous_side=previous),
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=_NOTIFY_RETRY,
                )
            except ActivityError as error:
                workflow.logger.warning("failover notice not sent: %s", error.cause or error)
            return
        try:
            channels = await workflow.execute_activity_method(
                FailoverActivities.failover_channels,
                ChannelsInput(service=record.service),
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=_NOTIFY_RETRY,
            )
        except ActivityError as error:
            workflow.logger.warning("failover notice not sent: %s", error.cause or error)
            return
        # One activity per channel: a retry never sends again on a channel that delivered.
        await send_on_each_channel(
            channels,
            FailoverActivities.notify_failover,
            lambda channel: NotifyInput(record=record, previous_side=previous, channel=channel),
            _NOTIFY_RETRY,
            f"failover notice {record.transition_id}",
        )

    async def _reconcile(self) -> None:
        """After a failback: copy back to the primary what the service's store pairs took on
        the secondary meanwhile. A pass that fails is tried again after the next round."""
        try:
            report = await workflow.execute_activity_method(
                FailoverActivities.reconcile_store_pair,
                ReconcileInput(service=self._input.service),
                start_to_close_timeout=timedelta(hours=1),
                heartbeat_timeout=timedelta(seconds=60),
                retry_policy=_RECONCILE_RETRY,
                summary=f"reconcile {self._input.service}",
            )
        except ActivityError as error:
            workflow.logger.warning(
                "%s: store pairs not reconciled yet: %s",
                self._input.service,
                error.cause or error,
            )
            return
        self._carry.reconcile_pending = False
        if report.pairs:
            workflow.logger.info(
                "%s: store pairs %s reconciled: %d copied back, %d deleted, %d already there",
                self._input.service,
                report.pairs,
                report.copied,
                report.deleted,
                report.already_present,
            )

    async def _promote_postgres(self, side: Side) -> None:
        """Promote the PostgreSQL server of ``side`` (idempotent), before any reader is sent
        to it; anything but a PostgreSQL monitor has nothing to promote."""
        if not self._input.postgres:
            return
        target = self._input.primary if side is Side.PRIMARY else self._input.secondary
        try:
            await workflow.execute_activity_method(
                FailoverActivities.promote_postgres,
                PromoteInput(
                    service=self._input.service,
                    target=target,
                    timeout_seconds=_PROMOTE_TIMEOUT.total_seconds(),
                ),
                start_to_close_timeout=_PROMOTE_TIMEOUT + timedelta(seconds=10),
                retry_policy=_RECORD_RETRY,
                summary=f"promote {target.describe()}",
            )
        except ActivityError as error:
            cause = error.cause
            if isinstance(cause, ApplicationError) and cause.type == POSTGRES_FAILOVER_REFUSED:
                # The workers' settings do not follow this monitor: no round can fix that.
                raise ApplicationError(
                    str(cause), type=POSTGRES_FAILOVER_REFUSED, non_retryable=True
                ) from error
            raise

    def _hold_after_postgres_switch(self, side: Side) -> None:
        """After a PostgreSQL switch the other server is no standby of the new primary (dead,
        or a primary of its own): nothing may switch to it until an operator has rebuilt it
        and releases the hold."""
        if not self._input.postgres:
            return
        self._carry.held = True
        self._carry.hold_reason = (
            f"PostgreSQL switched to {side}: rebuild the {side.other} server as its standby, "
            "then release"
        )

    def _reset_counters(self) -> None:
        self._carry.consecutive_failures = 0
        self._carry.consecutive_successes = 0

    @workflow.query(name="state")
    def state(self) -> FailoverState:
        carry = self._carry
        return FailoverState(
            service=self._input.service,
            active_side=carry.active_side,
            consecutive_failures=carry.consecutive_failures,
            consecutive_successes=carry.consecutive_successes,
            recent_probes=list(carry.recent_probes),
            rounds_since_continue_as_new=self._rounds,
            total_rounds=carry.total_rounds,
            held=carry.held,
            hold_reason=carry.hold_reason,
            epoch=carry.epoch,
            reconcile_pending=carry.reconcile_pending,
        )

    @workflow.update(name="set_active_side")
    async def set_active_side(self, input: SetActiveSideInput) -> FailoverState:
        side = Side(input.side)
        async with self._switching:
            if side is not self._carry.active_side:
                try:
                    await self._switch(side, f"manual: {input.reason.strip()}")
                except ActivityError as error:
                    raise ApplicationError(
                        f"routing record not written, still on {self._carry.active_side}: "
                        f"{error.cause or error}",
                        type=RECORD_NOT_WRITTEN,
                    ) from error
            else:
                self._reset_counters()
            if input.hold:
                self._hold(input.reason)
        # Probe at once, so the state shows the chosen side's health without a full interval.
        self._wake = True
        return self.state()

    @set_active_side.validator
    def _validate_set_active_side(self, input: SetActiveSideInput) -> None:
        if input.side not in _SIDES:
            raise ValueError(f"side must be one of {sorted(_SIDES)}, not {input.side!r}")
        _require_reason(input.reason)

    @workflow.update(name="hold")
    def hold(self, input: HoldInput) -> FailoverState:
        """Keep the active side as it is: no automatic switch until ``release``."""
        self._hold(input.reason)
        return self.state()

    def _hold(self, reason: str) -> None:
        self._carry.held = True
        self._carry.hold_reason = reason.strip()

    @workflow.update(name="release")
    def release(self, input: HoldInput) -> FailoverState:
        """Let the probes switch sides again (from the next round, on fresh counters)."""
        self._carry.held = False
        self._carry.hold_reason = None
        self._reset_counters()
        workflow.logger.info("%s: hold released: %s", self._input.service, input.reason.strip())
        return self.state()

    @hold.validator
    def _validate_hold(self, input: HoldInput) -> None:
        _require_reason(input.reason)

    @release.validator
    def _validate_release(self, input: HoldInput) -> None:
        _require_reason(input.reason)


def _require_reason(reason: str) -> None:
    if not reason.strip():
        raise ValueError("a reason is required")
