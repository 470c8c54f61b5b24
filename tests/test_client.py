"""The client: bounded connection retries, mTLS to a self-hosted cluster, pydantic payloads."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest

from nexpo_workflows.client import TemporalUnavailableError, connect
from nexpo_workflows.config import Settings
from nexpo_workflows.ports import free_port
from tests.tls_proxy import make_certificates, mtls_proxy


async def test_an_unreachable_server_fails_within_the_bound_naming_the_address(
    make_settings: Callable[..., Settings],
) -> None:
    address = f"127.0.0.1:{free_port()}"
    settings = make_settings(temporal_server_url=address, temporal_connect_timeout_seconds=1.5)
    started = time.monotonic()
    with pytest.raises(
        TemporalUnavailableError, match=f"cannot reach the Temporal server at {address}"
    ):
        await connect(settings)
    assert 1.5 <= time.monotonic() - started < 10


def test_the_worker_exits_non_zero_with_one_line_naming_the_address(
    cli: list[str], cli_env: dict[str, str]
) -> None:
    address = f"127.0.0.1:{free_port()}"
    cli_env.update(TEMPORAL_SERVER_URL=address, TEMPORAL_CONNECT_TIMEOUT_SECONDS="2")
    started = time.monotonic()
    result = subprocess.run(
        [*cli, "worker"], env=cli_env, capture_output=True, text=True, timeout=60
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(
        f"nexpo-workflows: temporal is unavailable: cannot reach the Temporal server at {address}"
    )
    assert "Traceback" not in result.stderr
    assert elapsed < 30


def test_the_worker_refuses_to_start_with_temporal_disabled(
    cli: list[str], cli_env: dict[str, str]
) -> None:
    cli_env["ENABLE_TEMPORAL"] = "false"
    result = subprocess.run(
        [*cli, "worker"], env=cli_env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "needs ENABLE_TEMPORAL=true" in result.stderr


async def test_mutual_tls_to_a_self_hosted_cluster(
    make_settings: Callable[..., Settings], tmp_path: Path, temporal_server_address: str
) -> None:
    certs = make_certificates(tmp_path)
    async with mtls_proxy(certs, temporal_server_address, free_port()) as tls_address:
        settings = make_settings(
            temporal_server_url=tls_address,
            temporal_tls_server_ca_cert=certs.ca_cert,
            temporal_tls_client_cert=certs.client_cert,
            temporal_tls_client_key=certs.client_key,
            temporal_tls_server_name="localhost",
        )
        client = await connect(settings)
        info = await client.workflow_service.get_system_info(GetSystemInfoRequest())
        assert info.server_version

        # Without a client certificate the TLS front refuses the handshake.
        no_cert = make_settings(
            temporal_server_url=tls_address,
            temporal_tls_server_ca_cert=certs.ca_cert,
            temporal_tls_server_name="localhost",
            temporal_connect_timeout_seconds=1,
        )
        with pytest.raises(TemporalUnavailableError):
            await connect(no_cert)
