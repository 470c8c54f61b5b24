"""Language models, chosen by configuration: Claude with ANTHROPIC_API_KEY, else offline."""

from __future__ import annotations

from importlib import import_module

from nexpo_workflows.config import Settings
from nexpo_workflows.llm.base import (
    ChatMessage,
    LanguageModel,
    LLMRequest,
    LLMRequestError,
    LLMResponse,
    LLMUnavailableError,
    TokenUsage,
)

__all__ = [
    "MODELS",
    "ChatMessage",
    "LLMRequest",
    "LLMRequestError",
    "LLMResponse",
    "LLMUnavailableError",
    "LanguageModel",
    "TokenUsage",
    "configured_model",
]

# A new vendor is one module plus one line here (and its settings): "module:Class", imported
# only when chosen, so its SDK is needed only by those who use it.
MODELS: dict[str, str] = {
    "anthropic": "anthropic:AnthropicModel",
    "offline": "offline:OfflineModel",
}


def configured_model_name(settings: Settings) -> str:
    return "anthropic" if settings.anthropic_api_key is not None else "offline"


def configured_model(settings: Settings) -> LanguageModel:
    """A fresh, unconnected instance of the model the settings choose."""
    module, _, cls = MODELS[configured_model_name(settings)].partition(":")
    model_class: type[LanguageModel] = getattr(import_module(f"nexpo_workflows.llm.{module}"), cls)
    return model_class.from_settings(settings)
