"""The model used when no API key is configured: deterministic, and says it is offline.

It lets the AI workflows be tried end to end without a network. Structured answers are the
simplest instance of the requested JSON schema (first enum value, minimum of a range, one
item per required array), so a workflow's validation and branching run as with Claude.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar, Self

from nexpo_workflows.config import Settings
from nexpo_workflows.llm.base import LanguageModel, LLMRequest, LLMResponse, TokenUsage

OFFLINE_MODEL = "offline"
OFFLINE_NOTICE = "[offline model: no ANTHROPIC_API_KEY is set, this text is not from Claude]"


def _instance(schema: dict[str, Any], definitions: dict[str, Any], label: str) -> Any:
    if "$ref" in schema:
        return _instance(definitions[schema["$ref"].rsplit("/", 1)[-1]], definitions, label)
    for combinator in ("anyOf", "oneOf", "allOf"):
        if combinator in schema:
            return _instance(schema[combinator][0], definitions, label)
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type", "object")
    if kind == "object":
        properties: dict[str, Any] = schema.get("properties", {})
        return {
            name: _instance(sub, definitions, name)
            for name, sub in properties.items()
            if name in schema.get("required", properties)
        }
    if kind == "array":
        count = max(1, schema.get("minItems", 1))
        return [_instance(schema.get("items", {}), definitions, label) for _ in range(count)]
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        return int(low) if kind == "integer" else float(low)
    if kind == "boolean":
        return False
    text = f"{OFFLINE_NOTICE} {label}"
    return text[: schema["maxLength"]] if "maxLength" in schema else text


class OfflineModel(LanguageModel):
    name: ClassVar[str] = OFFLINE_MODEL

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls()

    async def complete(self, request: LLMRequest) -> LLMResponse:
        prompt = "\n".join(message.content for message in request.messages)
        digest = hashlib.sha256(prompt.encode()).hexdigest()[:12]
        structured = None
        if request.output_schema is not None:
            schema = request.output_schema
            structured = _instance(schema, schema.get("$defs", {}), request.output_name)
        return LLMResponse(
            model=OFFLINE_MODEL,
            text=f"{OFFLINE_NOTICE} Answer {digest} to a prompt of {len(prompt)} characters.",
            structured=structured,
            stop_reason="tool_use" if structured is not None else "end_turn",
            usage=TokenUsage(input_tokens=len(prompt.split()), output_tokens=0),
            offline=True,
        )

    async def close(self) -> None:
        """Nothing to release."""
