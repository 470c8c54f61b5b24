"""Inputs and outputs of the health check."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field


class DependencyState(StrEnum):
    UP = "up"
    DOWN = "down"


class DependencyStatus(BaseModel):
    name: str
    status: DependencyState
    latency_ms: float = Field(ge=0)
    error: str | None = None


class HealthReport(BaseModel):
    checked_at: datetime
    dependencies: list[DependencyStatus]

    @property
    def healthy(self) -> bool:
        return all(d.status is DependencyState.UP for d in self.dependencies)


class HealthCheckInput(BaseModel):
    # None checks every dependency the worker has enabled.
    dependencies: list[str] | None = None
    timeout_seconds: float = Field(default=5.0, gt=0, le=300)


class ListDependenciesInput(BaseModel):
    pass


class DependencyCheckInput(BaseModel):
    name: str
    timeout_seconds: float = Field(default=5.0, gt=0, le=300)
