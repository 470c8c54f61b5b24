"""Erasure of a source row's copies: every sync target of every dataset read from the row's
table, and the dataset's quarantine at the source (which keeps a refused row whole).

Offboarding calls it once the user is deleted from every provider, so nothing of the user
stays in a database the package writes, without waiting for the next sync. The sync itself
would remove the copies too (the delete is in the source's log); this is what makes erasure
immediate and shown in the offboarding result.
"""

from __future__ import annotations

from pydantic import BaseModel

from nexpo_workflows.config import Settings
from nexpo_workflows.providers import DatabaseProvider
from nexpo_workflows.sync.datasets import (
    QUARANTINE_PREFIX,
    DatasetConfigError,
    dataset_configs,
    plan_dataset,
)


class EraseCopiesInput(BaseModel):
    table: str
    key: str


class ErasedCopy(BaseModel):
    dataset: str
    # A sync target, or the source (its quarantine of the dataset).
    provider: str
    removed: int


class EraseCopiesResult(BaseModel):
    copies: list[ErasedCopy]


async def erase_copies(
    settings: Settings, providers: dict[str, DatabaseProvider], input: EraseCopiesInput
) -> EraseCopiesResult:
    """Delete the row's records from every target and quarantine (idempotent: a retry finds
    nothing left and says so). ProviderUnavailableError when one cannot be reached."""
    copies = []
    for name, dataset in dataset_configs(settings).items():
        if dataset.source.table != input.table:
            continue
        try:
            plan = plan_dataset(settings, list(providers), name)
        except DatasetConfigError:
            continue  # not runnable here: no copy of it was made from here
        for target in plan.targets:
            removed = await providers[target].delete_records(name, [input.key])
            copies.append(ErasedCopy(dataset=name, provider=target, removed=removed))
        removed = await providers[plan.source].delete_records(QUARANTINE_PREFIX + name, [input.key])
        copies.append(ErasedCopy(dataset=name, provider=plan.source, removed=removed))
    return EraseCopiesResult(copies=copies)
