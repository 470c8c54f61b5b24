"""An in-memory provider, for the benchmark only: it isolates what the saga's orchestration
costs from what the database clients and servers cost on the same two cores."""

from __future__ import annotations

from typing import ClassVar, Self

from nexpo_workflows.config import Settings
from nexpo_workflows.providers import DatabaseProvider, DuplicateEmailError, UserRecord


class MemoryProvider(DatabaseProvider):
    name: ClassVar[str] = "memory"

    def __init__(self) -> None:
        self.users: dict[str, UserRecord] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls()

    async def connect(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def create_user(self, user: UserRecord) -> None:
        if user.id in self.users:
            return
        if any(existing.email == user.email for existing in self.users.values()):
            raise DuplicateEmailError(f"memory: a user with email {user.email} exists")
        self.users[user.id] = user

    async def get_user(self, user_id: str) -> UserRecord | None:
        return self.users.get(user_id)

    async def delete_user(self, user_id: str) -> bool:
        return self.users.pop(user_id, None) is not None
