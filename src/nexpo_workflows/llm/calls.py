"""Calling a language model from an activity: Temporal's view of its errors, structured
answers validated with pydantic, usage and latency recorded, heartbeats while it thinks.

Every AI activity goes through ``ask`` or ``ask_structured``, so the retry rules are the same
everywhere: a rate limit, an overload or a server error is retryable (after the wait the API
asked for); a refused request is not, and fails with the API's own message.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from nexpo_workflows.errors import first_line
from nexpo_workflows.heartbeats import heartbeating
from nexpo_workflows.llm.base import (
    ChatMessage,
    LanguageModel,
    LLMRequest,
    LLMRequestError,
    LLMResponse,
    LLMUnavailableError,
    TokenUsage,
)

T = TypeVar("T", bound=BaseModel)

LLM_UNAVAILABLE = "LLMUnavailable"
LLM_REQUEST_REFUSED = "LLMRequestRefused"
INVALID_MODEL_ANSWER = "InvalidModelAnswer"


def _record(response: LLMResponse, outcome: str, latency_ms: float) -> None:
    if not activity.in_activity():
        return
    meter = activity.metric_meter()
    labels = {"model": response.model, "outcome": outcome}
    meter.create_histogram_float("llm_call_latency", "Duration of one model call", "ms").record(
        latency_ms, labels
    )
    tokens = meter.create_counter("llm_tokens", "Tokens used by model calls")
    tokens.add(response.usage.input_tokens, {**labels, "direction": "input"})
    tokens.add(response.usage.output_tokens, {**labels, "direction": "output"})


async def ask(model: LanguageModel, request: LLMRequest) -> LLMResponse:
    """One call, its errors turned into the ApplicationError Temporal should see."""
    started = time.perf_counter()
    try:
        async with heartbeating():
            response = await model.complete(request)
    except LLMUnavailableError as error:
        delay = timedelta(seconds=error.retry_after) if error.retry_after else None
        raise ApplicationError(str(error), type=LLM_UNAVAILABLE, next_retry_delay=delay) from error
    except LLMRequestError as error:
        raise ApplicationError(str(error), type=LLM_REQUEST_REFUSED, non_retryable=True) from error
    response.latency_ms = (time.perf_counter() - started) * 1000
    _record(response, "ok", response.latency_ms)
    return response


def _parse(response: LLMResponse, output: type[T]) -> T:
    if response.structured is not None:
        return output.model_validate(response.structured)
    return output.model_validate(json.loads(response.text))


def _problem(error: ValueError) -> str:
    """What was wrong, for the model to fix: a ValidationError's first line only counts them."""
    if isinstance(error, ValidationError):
        return "; ".join(
            f"{'.'.join(str(part) for part in problem['loc']) or 'answer'}: {problem['msg']}"
            for problem in error.errors()
        )
    return first_line(error)


def _answer_again(
    request: LLMRequest, response: LLMResponse, problem: str, name: str
) -> LLMRequest:
    """The conversation so far, the model's wrong answer included, and what to fix in it."""
    answer = json.dumps(response.structured) if response.structured is not None else response.text
    said = [ChatMessage(role="assistant", content=answer)] if answer.strip() else []
    correction = ChatMessage(
        role="user",
        content=f"Your answer did not match the required schema ({problem}). "
        f"Answer again with the {name} tool only.",
    )
    return request.model_copy(update={"messages": [*request.messages, *said, correction]})


class StructuredAnswer(BaseModel):
    """The last response (model, stop reason, latency) with the usage of every attempt."""

    response: LLMResponse
    usage: TokenUsage
    attempts: int


async def ask_structured(
    model: LanguageModel, request: LLMRequest, output: type[T], attempts: int
) -> tuple[T, StructuredAnswer]:
    """Ask for an answer shaped like ``output``; an answer that does not validate is asked
    for again, with the validation error, at most ``attempts`` times in all."""
    request = request.model_copy(
        update={"output_schema": output.model_json_schema(), "output_name": output.__name__}
    )
    usage = TokenUsage()
    problem = ""
    for attempt in range(1, attempts + 1):
        response = await ask(model, request)
        usage.input_tokens += response.usage.input_tokens
        usage.output_tokens += response.usage.output_tokens
        try:
            parsed = _parse(response, output)
        except ValueError as error:  # ValidationError and JSONDecodeError are ValueErrors
            problem = _problem(error)
            request = _answer_again(request, response, problem, output.__name__)
            continue
        return parsed, StructuredAnswer(response=response, usage=usage, attempts=attempt)
    raise ApplicationError(
        f"the model's answer did not match {output.__name__} after {attempts} attempts: {problem}",
        type=INVALID_MODEL_ANSWER,
        non_retryable=True,
    )
