"""A language model that answers from a script: what a test needs the model to say, without
a network, and a record of every request it was sent."""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from typing import Any, ClassVar, Self

from nexpo_workflows.config import Settings
from nexpo_workflows.llm import LanguageModel, LLMRequest, LLMRequestError, LLMResponse, TokenUsage

SCRIPTED_MODEL = "scripted"
# What each scripted answer reports as used, so a test can check the usage is summed.
USAGE = TokenUsage(input_tokens=100, output_tokens=20)

# A structured answer (the tool's input), or an exception the call raises instead.
Answer = dict[str, Any] | Exception


class ScriptedModel(LanguageModel):
    """Answers each request with the next scripted answer for its ``output_name``.

    ``hold``, when set, keeps every call waiting until it is set: a workflow stays in the
    model's step for as long as a test needs. ``asked`` is set by the first request.
    """

    name: ClassVar[str] = SCRIPTED_MODEL

    def __init__(self) -> None:
        self._answers: defaultdict[str, deque[Answer]] = defaultdict(deque)
        self.requests: list[LLMRequest] = []
        self.hold: asyncio.Event | None = None
        self.asked = asyncio.Event()

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls()

    def script(self, output_name: str, *answers: Answer) -> None:
        self._answers[output_name].extend(answers)

    async def complete(self, request: LLMRequest) -> LLMResponse:
        self.requests.append(request)
        self.asked.set()
        if self.hold is not None:
            await self.hold.wait()
        queue = self._answers[request.output_name]
        if not queue:
            raise LLMRequestError(f"no scripted answer left for {request.output_name}")
        answer = queue.popleft()
        if isinstance(answer, Exception):
            raise answer
        return LLMResponse(
            model=SCRIPTED_MODEL, structured=answer, stop_reason="tool_use", usage=USAGE
        )

    async def close(self) -> None:
        """Nothing to release."""
