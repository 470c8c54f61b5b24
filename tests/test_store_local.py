"""The local filesystem store (the embedded default)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nexpo_workflows.config import Settings
from nexpo_workflows.storage import ObjectStore, enabled_store_names
from nexpo_workflows.storage.local import LocalStore
from tests.store_contract import StoreContract, chunks_of


class TestLocalStore(StoreContract):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[ObjectStore]:
        store = LocalStore(tmp_path / "objects")
        await store.connect()
        yield store
        await store.close()

    @pytest.fixture
    def unreachable_store(self, tmp_path: Path) -> ObjectStore:
        (tmp_path / "a-file").write_text("")
        return LocalStore(tmp_path / "a-file" / "objects")

    async def test_keys_cannot_escape_the_store(self, store: ObjectStore) -> None:
        with pytest.raises(ValueError, match="invalid object key"):
            await store.put("../outside", chunks_of(b"x"))


def test_the_local_store_is_the_default_until_a_cloud_is_enabled() -> None:
    assert enabled_store_names(Settings(_env_file=None)) == ["local"]
    assert enabled_store_names(Settings(_env_file=None, enable_s3=True)) == ["s3"]
