"""Failure helpers shared by the workflows (imported passed through the sandbox)."""

from __future__ import annotations

from typing import NoReturn

from temporalio.exceptions import ActivityError, ApplicationError


def raise_refusal(error: ActivityError) -> NoReturn:
    """A plan refused by its activity is the caller's mistake: fail the workflow with the
    activity's reason and type, not with the activity wrapper, and without retrying."""
    if isinstance(error.cause, ApplicationError):
        raise ApplicationError(
            error.cause.message, type=error.cause.type, non_retryable=True
        ) from error
    raise error
