"""A language model whose answers the test writes: the workflow's branches without an API."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self

from nexpo_workflows.config import Settings
from nexpo_workflows.llm import LanguageModel, LLMRequest, LLMRequestError, LLMResponse, TokenUsage

SCRIPTED_USAGE = TokenUsage(input_tokens=10, output_tokens=5)


class ScriptedModel(LanguageModel):
    """Answers each structured request with the next answer queued for its ``output_name``
    (a dict is the tool's input; an exception is raised), and records every request.

    A request whose output name is in ``held`` waits until that event is set, so a test can
    look at the workflow while the model "thinks"; ``asked`` is set by the first request. A
    request with nothing left to answer is refused (non-retryable), so a script that is too
    short fails the test at once.
    """

    name: ClassVar[str] = "scripted"

    def __init__(
        self,
        answers: Mapping[str, Sequence[dict[str, Any] | Exception]] | None = None,
        held: Mapping[str, asyncio.Event] | None = None,
    ) -> None:
        self.answers = {name: list(queue) for name, queue in (answers or {}).items()}
        self.held = dict(held or {})
        self.requests: list[LLMRequest] = []
        self.asked = asyncio.Event()

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        raise NotImplementedError("built by tests with their script")

    def script(self, output_name: str, *answers: dict[str, Any] | Exception) -> None:
        """Queue more answers for ``output_name``."""
        self.answers.setdefault(output_name, []).extend(answers)

    def requests_for(self, output_name: str) -> list[LLMRequest]:
        return [r for r in self.requests if r.output_name == output_name]

    async def complete(self, request: LLMRequest) -> LLMResponse:
        self.requests.append(request)
        self.asked.set()
        if request.output_name in self.held:
            await self.held[request.output_name].wait()
        queue = self.answers.get(request.output_name)
        if not queue:
            raise LLMRequestError(f"the script has no answer left for {request.output_name}")
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return LLMResponse(
            model=self.name, structured=answer, stop_reason="tool_use", usage=SCRIPTED_USAGE
        )

    async def close(self) -> None:
        """Nothing to release."""
