"""Inputs and outputs of tenant provisioning and deprovisioning."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, Field

# Lowercase letters, digits and hyphens only: the id becomes part of object keys and of quoted
# SQL identifiers, so nothing in it can escape either.
TenantId = Annotated[str, Field(pattern=r"^[a-z0-9-]{3,40}$")]
# Who made a resource: the provisioning run's id, written into the resource by its create
# (a marker's content, a schema's comment, a row), so a compensation removes only what its
# own run made, even when the create's answer was lost. Quoted into SQL, hence the pattern.
Owner = Annotated[str, Field(pattern=r"^[A-Za-z0-9-]{1,64}$")]


class ResourceKind(StrEnum):
    BUCKET_SPACE = "bucket_space"
    DB_SCHEMA = "db_schema"
    RESOURCE_RECORD = "resource_record"


class Resource(BaseModel):
    """One thing provisioned for a tenant: ``target`` names the store or provider."""

    kind: ResourceKind
    target: str

    def label(self) -> str:
        return f"{self.kind}:{self.target}"


class ProvisionInput(BaseModel):
    tenant_id: TenantId


class DeprovisionInput(BaseModel):
    tenant_id: TenantId


class PlanProvisioningInput(BaseModel):
    tenant_id: TenantId


class ProvisioningPlan(BaseModel):
    """The worker's enabled stores and SQL providers, recorded in history so replays agree."""

    stores: list[str]
    providers: list[str]
    # Where the tenant's record lives: the first enabled store (None when there is none).
    record_store: str | None
    step_timeout_seconds: float
    step_attempts: int
    compensation_attempts: int

    def resources(self) -> list[Resource]:
        """Everything a tenant gets, in creation order; the record comes last."""
        found = [Resource(kind=ResourceKind.BUCKET_SPACE, target=s) for s in self.stores]
        found += [Resource(kind=ResourceKind.DB_SCHEMA, target=p) for p in self.providers]
        if self.record_store is not None:
            found.append(Resource(kind=ResourceKind.RESOURCE_RECORD, target=self.record_store))
        return found


class BucketSpaceInput(BaseModel):
    tenant_id: TenantId
    store: str
    # A create marks the space with it; a delete removes the space only if it bears it.
    # None: a delete removes the space whoever made it (deprovisioning).
    owner: Owner | None = None


class DbSchemaInput(BaseModel):
    tenant_id: TenantId
    provider: str
    owner: Owner | None = None


class WriteResourceRecordInput(BaseModel):
    tenant_id: TenantId
    store: str
    resources: list[Resource]
    owner: Owner | None = None


class ResourceRecordInput(BaseModel):
    tenant_id: TenantId
    store: str
    owner: Owner | None = None


class ResourceRecord(BaseModel):
    """``tenants/<tenant>/resources.json``: what exists for the tenant."""

    tenant_id: TenantId
    provisioned_resources: list[Resource]
    # The run that first wrote it (None: written before records had owners).
    owner: Owner | None = None


class ReadResourceRecordResult(BaseModel):
    record: ResourceRecord | None


class StepResult(BaseModel):
    """``changed``: a create made the resource, in this attempt or an earlier one of the same
    run (False: it was there, made by someone else) or a delete removed it (False: it was
    absent, or not the owner's to remove)."""

    changed: bool


class ResourceStatus(StrEnum):
    CREATED = "created"
    # There before this run: the run neither made it nor undoes it.
    EXISTED = "existed"
    COMPENSATED = "compensated"
    FAILED = "failed"
    COMPENSATION_FAILED = "compensation_failed"
    NOT_STARTED = "not_started"
    DELETED = "deleted"
    ABSENT = "absent"


class ResourceOutcome(BaseModel):
    resource: Resource
    status: ResourceStatus
    error: str | None = None
    compensation_error: str | None = None


class ProvisioningStatus(StrEnum):
    COMPLETED = "completed"
    ROLLED_BACK = "rolled_back"
    # A compensation kept failing: a resource may remain; the outcomes name which.
    ROLLBACK_INCOMPLETE = "rollback_incomplete"
    FAILED = "failed"


class ProvisioningResult(BaseModel):
    tenant_id: str
    status: ProvisioningStatus
    resources: list[ResourceOutcome]

    def summary(self) -> str:
        parts = [
            f"{o.resource.label()}: {o.status}" + (f" ({o.error})" if o.error else "")
            for o in self.resources
        ]
        return f"tenant {self.tenant_id} {self.status}: " + "; ".join(parts)
