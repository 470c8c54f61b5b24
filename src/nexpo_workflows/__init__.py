"""Durable, compensating, observable workflows on Temporal across databases and clouds."""

from nexpo_workflows.client import TemporalUnavailableError, connect
from nexpo_workflows.config import ConfigError, Settings, load_settings

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "Settings",
    "TemporalUnavailableError",
    "__version__",
    "connect",
    "load_settings",
]
