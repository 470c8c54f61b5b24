"""Object stores, chosen by configuration (``ENABLE_<NAME>`` flags)."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import NamedTuple

from nexpo_workflows.config import Settings
from nexpo_workflows.storage.base import (
    ChecksumMismatchError,
    ObjectInfo,
    ObjectStore,
    StoreUnavailableError,
)

__all__ = [
    "STORES",
    "ChecksumMismatchError",
    "ObjectInfo",
    "ObjectStore",
    "StoreUnavailableError",
    "enabled_store_names",
    "enabled_stores",
]


class Registration(NamedTuple):
    enabled: Callable[[Settings], bool]
    # "module:Class", imported only when enabled (each cloud's client is an extra).
    implementation: str


# A new store is one module plus one line here (and its settings). The first enabled holds
# the failover routing records: the pair, when enabled, keeps them on both of its sides.
STORES: dict[str, Registration] = {
    "pair": Registration(lambda s: s.enable_store_pair, "pair:StorePair"),
    "s3": Registration(lambda s: s.enable_s3, "s3:S3Store"),
    "azure": Registration(lambda s: s.enable_azure_blob, "azure:AzureBlobStore"),
    "gcs": Registration(lambda s: s.enable_gcs, "gcs:GCSStore"),
    "local": Registration(lambda s: bool(s.enable_local_store), "local:LocalStore"),
}


def enabled_store_names(settings: Settings) -> list[str]:
    names = [name for name, reg in STORES.items() if reg.enabled(settings)]
    if settings.enable_local_store is None and not names:
        names = ["local"]  # the embedded default when no cloud is configured
    return names


def load_store_class(name: str) -> type[ObjectStore]:
    module, _, cls = STORES[name].implementation.partition(":")
    store_class: type[ObjectStore] = getattr(
        import_module(f"nexpo_workflows.storage.{module}"), cls
    )
    return store_class


def enabled_stores(settings: Settings) -> dict[str, ObjectStore]:
    """Fresh, unconnected instances of every store the settings enable."""
    return {
        name: load_store_class(name).from_settings(settings)
        for name in enabled_store_names(settings)
    }
