"""Database providers, chosen by configuration (``ENABLE_<NAME>`` flags)."""

from __future__ import annotations

from collections.abc import Callable

from nexpo_workflows.config import Settings
from nexpo_workflows.providers.base import DatabaseProvider, ProviderUnavailableError
from nexpo_workflows.providers.sqlite import SQLiteProvider

__all__ = ["DatabaseProvider", "ProviderUnavailableError", "enabled_providers"]

# name -> (is it enabled, how to build it). A new provider is one module plus one line here.
_REGISTRY: dict[str, tuple[Callable[[Settings], bool], Callable[[Settings], DatabaseProvider]]] = {
    SQLiteProvider.name: (lambda s: s.enable_sqlite, SQLiteProvider.from_settings),
}


def enabled_providers(settings: Settings) -> dict[str, DatabaseProvider]:
    """Fresh, unconnected instances of every provider the settings enable."""
    return {
        name: build(settings) for name, (enabled, build) in _REGISTRY.items() if enabled(settings)
    }
