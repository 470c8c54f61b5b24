"""A worker process for the chaos suite: the package's worker, with random provider faults.

Run as ``python -m tests.chaos_worker``; configured like ``nexpo-workflows worker`` plus
``CHAOS_FAULT_RATE`` (probability that a provider call fails, before or after its write).
The databases are real; only when a call fails is chosen at random.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Sequence

from nexpo_workflows.client import connect
from nexpo_workflows.config import load_settings
from nexpo_workflows.providers import (
    DatabaseProvider,
    DatasetRecord,
    UserRecord,
    enabled_providers,
)
from nexpo_workflows.services import Services
from nexpo_workflows.worker import build_worker, run_worker_until, stop_on_signals
from tests.faults import FaultyProvider, InjectedFailure


class RandomFaults(FaultyProvider):
    def __init__(self, inner: DatabaseProvider, rate: float) -> None:
        super().__init__(inner)
        self.rate = rate

    async def create_user(self, user: UserRecord) -> None:
        if random.random() < self.rate / 2:
            raise InjectedFailure(f"{self.name}: chaos before the write")
        await self.inner.create_user(user)
        if random.random() < self.rate / 2:
            raise InjectedFailure(f"{self.name}: chaos after the write")

    async def delete_user(self, user_id: str) -> bool:
        if random.random() < self.rate:
            raise InjectedFailure(f"{self.name}: chaos on delete")
        return await self.inner.delete_user(user_id)

    async def upsert_records(self, dataset: str, records: Sequence[DatasetRecord]) -> None:
        if random.random() < self.rate / 2:
            raise InjectedFailure(f"{self.name}: chaos before the records write")
        await self.inner.upsert_records(dataset, records)
        if random.random() < self.rate / 2:
            raise InjectedFailure(f"{self.name}: chaos after the records write")


async def main() -> None:
    settings = load_settings()
    rate = float(os.environ.get("CHAOS_FAULT_RATE", "0.1"))
    stop = asyncio.Event()
    stop_on_signals(stop)
    client = await connect(settings)
    providers: dict[str, DatabaseProvider] = {
        name: RandomFaults(provider, rate) for name, provider in enabled_providers(settings).items()
    }
    services = Services(settings=settings, client=client, providers=providers)
    try:
        await run_worker_until(build_worker(client, services), stop)
    finally:
        await services.close()


if __name__ == "__main__":
    asyncio.run(main())
