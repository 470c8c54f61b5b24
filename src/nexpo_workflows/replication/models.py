"""Inputs and outputs of ReplicateObjectWorkflow."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field


class ReplicateInput(BaseModel):
    key: str = Field(min_length=1, max_length=1024)
    source: str = Field(min_length=1)
    # None: every other enabled store.
    targets: list[str] | None = None


class ReplicationPlanInput(BaseModel):
    source: str
    targets: list[str] | None = None


class ReplicationPlan(BaseModel):
    source: str
    targets: list[str]


class CopyObjectInput(BaseModel):
    key: str
    source: str
    target: str


class ReplicaStatus(StrEnum):
    COPIED = "copied"
    ALREADY_PRESENT = "already_present"
    FAILED = "failed"


class ReplicaOutcome(BaseModel):
    store: str
    status: ReplicaStatus
    sha256: str | None = None
    size: int | None = None
    error: str | None = None


class ReplicateResult(BaseModel):
    key: str
    source: str
    sha256: str | None
    replicas: list[ReplicaOutcome]

    @property
    def complete(self) -> bool:
        return all(r.status is not ReplicaStatus.FAILED for r in self.replicas)
