"""Claude through the official ``anthropic`` SDK (extra: anthropic).

The SDK's own retries are off: the activity calling the model is retried by Temporal with
its retry policy, after the wait the API asked for, so a retry shows in the workflow's
history instead of hiding inside one long activity attempt.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar, Self

import anthropic
from anthropic.types import Message, MessageParam, TextBlock, ToolUseBlock
from anthropic.types.message_create_params import MessageCreateParamsNonStreaming

from nexpo_workflows.config import ConfigError, Settings
from nexpo_workflows.errors import first_line
from nexpo_workflows.llm.base import (
    ChatMessage,
    LanguageModel,
    LLMRequest,
    LLMRequestError,
    LLMResponse,
    LLMUnavailableError,
    TokenUsage,
)

ANTHROPIC_MODEL = "anthropic"
# The client errors a later attempt of the same request may get past, as in the SDK's own
# retry rule (request timeout, lock timeout, rate limit); every 5xx, 529 overloaded included,
# is retryable too.
RETRYABLE_4XX = {408, 409, 429}


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """The wait the API asked for, in seconds: ``retry-after-ms`` is the more precise one."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        try:
            seconds = float(value) / scale if value is not None else None
        except ValueError:
            # An HTTP date: the API sends seconds, so this is a proxy's; let the policy decide.
            seconds = None
        if seconds is not None and math.isfinite(seconds) and seconds >= 0:
            return seconds
    return None


def _api_message(error: anthropic.APIStatusError) -> str:
    """``error.message`` of the API's JSON body, prefixed by status and error type."""
    detail = error.body.get("error") if isinstance(error.body, dict) else None
    if isinstance(detail, dict) and isinstance(detail.get("message"), str):
        kind = detail.get("type", "error")
        return f"Anthropic API {error.status_code} {kind}: {detail['message']}"
    # Not the API's JSON (a proxy's page, say): the SDK's own one-line summary.
    return f"Anthropic API {error.status_code}: {first_line(error)}"


def _translated(error: anthropic.APIError) -> LLMUnavailableError | LLMRequestError:
    if isinstance(error, anthropic.APITimeoutError):
        return LLMUnavailableError("the Anthropic API did not answer in time")
    if isinstance(error, anthropic.APIConnectionError):
        return LLMUnavailableError(f"could not reach the Anthropic API: {first_line(error)}")
    if isinstance(error, anthropic.APIStatusError):
        status = error.status_code
        if status >= 500 or status in RETRYABLE_4XX:
            return LLMUnavailableError(
                _api_message(error), status=status, retry_after=_retry_after(error.response.headers)
            )
        return LLMRequestError(_api_message(error), status=status)
    # A 2xx body the SDK could not parse: the same request would get the same answer.
    return LLMRequestError(f"unexpected answer from the Anthropic API: {first_line(error)}")


def _message(message: ChatMessage) -> MessageParam:
    # One literal per role: the SDK's message types are a union keyed by it.
    if message.role == "user":
        return {"role": "user", "content": message.content}
    return {"role": "assistant", "content": message.content}


def _sampling(request: LLMRequest) -> dict[str, Any] | None:
    # The 2.x SDK no longer declares sampling parameters, but the API takes them for the
    # models that support them, so they go as extra body fields.
    return {"temperature": request.temperature} if request.temperature is not None else None


class AnthropicModel(LanguageModel):
    name: ClassVar[str] = ANTHROPIC_MODEL

    def __init__(
        self,
        *,
        api_key: str,
        model: str,
        max_tokens: int,
        timeout_seconds: float,
        base_url: str | None = None,
    ):
        self.model = model
        self.max_tokens = max_tokens
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key, base_url=base_url, timeout=timeout_seconds, max_retries=0
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        if settings.anthropic_api_key is None:
            raise ConfigError("ANTHROPIC_API_KEY must be set to use the anthropic model")
        return cls(
            api_key=settings.anthropic_api_key.get_secret_value(),
            model=settings.anthropic_model,
            max_tokens=settings.anthropic_max_tokens,
            timeout_seconds=settings.anthropic_timeout_seconds,
            base_url=settings.anthropic_base_url,
        )

    def _params(self, request: LLMRequest) -> MessageCreateParamsNonStreaming:
        params: MessageCreateParamsNonStreaming = {
            "model": self.model,
            "max_tokens": request.max_tokens or self.max_tokens,
            "messages": [_message(m) for m in request.messages],
        }
        if request.system is not None:
            params["system"] = request.system
        if request.output_schema is not None:
            # A forced call of the one tool: its input is the answer, shaped by the schema.
            params["tools"] = [
                {
                    "name": request.output_name,
                    "description": f"Give the answer as {request.output_name}.",
                    "input_schema": request.output_schema,
                }
            ]
            params["tool_choice"] = {"type": "tool", "name": request.output_name}
        return params

    async def complete(self, request: LLMRequest) -> LLMResponse:
        try:
            message = await self._client.messages.create(
                **self._params(request), extra_body=_sampling(request)
            )
        except anthropic.APIError as error:
            raise _translated(error) from error
        if message.stop_reason == "refusal":
            raise LLMRequestError(
                "Claude declined to answer this request (stop_reason refusal); "
                "asking again the same way will not change that"
            )
        return _response(message, request.output_name)

    async def close(self) -> None:
        await self._client.close()


def _response(message: Message, output_name: str) -> LLMResponse:
    text = "".join(block.text for block in message.content if isinstance(block, TextBlock))
    structured = next(
        (
            dict(block.input)
            for block in message.content
            if isinstance(block, ToolUseBlock) and block.name == output_name
        ),
        None,
    )
    return LLMResponse(
        model=message.model,
        text=text,
        structured=structured,
        stop_reason=message.stop_reason,
        usage=TokenUsage(
            input_tokens=message.usage.input_tokens, output_tokens=message.usage.output_tokens
        ),
    )
