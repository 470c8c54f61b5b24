"""The interface every database provider implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar


class ProviderUnavailableError(Exception):
    """The backend cannot be reached or answered with a transient error; retrying may help."""


class DatabaseProvider(ABC):
    """A database the workflows write to: one implementation module per backend."""

    name: ClassVar[str]

    @abstractmethod
    async def connect(self) -> None:
        """Open connections and create the schema if it is missing (idempotent)."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections; safe to call twice."""

    @abstractmethod
    async def ping(self) -> None:
        """One cheap round trip; raises ProviderUnavailableError when the backend is down."""
