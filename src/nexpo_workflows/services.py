"""What activities and the edges need at run time, built once per process from the settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from temporalio.client import Client

from nexpo_workflows.config import Settings
from nexpo_workflows.health.checks import DependencyChecker
from nexpo_workflows.llm import LanguageModel, configured_model
from nexpo_workflows.notify import Notifier, enabled_notifiers
from nexpo_workflows.providers import DatabaseProvider, enabled_providers
from nexpo_workflows.storage import ObjectStore, enabled_stores
from nexpo_workflows.sync.read_ahead import ReadAheadProcess
from nexpo_workflows.users.passwords import PasswordHashing


@dataclass
class Services:
    settings: Settings
    client: Client | None = None
    providers: dict[str, DatabaseProvider] = field(default_factory=dict)
    stores: dict[str, ObjectStore] = field(default_factory=dict)
    language_model: LanguageModel | None = None
    notifiers: dict[str, Notifier] = field(default_factory=dict)
    # Shared by every request of the process: its queue bound holds across requests.
    passwords: PasswordHashing = field(init=False)
    # The process the sync's copies read ahead in (started on first use); None: they read in
    # this one.
    read_ahead: ReadAheadProcess | None = field(init=False)

    def __post_init__(self) -> None:
        self.passwords = PasswordHashing.from_settings(self.settings)
        self.read_ahead = (
            ReadAheadProcess(self.settings) if self.settings.sync_read_ahead_process else None
        )

    @classmethod
    def from_settings(cls, settings: Settings, client: Client | None = None) -> Services:
        # Providers and stores connect lazily: one that is down at start shows in the health
        # check instead of keeping the worker from starting.
        return cls(
            settings=settings,
            client=client,
            providers=enabled_providers(settings),
            stores=enabled_stores(settings),
            language_model=configured_model(settings),
            notifiers=enabled_notifiers(settings),
        )

    @property
    def checker(self) -> DependencyChecker:
        return DependencyChecker({**self.providers, **self.stores}, self.client)

    async def close(self) -> None:
        self.passwords.close()
        if self.read_ahead is not None:
            await self.read_ahead.close()
        for provider in self.providers.values():
            await provider.close()
        for store in self.stores.values():
            await store.close()
        if self.language_model is not None:
            await self.language_model.close()
        for notifier in self.notifiers.values():
            await notifier.close()
