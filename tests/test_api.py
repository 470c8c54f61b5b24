"""The HTTP gateway against a real Temporal server and an in-process worker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from temporalio.client import Client

from nexpo_workflows.api.app import create_app
from nexpo_workflows.api.deps import GatewayState
from nexpo_workflows.config import Settings
from nexpo_workflows.health.models import HealthCheckInput
from nexpo_workflows.health.workflow import HealthCheckWorkflow
from nexpo_workflows.ports import free_port
from nexpo_workflows.services import Services
from tests.conftest import API_KEY


def gateway(services: Services, client: Client | None) -> httpx.AsyncClient:
    app = create_app(GatewayState(services, client, metrics_url=None))
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://gateway",
        headers={"X-API-Key": API_KEY},
    )


@pytest.fixture
async def http(services: Services, client: Client) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway(services, client) as http_client:
        yield http_client


async def test_healthz_answers(http: httpx.AsyncClient) -> None:
    response = await http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.usefixtures("worker")
async def test_readyz_runs_the_health_check_through_a_worker(http: httpx.AsyncClient) -> None:
    response = await http.get("/readyz")
    assert response.status_code == 200, response.text
    names = {d["name"]: d["status"] for d in response.json()["dependencies"]}
    assert names == {"temporal": "up", "sqlite": "up", "local": "up"}


async def test_readyz_is_503_with_a_reason_when_no_worker_answers(
    client: Client, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(health_check_timeout_seconds=0.5, health_check_worker_wait_seconds=1)
    async with gateway(Services.from_settings(settings, client), client) as http:
        response = await http.get("/readyz")
    assert response.status_code == 503
    assert "is a worker running?" in response.json()["detail"]


async def test_readyz_checks_directly_when_temporal_is_disabled(
    make_settings: Callable[..., Settings],
) -> None:
    services = Services.from_settings(make_settings(enable_temporal=False))
    async with gateway(services, None) as http:
        ready = await http.get("/readyz")
        workflow = await http.get("/api/workflows/anything")
    await services.close()
    assert ready.status_code == 200
    assert [d["name"] for d in ready.json()["dependencies"]] == ["sqlite", "local"]
    assert workflow.status_code == 503
    assert "needs ENABLE_TEMPORAL=true" in workflow.json()["detail"]


@pytest.mark.usefixtures("worker")
async def test_workflow_status_shows_the_result(
    http: httpx.AsyncClient, client: Client, settings: Settings
) -> None:
    workflow_id = f"health-{uuid.uuid4()}"
    await client.execute_workflow(
        HealthCheckWorkflow.run,
        HealthCheckInput(),
        id=workflow_id,
        task_queue=settings.temporal_task_queue,
    )
    response = await http.get(f"/api/workflows/{workflow_id}")
    assert response.status_code == 200
    body = response.json()
    assert body["workflow_type"] == "HealthCheckWorkflow"
    assert body["status"] == "completed"
    assert {d["name"] for d in body["result"]["dependencies"]} == {"temporal", "sqlite", "local"}
    assert body["failure"] is None


@pytest.mark.usefixtures("worker")
async def test_workflow_status_shows_the_failure(
    http: httpx.AsyncClient, client: Client, settings: Settings
) -> None:
    workflow_id = f"health-{uuid.uuid4()}"
    handle = await client.start_workflow(
        HealthCheckWorkflow.run,
        HealthCheckInput(dependencies=["nosuchdb"]),
        id=workflow_id,
        task_queue=settings.temporal_task_queue,
    )
    with pytest.raises(Exception, match="Workflow execution failed"):
        await handle.result()
    body = (await http.get(f"/api/workflows/{workflow_id}")).json()
    assert body["status"] == "failed"
    assert "unknown dependencies ['nosuchdb']" in body["failure"]


async def test_an_unknown_workflow_is_404(http: httpx.AsyncClient) -> None:
    response = await http.get(f"/api/workflows/no-such-{uuid.uuid4()}")
    assert response.status_code == 404
    assert "no workflow" in response.json()["detail"]


async def test_a_workflow_of_another_package_is_404(
    http: httpx.AsyncClient, client: Client, settings: Settings
) -> None:
    workflow_id = f"foreign-{uuid.uuid4()}"
    handle = await client.start_workflow(
        "SomeoneElsesWorkflow", id=workflow_id, task_queue=settings.temporal_task_queue
    )
    try:
        response = await http.get(f"/api/workflows/{workflow_id}")
    finally:
        await handle.terminate()
    assert response.status_code == 404
    assert "not one of this package's" in response.json()["detail"]


async def test_openapi_lists_the_routes(http: httpx.AsyncClient) -> None:
    paths = (await http.get("/openapi.json")).json()["paths"]
    assert {"/healthz", "/readyz", "/api/workflows/{workflow_id}", "/metrics"} <= set(paths)
    assert (await http.get("/docs")).status_code == 200


async def _health_check_runs(client: Client, task_queue: str) -> int:
    query = f"WorkflowType = 'HealthCheckWorkflow' AND TaskQueue = '{task_queue}'"
    return len([run async for run in client.list_workflows(query)])


@pytest.mark.usefixtures("worker")
async def test_concurrent_readyz_calls_share_one_check(
    client: Client, services: Services, settings: Settings
) -> None:
    app = create_app(GatewayState(services, client, metrics_url=None))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway"
    ) as anonymous:
        answers = await asyncio.gather(*(anonymous.get("/readyz") for _ in range(20)))
        # Within READYZ_CACHE_SECONDS: the same outcome, no new check.
        answers.append(await anonymous.get("/readyz"))
    assert {answer.status_code for answer in answers} == {200}
    assert {answer.text for answer in answers} == {'{"status":"ready"}'}
    # Visibility lags the workflows a little: wait until it shows at least one, then make
    # sure no second shows up.
    for _ in range(100):
        if await _health_check_runs(client, settings.temporal_task_queue):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1)
    assert await _health_check_runs(client, settings.temporal_task_queue) == 1


async def test_readyz_details_are_for_authenticated_callers_only(
    make_settings: Callable[..., Settings],
) -> None:
    port = free_port()
    services = Services.from_settings(
        make_settings(
            enable_temporal=False,
            enable_postgres=True,
            postgres_url=f"postgresql://postgres@127.0.0.1:{port}/postgres",
        )
    )
    app = create_app(GatewayState(services, None, metrics_url=None))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway"
    ) as http:
        anonymous = await http.get("/readyz")
        authenticated = await http.get("/readyz", headers={"X-API-Key": API_KEY})
        bearer = await http.get("/readyz", headers={"Authorization": f"Bearer {API_KEY}"})
        wrong_key = await http.get("/readyz", headers={"X-API-Key": "nxp_not-a-key"})
    await services.close()
    assert bearer.json() == authenticated.json() | {"checked_at": bearer.json()["checked_at"]}
    assert anonymous.status_code == wrong_key.status_code == 503
    assert anonymous.json() == wrong_key.json() == {"status": "unavailable"}
    assert anonymous.headers["Retry-After"]
    assert "127.0.0.1" not in anonymous.text
    assert str(port) not in anonymous.text
    assert authenticated.status_code == 503
    down = {d["name"]: d for d in authenticated.json()["dependencies"]}
    assert down["postgres"]["status"] == "down"
    assert str(port) in down["postgres"]["error"]


async def test_readyz_hides_why_no_report_was_made_from_anonymous_callers(
    client: Client, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(health_check_timeout_seconds=0.5, health_check_worker_wait_seconds=1)
    services = Services.from_settings(settings, client)
    app = create_app(GatewayState(services, client, metrics_url=None))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway"
    ) as http:
        anonymous = await http.get("/readyz")
        authenticated = await http.get("/readyz", headers={"X-API-Key": API_KEY})
    await services.close()
    assert anonymous.status_code == authenticated.status_code == 503
    assert anonymous.json() == {"status": "unavailable"}
    assert settings.temporal_task_queue not in anonymous.text
    assert settings.temporal_task_queue in authenticated.json()["detail"]
