"""The interface every language model implements, and the request and answer they share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, Field

from nexpo_workflows.config import Settings


class LLMUnavailableError(Exception):
    """Rate limited, overloaded or a server error: retrying later may help.

    ``retry_after`` is the wait the API asked for (its ``retry-after`` header), if any.
    """

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class LLMRequestError(Exception):
    """The API refused the request (400/401/403/404) or the model refused to answer:
    retrying the same request cannot help. The message is the API's own."""

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status


class ChatMessage(BaseModel):
    role: Literal["user", "assistant"]
    content: str = Field(min_length=1)


class LLMRequest(BaseModel):
    system: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    # None: the model's configured default (ANTHROPIC_MAX_TOKENS).
    max_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0, le=1)
    # Structured output: the JSON schema the answer must satisfy, asked for as a forced tool
    # call named ``output_name``; the answer's ``structured`` is then the tool's input.
    output_schema: dict[str, Any] | None = None
    output_name: str = "answer"


class TokenUsage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0


class LLMResponse(BaseModel):
    model: str
    text: str = ""
    structured: dict[str, Any] | None = None
    stop_reason: str | None = None
    usage: TokenUsage = TokenUsage()
    latency_ms: float = 0.0
    # True for the offline model used without an API key: its text is not a model's.
    offline: bool = False


class LanguageModel(ABC):
    """A language model the AI activities call: one implementation module per vendor."""

    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: Settings) -> Self:
        """Build from the model's variables in the settings (no network yet)."""

    @abstractmethod
    async def complete(self, request: LLMRequest) -> LLMResponse:
        """One call. Raises LLMUnavailableError (retryable) or LLMRequestError (not)."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections; safe to call twice."""
