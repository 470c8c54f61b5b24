"""Failover that moves traffic, against real servers on the dev server (real time, 1 s rounds):
the store pair behind moto's S3 (primary) and Azurite (secondary) when S3 stops in the middle
of replications, and the notifications of each switch at a real SMTP server and a real webhook
receiver."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

from pydantic import SecretStr
from temporalio.client import Client

from nexpo_workflows.config import Settings
from nexpo_workflows.failover import FailoverState, FailoverWorkflow, ProbeTarget, Side
from nexpo_workflows.notify.smtp import message_id
from nexpo_workflows.ports import free_port
from nexpo_workflows.replication.models import ReplicaStatus, ReplicateInput, ReplicateResult
from nexpo_workflows.replication.workflow import ReplicateObjectWorkflow
from nexpo_workflows.storage import ObjectStore, enabled_stores
from nexpo_workflows.storage.pair import JOURNAL_PREFIX
from tests.conftest import WEBHOOK_SECRET, run_cli
from tests.servers import HOST
from tests.servers.azurite import running_azurite
from tests.servers.s3 import running_s3
from tests.servers.smtp import running_smtp
from tests.servers.webhook import running_webhook_receiver
from tests.store_contract import chunks_of, read_all
from tests.test_failover import (
    StatusServer,
    failover_input,
    failover_worker,
    http,
    start,
    terminated_after,
)


async def state_when(
    client: Client, workflow_id: str, condition: Callable[[FailoverState], bool]
) -> FailoverState:
    async def check() -> FailoverState | None:
        state: FailoverState = await client.get_workflow_handle(workflow_id).query(
            FailoverWorkflow.state
        )
        return state if condition(state) else None

    async with asyncio.timeout(60):
        while True:
            found = await check()
            if found is not None:
                return found
            await asyncio.sleep(0.1)


async def replicate(client: Client, key: str, task_queue: str) -> ReplicateResult:
    result: ReplicateResult = await client.execute_workflow(
        ReplicateObjectWorkflow.run,
        ReplicateInput(key=key, source="local", targets=["pair"]),
        id=f"replicate-{uuid.uuid4()}",
        task_queue=task_queue,
    )
    return result


async def objects(store: ObjectStore) -> dict[str, str | None]:
    """The store's objects (the pair's journal and the routing records left out) by SHA-256."""
    return {
        info.key: info.sha256
        async for info in store.list()
        if not info.key.startswith((JOURNAL_PREFIX, "routing/"))
    }


async def test_s3_stopped_mid_replication_writes_go_to_azure_and_come_back_after_failback(
    dev_client: Client, make_settings: Callable[..., Settings], task_queue: str
) -> None:
    s3_port = free_port(HOST)
    input = failover_input(
        ProbeTarget(store="s3"),
        ProbeTarget(store="azure"),
        probe_interval_seconds=1.0,
        # A dead S3 takes its client's retries (seconds) to say so: a probe stops it sooner.
        probe_timeout_seconds=3.0,
        failures_to_promote=2,
        successes_to_fail_back=2,
    )
    primary_server = AsyncExitStack()
    async with primary_server, running_azurite() as azurite:
        s3_endpoint = await primary_server.enter_async_context(running_s3(port=s3_port))
        settings = make_settings(
            enable_local_store=True,
            enable_s3=True,
            s3_bucket=f"nexpo-primary-{uuid.uuid4().hex[:8]}",
            s3_endpoint_url=s3_endpoint,
            aws_access_key_id=SecretStr("test"),
            aws_secret_access_key=SecretStr("test"),
            enable_azure_blob=True,
            azure_storage_connection_string=SecretStr(azurite),
            azure_blob_container=f"nexpo-secondary-{uuid.uuid4().hex[:8]}",
            enable_store_pair=True,
            store_pair_primary="s3",
            store_pair_secondary="azure",
            store_pair_service=input.service,
            store_pair_refresh_seconds=0.5,
        )
        stores = enabled_stores(settings)
        source, s3, azure = stores["local"], stores["s3"], stores["azure"]
        for store in (source, s3, azure):
            await store.connect()
        contents = {f"batch-{batch}/{n}": os.urandom(4096 + n) for batch in "abc" for n in range(3)}
        for key, data in contents.items():
            await source.put(key, chunks_of(data))

        async with failover_worker(dev_client, settings, task_queue):
            handle = await start(dev_client, input, task_queue)
            async with terminated_after(handle):
                await state_when(dev_client, handle.id, lambda s: s.total_rounds >= 1)
                for key in [k for k in contents if k.startswith("batch-a/")]:
                    await replicate(dev_client, key, task_queue)
                assert set(await objects(s3)) == {f"batch-a/{n}" for n in range(3)}

                # Batch b is under way when S3 stops: what has not reached S3 by then is
                # retried, and lands on Azure once the monitor has promoted it.
                in_flight = [
                    asyncio.create_task(replicate(dev_client, key, task_queue))
                    for key in contents
                    if key.startswith("batch-b/")
                ]
                await primary_server.aclose()
                promoted = await state_when(
                    dev_client, handle.id, lambda s: s.active_side is Side.SECONDARY
                )
                assert promoted.epoch == 1
                results = await asyncio.gather(*in_flight)
                assert all(r.replicas[0].status is ReplicaStatus.COPIED for r in results)
                for key in [k for k in contents if k.startswith("batch-c/")]:
                    await replicate(dev_client, key, task_queue)

                during_outage = await objects(azure)
                assert {f"batch-c/{n}" for n in range(3)} <= set(during_outage)
                assert set(during_outage) <= {k for k in contents if not k.startswith("batch-a")}
                journal = [info.key async for info in azure.list(JOURNAL_PREFIX)]
                assert len(journal) == len(during_outage)

                # S3 comes back empty (moto keeps nothing): the operator creates the bucket.
                await primary_server.enter_async_context(running_s3(port=s3_port))
                await s3.close()
                await s3.connect()
                back = await state_when(
                    dev_client,
                    handle.id,
                    lambda s: s.active_side is Side.PRIMARY and not s.reconcile_pending,
                )
                assert back.epoch == 2

                on_primary = await objects(s3)
                for key, sha256 in during_outage.items():
                    assert sha256 == hashlib.sha256(contents[key]).hexdigest()
                    assert on_primary.get(key) == sha256, key
                    assert await read_all(s3, key) == contents[key]
                assert [info.key async for info in azure.list(JOURNAL_PREFIX)] == []
        for store in (source, s3, azure):
            await store.close()


async def test_each_switch_is_notified_once_by_email_and_signed_webhook(
    dev_client: Client,
    make_settings: Callable[..., Settings],
    task_queue: str,
    cli: list[str],
    cli_env: dict[str, str],
) -> None:
    async with (
        # Up, down twice (promotion), then up for good (failback after two).
        StatusServer([200, 503, 503, 200]).running() as primary,
        StatusServer([200]).running() as secondary,
        running_smtp() as smtp,
        # The first notification's first activity attempt gets 503 on all its tries: the
        # retry must not send the email a second time.
        running_webhook_receiver(WEBHOOK_SECRET, fail_first=3) as receiver,
    ):
        settings = make_settings(
            failover_probe_allowed_hosts=[HOST],
            smtp_host=smtp.host,
            smtp_port=smtp.port,
            notify_email_to=["ops@example.com"],
            webhook_urls=[receiver.url("/failover")],
            webhook_secret=SecretStr(WEBHOOK_SECRET),
        )
        input = failover_input(
            http(primary.url),
            http(secondary.url),
            probe_interval_seconds=1.0,
            failures_to_promote=2,
            successes_to_fail_back=2,
        )
        async with failover_worker(dev_client, settings, task_queue):
            handle = await start(dev_client, input, task_queue)
            async with terminated_after(handle):
                back = await state_when(
                    dev_client, handle.id, lambda s: s.epoch == 2 and s.active_side is Side.PRIMARY
                )
                # Rounds after the failback send nothing more.
                await state_when(
                    dev_client, handle.id, lambda s: s.total_rounds >= back.total_rounds + 2
                )
                ids = [d.headers["X-Nexpo-Delivery"] for d in receiver.delivered]
                assert len(ids) == len(set(ids)) == 2
                assert ids == [
                    f"failover-{input.service}-1",
                    f"failover-{input.service}-2",
                ]
                assert all(d.verified for d in receiver.requests)
                assert len(receiver.requests) == 5  # 3 refused, then one per switch
                bodies = [json.loads(d.body) for d in receiver.delivered]
                assert [(b["data"]["active_side"], b["data"]["epoch"]) for b in bodies] == [
                    ("secondary", 1),
                    ("primary", 2),
                ]
                assert {b["event"] for b in bodies} == {"failover.switched"}

                assert len(smtp.messages) == 2
                assert [m.rcpt_tos for m in smtp.messages] == [["ops@example.com"]] * 2
                assert [m.message["Message-ID"] for m in smtp.messages] == [
                    message_id(i, settings.smtp_from) for i in ids
                ]
                assert "primary -> secondary (epoch 1)" in smtp.messages[0].message["Subject"]

                status = await run_cli([*cli, "cloud", "failover-status", input.service], cli_env)
                assert status.returncode == 0, status.stderr
                shown: dict[str, Any] = json.loads(status.stdout)
                assert shown["routing"]["epoch"] == shown["monitor"]["epoch"] == 2
                assert shown["monitor"]["held"] is False
                assert shown["monitor"]["recent_probes"]

                promoted = await run_cli(
                    [*cli, "cloud", "promote", input.service, "--reason", "drill", "--hold"],
                    cli_env,
                )
                assert promoted.returncode == 0, promoted.stderr
                assert "active side secondary, epoch 3, held (drill)" in promoted.stdout
                held = await state_when(
                    dev_client, handle.id, lambda s: s.total_rounds >= back.total_rounds + 6
                )
                # A healthy primary, but held: no failback, and one notice for the promotion.
                assert (held.active_side, held.epoch, held.held) == (Side.SECONDARY, 3, True)
                assert len(receiver.delivered) == len(smtp.messages) == 3
