"""Every workflow and activity the package defines: add a new one here and nowhere else."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from temporalio import workflow

from nexpo_workflows.content.activities import ContentActivities
from nexpo_workflows.content.workflow import AIContentPipelineWorkflow
from nexpo_workflows.decisions.activities import DecisionActivities
from nexpo_workflows.decisions.workflow import AIDecisionWorkflow
from nexpo_workflows.failover.activities import FailoverActivities
from nexpo_workflows.failover.workflow import FailoverWorkflow
from nexpo_workflows.health.activities import HealthActivities
from nexpo_workflows.health.workflow import HealthCheckWorkflow
from nexpo_workflows.provisioning.activities import ProvisioningActivities
from nexpo_workflows.provisioning.workflows import (
    DeprovisionResourcesWorkflow,
    ProvisionResourcesWorkflow,
)
from nexpo_workflows.replication.activities import ReplicationActivities
from nexpo_workflows.replication.workflow import ReplicateObjectWorkflow
from nexpo_workflows.services import Services
from nexpo_workflows.sync.activities import SyncActivities
from nexpo_workflows.sync.workflow import DataSyncWorkflow
from nexpo_workflows.users.steps import UserActivities, UserSteps
from nexpo_workflows.users.workflows import UserOffboardingWorkflow, UserOnboardingWorkflow

WORKFLOWS: Sequence[type] = (
    HealthCheckWorkflow,
    UserOnboardingWorkflow,
    UserOffboardingWorkflow,
    ReplicateObjectWorkflow,
    ProvisionResourcesWorkflow,
    DeprovisionResourcesWorkflow,
    FailoverWorkflow,
    DataSyncWorkflow,
    AIDecisionWorkflow,
    AIContentPipelineWorkflow,
)
WORKFLOW_NAMES: frozenset[str] = frozenset(
    defn.name for defn in map(workflow._Definition.must_from_class, WORKFLOWS) if defn.name
)


def activities(services: Services) -> list[Callable[..., Any]]:
    health = HealthActivities(services.checker)
    users = UserActivities(services.settings, UserSteps(services.providers))
    replication = ReplicationActivities(services)
    return [
        health.list_health_dependencies,
        health.check_dependency,
        *users.all(),
        *replication.all(),
        *ProvisioningActivities(services).all(),
        *FailoverActivities(services).all(),
        *SyncActivities(services).all(),
        *DecisionActivities(services).all(),
        *ContentActivities(services).all(),
    ]
