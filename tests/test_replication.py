"""ReplicateObjectWorkflow across the local store, S3 (moto), Azure (Azurite) and GCS
(fake-gcs-server), all real servers; every copy read back from each store directly."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from nexpo_workflows.api.app import create_app
from nexpo_workflows.api.deps import GatewayState
from nexpo_workflows.config import Settings
from nexpo_workflows.ports import free_port
from nexpo_workflows.replication.models import ReplicaStatus, ReplicateInput, ReplicateResult
from nexpo_workflows.replication.workflow import ReplicateObjectWorkflow
from nexpo_workflows.services import Services
from nexpo_workflows.storage import enabled_stores
from nexpo_workflows.worker import build_worker
from tests.conftest import API_KEY, run_cli
from tests.servers.azurite import running_azurite
from tests.servers.gcs import running_gcs
from tests.servers.s3 import running_s3
from tests.store_contract import chunks_of, read_all

CLOUDS = ["s3", "azure", "gcs"]


@pytest.fixture(scope="module")
async def cloud_settings() -> AsyncIterator[dict[str, Any]]:
    azurite_port = free_port()
    async with (
        running_s3() as s3_endpoint,
        running_azurite(port=azurite_port) as azure_connection,
        running_gcs() as gcs_endpoint,
    ):
        yield {
            "enable_local_store": True,
            "enable_s3": True,
            "s3_endpoint_url": s3_endpoint,
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
            "enable_azure_blob": True,
            "azure_storage_connection_string": azure_connection,
            "enable_gcs": True,
            "gcs_endpoint_url": gcs_endpoint,
            "gcs_project": "nexpo-test",
            "azurite_port": azurite_port,
        }


@pytest.fixture
def replication_settings(
    make_settings: Callable[..., Settings], cloud_settings: dict[str, Any]
) -> Settings:
    bucket = f"replica-{uuid.uuid4().hex[:12]}"
    values = {k: v for k, v in cloud_settings.items() if k != "azurite_port"}
    return make_settings(**values, s3_bucket=bucket, azure_blob_container=bucket, gcs_bucket=bucket)


async def replicate(client: Client, settings: Settings, input: ReplicateInput) -> ReplicateResult:
    return await client.execute_workflow(
        ReplicateObjectWorkflow.run,
        input,
        id=f"replicate-{uuid.uuid4()}",
        task_queue=settings.temporal_task_queue,
    )


async def test_an_object_is_copied_everywhere_and_verified(
    client: Client, replication_settings: Settings
) -> None:
    data = os.urandom(5 * 1024 * 1024 + 7)
    services = Services.from_settings(replication_settings, client)
    try:
        await services.stores["local"].put("reports/q3.bin", chunks_of(data))
        async with build_worker(client, services):
            first = await replicate(
                client, replication_settings, ReplicateInput(key="reports/q3.bin", source="local")
            )
            again = await replicate(
                client, replication_settings, ReplicateInput(key="reports/q3.bin", source="local")
            )
    finally:
        await services.close()
    digest = hashlib.sha256(data).hexdigest()
    assert first.sha256 == digest
    assert {r.store: r.status for r in first.replicas} == dict.fromkeys(
        CLOUDS, ReplicaStatus.COPIED
    )
    assert {r.store: r.status for r in again.replicas} == dict.fromkeys(
        CLOUDS, ReplicaStatus.ALREADY_PRESENT
    )
    readers = enabled_stores(replication_settings)  # fresh clients: read what each cloud holds
    try:
        for name in CLOUDS:
            assert await read_all(readers[name], "reports/q3.bin") == data
            info = await readers[name].head("reports/q3.bin")
            assert info is not None
            assert info.sha256 == digest
    finally:
        for store in readers.values():
            await store.close()


async def refused(client: Client, settings: Settings, input: ReplicateInput) -> ApplicationError:
    """Run a replication that must fail; its failure."""
    services = Services.from_settings(settings, client)
    try:
        async with build_worker(client, services):
            with pytest.raises(WorkflowFailureError) as caught:
                await replicate(client, settings, input)
    finally:
        await services.close()
    cause = caught.value.cause
    assert isinstance(cause, ApplicationError)
    return cause


async def test_a_missing_source_object_fails_at_once(
    client: Client, replication_settings: Settings
) -> None:
    cause = await refused(
        client,
        replication_settings,
        ReplicateInput(key="nothing-here", source="local", targets=["s3"]),
    )
    assert cause.type == "ReplicationIncomplete"
    result = ReplicateResult.model_validate(cause.details[0])
    assert result.replicas[0].status is ReplicaStatus.FAILED
    assert "has no object" in (result.replicas[0].error or "")


async def test_an_unknown_store_is_refused(client: Client, replication_settings: Settings) -> None:
    cause = await refused(
        client,
        replication_settings,
        ReplicateInput(key="k", source="local", targets=["dropbox"]),
    )
    assert cause.type == "UnknownStore"
    assert "dropbox" in cause.message


async def test_gateway_and_cli_start_a_replication(
    client: Client,
    replication_settings: Settings,
    cli: list[str],
    cli_env: dict[str, str],
    cloud_settings: dict[str, Any],
) -> None:
    services = Services.from_settings(replication_settings, client)
    app = create_app(GatewayState(services, client, metrics_url=None))
    transport = httpx.ASGITransport(app=app)
    try:
        await services.stores["local"].put("shared/a.txt", chunks_of(b"to every cloud"))
        async with (
            build_worker(client, services),
            httpx.AsyncClient(
                transport=transport, base_url="http://gw", headers={"X-API-Key": API_KEY}
            ) as http,
        ):
            refused = await http.post(
                "/api/cloud/replicate", json={"key": "shared/a.txt", "source": "dropbox"}
            )
            assert refused.status_code == 422
            assert "dropbox" in refused.text
            response = await http.post(
                "/api/cloud/replicate",
                json={"key": "shared/a.txt", "source": "local", "targets": ["s3"]},
            )
            assert response.status_code == 202, response.text
            done = await client.get_workflow_handle(
                response.json()["workflowId"], result_type=ReplicateResult
            ).result()
            assert [r.status for r in done.replicas] == [ReplicaStatus.COPIED]

            env = {
                **cli_env,
                "DATA_DIR": str(replication_settings.data_dir),
                "ENABLE_LOCAL_STORE": "true",
                "ENABLE_S3": "true",
                "S3_ENDPOINT_URL": cloud_settings["s3_endpoint_url"],
                "S3_BUCKET": replication_settings.s3_bucket,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
            }
            shown = await run_cli(
                [*cli, "cloud", "replicate", "shared/a.txt", "--source", "local", "--target", "s3"],
                env,
            )
    finally:
        await services.close()
    assert shown.returncode == 0, shown.stderr
    assert "already_present" in shown.stdout
