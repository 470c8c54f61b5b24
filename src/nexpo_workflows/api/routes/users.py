"""/api/users: onboarding (the saga), lookup and offboarding."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Path, Query, Request, status
from fastapi.responses import JSONResponse

from nexpo_workflows.api.deps import StateDep
from nexpo_workflows.users.idempotency import (
    IdempotencyKeyConflictError,
    IdempotencyKeyReusedError,
)
from nexpo_workflows.users.models import SagaResult
from nexpo_workflows.users.service import (
    AlreadyOnboardingError,
    CreateUserRequest,
    OnboardingEndedError,
    SagaFailedError,
    StillRunning,
    UserService,
    UserView,
    WorkflowAccepted,
)
from nexpo_workflows.users.steps import DUPLICATE_EMAIL, INVALID_INPUT

router = APIRouter(prefix="/api/users", tags=["users"])

UserId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Repeat a request with the same key and body to get the same outcome; "
        "the same key with another body is refused (422).",
    ),
]
Wait = Annotated[
    bool,
    Query(
        description="Answer once the saga has finished: 201 with the user, or its failure. "
        "A saga still running after ONBOARDING_WAIT_SECONDS goes on and is answered 202."
    ),
]

_FAILURE_RESPONSES: dict[int | str, dict[str, Any]] = {
    409: {
        "description": "This email is taken or already being onboarded, or the request with "
        "this Idempotency-Key is under way or its user was deleted since"
    },
    422: {
        "description": "Invalid input (a database refused it: every write was undone), or "
        "an Idempotency-Key already used with another request"
    },
    503: {
        "description": "A database could not be written; every write was undone (or, with "
        "wait=true, the workflow ended without an outcome: cancelled or terminated)"
    },
}


def _accepted(request: Request, workflow_id: str) -> JSONResponse:
    body = WorkflowAccepted(
        workflow_id=workflow_id,
        status_url=str(request.url_for("get_workflow", workflow_id=workflow_id)),
    )
    return JSONResponse(body.model_dump(by_alias=True), status_code=status.HTTP_202_ACCEPTED)


# The saga's failures that are the caller's, by kind; any other is a database's (503).
_CALLER_FAILURES = {
    DUPLICATE_EMAIL: status.HTTP_409_CONFLICT,
    INVALID_INPUT: status.HTTP_422_UNPROCESSABLE_CONTENT,
}


def _saga_failure(error: SagaFailedError) -> HTTPException:
    return HTTPException(
        _CALLER_FAILURES.get(error.result.failure_kind or "", status.HTTP_503_SERVICE_UNAVAILABLE),
        {"message": str(error), "result": error.result.model_dump(mode="json")},
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=UserView,
    responses={202: {"model": WorkflowAccepted}, **_FAILURE_RESPONSES},
)
async def create_user(
    body: CreateUserRequest,
    request: Request,
    state: StateDep,
    idempotency_key: IdempotencyKey = None,
    wait: Wait = False,
) -> Any:
    """Create the user in every enabled database, or in none.

    ENABLE_TEMPORAL=true: starts UserOnboardingWorkflow and answers 202; with ``wait=true``
    answers once it has finished (201 or its failure), started eagerly and awaited on
    Temporal, or 202 if it still runs after ONBOARDING_WAIT_SECONDS. false: runs
    the same saga in this process (not durable) and answers 201 with the user.
    """
    settings = state.services.settings
    users = UserService(state.services, state.client)
    try:
        if state.client is None:
            result = await users.onboard_in_process(body, idempotency_key)
        elif wait:
            outcome = await users.onboard_and_wait(body, idempotency_key, settings.onboarding_wait)
            if isinstance(outcome, StillRunning):
                return _accepted(request, outcome.workflow_id)
            result = outcome
        else:
            handle = await users.start_onboarding(body, idempotency_key)
            return _accepted(request, handle.id)
    except AlreadyOnboardingError as error:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            {"message": str(error), "workflowId": error.workflow_id},
        ) from None
    except IdempotencyKeyReusedError as error:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(error)) from None
    except IdempotencyKeyConflictError as error:
        raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from None
    except SagaFailedError as error:
        raise _saga_failure(error) from None
    except OnboardingEndedError as error:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            {"message": str(error), "workflowId": error.workflow_id},
        ) from None
    return await users.get(result.user_id)


@router.get("/{user_id}", response_model=UserView, responses={404: {}})
async def get_user(user_id: UserId, state: StateDep) -> UserView:
    """The user as stored, and which enabled databases hold it."""
    user = await UserService(state.services, state.client).get(user_id)
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no user {user_id} in any database")
    return user


@router.delete(
    "/{user_id}",
    response_model=SagaResult,
    responses={202: {"model": WorkflowAccepted}, 503: _FAILURE_RESPONSES[503]},
)
async def delete_user(user_id: UserId, request: Request, state: StateDep) -> Any:
    """Offboarding: delete the user from every enabled database (idempotent)."""
    users = UserService(state.services, state.client)
    if state.client is not None:
        handle = await users.start_offboarding(user_id)
        return _accepted(request, handle.id)
    try:
        return await users.offboard_in_process(user_id)
    except SagaFailedError as error:
        raise _saga_failure(error) from None
