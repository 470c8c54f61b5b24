"""Durable, compensating, observable workflows on Temporal across databases and clouds.

The public names are loaded on first use: the workflow sandbox re-imports a workflow's parent
packages for every run, so this module must cost nothing to import.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nexpo_workflows.client import TemporalUnavailableError, connect
    from nexpo_workflows.config import ConfigError, Settings, load_settings

__version__ = "0.1.0"

_PUBLIC = {
    "ConfigError": "nexpo_workflows.config",
    "Settings": "nexpo_workflows.config",
    "load_settings": "nexpo_workflows.config",
    "TemporalUnavailableError": "nexpo_workflows.client",
    "connect": "nexpo_workflows.client",
}

__all__ = [
    "ConfigError",
    "Settings",
    "TemporalUnavailableError",
    "__version__",
    "connect",
    "load_settings",
]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'nexpo_workflows' has no attribute {name!r}")
    return getattr(import_module(_PUBLIC[name]), name)
