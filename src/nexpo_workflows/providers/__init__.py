"""Database providers, chosen by configuration (``ENABLE_<NAME>`` flags)."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import NamedTuple

from nexpo_workflows.config import Settings
from nexpo_workflows.providers.base import (
    DatabaseProvider,
    DatasetRecord,
    DuplicateEmailError,
    InvalidRecordError,
    ProviderUnavailableError,
    RecordVersion,
    UserRecord,
)

__all__ = [
    "PROVIDERS",
    "DatabaseProvider",
    "DatasetRecord",
    "DuplicateEmailError",
    "InvalidRecordError",
    "ProviderUnavailableError",
    "RecordVersion",
    "UserRecord",
    "enabled_provider_names",
    "enabled_providers",
]


class Registration(NamedTuple):
    enabled: Callable[[Settings], bool]
    # "module:Class", imported only when enabled, so a provider's client library is needed
    # only by those who turn it on (each is an extra of the package).
    implementation: str
    # The guide's activity names: create_<label>_user, delete_<label>_user.
    activity_label: str


# A new provider is one module plus one line here (and its settings). Order = saga order.
PROVIDERS: dict[str, Registration] = {
    "postgres": Registration(lambda s: s.enable_postgres, "postgres:PostgresProvider", "postgres"),
    "mongodb": Registration(lambda s: s.enable_mongodb, "mongodb:MongoProvider", "mongo"),
    "cosmosdb": Registration(lambda s: s.enable_cosmosdb, "cosmosdb:CosmosProvider", "cosmos"),
    "supabase": Registration(lambda s: s.enable_supabase, "supabase:SupabaseProvider", "supabase"),
    "sqlserver": Registration(
        lambda s: s.enable_sqlserver, "sqlserver:SQLServerProvider", "sqlserver"
    ),
    "sqlite": Registration(lambda s: bool(s.enable_sqlite), "sqlite:SQLiteProvider", "sqlite"),
}


def enabled_provider_names(settings: Settings) -> list[str]:
    names = [name for name, reg in PROVIDERS.items() if reg.enabled(settings)]
    if settings.enable_sqlite is None and not names:
        names = ["sqlite"]  # the embedded default when nothing else is configured
    return names


def load_provider_class(name: str) -> type[DatabaseProvider]:
    module, _, cls = PROVIDERS[name].implementation.partition(":")
    provider_class: type[DatabaseProvider] = getattr(
        import_module(f"nexpo_workflows.providers.{module}"), cls
    )
    return provider_class


def enabled_providers(settings: Settings) -> dict[str, DatabaseProvider]:
    """Fresh, unconnected instances of every provider the settings enable."""
    return {
        name: load_provider_class(name).from_settings(settings)
        for name in enabled_provider_names(settings)
    }
