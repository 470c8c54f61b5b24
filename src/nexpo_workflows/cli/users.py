"""``users``: onboarding (the saga), lookup and offboarding."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import typer
from pydantic import SecretStr, ValidationError

from nexpo_workflows.cli._common import (
    app,
    command_settings,
    fail,
    input_errors,
    out,
    print_saga_result,
    run_async,
)
from nexpo_workflows.client import connect
from nexpo_workflows.config import Settings
from nexpo_workflows.services import Services
from nexpo_workflows.telemetry import create_runtime
from nexpo_workflows.users.models import SagaResult
from nexpo_workflows.users.service import (
    CreateUserRequest,
    StillRunning,
    UserService,
    UserView,
    saga_outcome,
)

users_app = typer.Typer(help="Onboard, look up and offboard users.", no_args_is_help=True)


app.add_typer(users_app, name="users")


@asynccontextmanager
async def _user_service(settings: Settings) -> AsyncIterator[UserService]:
    client = None
    if settings.enable_temporal:
        client = await connect(settings, runtime=create_runtime(""))
    services = Services.from_settings(settings, client)
    try:
        yield UserService(services, client)
    finally:
        await services.close()


@users_app.command("create")
def users_create(
    email: str = typer.Option(..., help="The user's email address."),
    name: str = typer.Option(..., help="The user's name."),
    password: str = typer.Option(
        ..., prompt=True, hide_input=True, confirmation_prompt=True, help="Hashed before use."
    ),
    profile: str | None = typer.Option(None, help="Optional profile as a JSON object."),
    idempotency_key: str | None = typer.Option(
        None, help="Same key and request, same outcome; another request is refused."
    ),
    wait: bool = typer.Option(
        True, help="Wait for the saga to finish (at most ONBOARDING_WAIT_SECONDS)."
    ),
) -> None:
    """Create a user in every enabled database, or in none."""
    settings = command_settings()
    try:
        request = CreateUserRequest(
            email=email,
            name=name,
            password=SecretStr(password),
            profile=json.loads(profile) if profile else None,
        )
    except (ValidationError, json.JSONDecodeError) as error:
        fail(f"invalid input: {input_errors(error)}", 2)

    async def create() -> SagaResult | StillRunning:
        async with _user_service(settings) as users:
            if users.client is None:
                return await users.onboard_in_process(request, idempotency_key)
            if wait:
                return await users.onboard_and_wait(
                    request, idempotency_key, settings.onboarding_wait
                )
            return StillRunning((await users.start_onboarding(request, idempotency_key)).id)

    outcome = run_async(create())
    if isinstance(outcome, StillRunning):
        going_on = f" (still running after {settings.onboarding_wait_seconds:g}s)" if wait else ""
        out.print(
            f"started workflow {outcome.workflow_id}{going_on}", soft_wrap=True, highlight=False
        )
    else:
        print_saga_result(outcome)


@users_app.command("get")
def users_get(user_id: str) -> None:
    """Show a user and which enabled databases hold it."""
    settings = command_settings()

    async def get() -> UserView | None:
        async with _user_service(settings) as users:
            return await users.get(user_id)

    user = run_async(get())
    if user is None:
        fail(f"no user {user_id} in any database", 1)
    out.print_json(user.model_dump_json())


@users_app.command("delete")
def users_delete(user_id: str) -> None:
    """Delete a user from every enabled database (offboarding; safe to repeat)."""
    settings = command_settings()

    async def delete() -> SagaResult:
        async with _user_service(settings) as users:
            if users.client is None:
                return await users.offboard_in_process(user_id)
            return await saga_outcome(await users.start_offboarding(user_id))

    print_saga_result(run_async(delete()))
