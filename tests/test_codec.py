"""Payload encryption: the codec, the encrypting client and worker, and the codec server."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import uuid
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, WorkflowFailureError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError

from nexpo_workflows.api.app import create_app, embedded_server
from nexpo_workflows.api.deps import GatewayState
from nexpo_workflows.client import connect
from nexpo_workflows.codec import (
    ENCODING,
    KEY_ID_METADATA,
    EncryptionCodec,
    PayloadDecryptionError,
    parse_key_ring,
)
from nexpo_workflows.config import ConfigError, Settings, load_settings
from nexpo_workflows.devserver import temporal_binary
from nexpo_workflows.health.models import HealthCheckInput
from nexpo_workflows.health.workflow import HealthCheckWorkflow
from nexpo_workflows.ports import free_port
from nexpo_workflows.services import Services
from nexpo_workflows.worker import build_worker
from tests.conftest import run_cli
from tests.history_scan import payload_texts, payloads

UI_ORIGIN = "http://localhost:8233"


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


OLD_KEY = new_key()
NEW_KEY = new_key()
KEYS = f"k1:{OLD_KEY},k2:{NEW_KEY}"


def plain(*values: object) -> list[Payload]:
    return pydantic_data_converter.payload_converter.to_payloads(list(values))


# --- The codec ------------------------------------------------------------------------------


async def test_round_trip_restores_every_payload() -> None:
    codec = EncryptionCodec(parse_key_ring(KEYS))
    originals = plain("a secret", {"email": "ada@example.com"}, None, 42)
    encoded = await codec.encode(originals)
    assert all(p.metadata["encoding"] == ENCODING for p in encoded)
    assert not any(b"secret" in p.data or b"ada@" in p.data for p in encoded)
    assert await codec.decode(encoded) == originals


async def test_the_newest_key_encrypts_and_an_older_one_still_decrypts() -> None:
    old_codec = EncryptionCodec(parse_key_ring(f"k1:{OLD_KEY}"))
    rotated = EncryptionCodec(parse_key_ring(KEYS))
    [written_before] = await old_codec.encode(plain("before rotation"))
    [written_after] = await rotated.encode(plain("after rotation"))
    assert rotated.key_id == "k2"
    assert written_before.metadata[KEY_ID_METADATA] == b"k1"
    assert written_after.metadata[KEY_ID_METADATA] == b"k2"
    assert await rotated.decode([written_before, written_after]) == plain(
        "before rotation", "after rotation"
    )


async def test_a_payload_under_an_unknown_key_id_fails_naming_it() -> None:
    [encoded] = await EncryptionCodec(parse_key_ring(f"gone:{OLD_KEY}")).encode(plain("x"))
    with pytest.raises(PayloadDecryptionError, match=r"key id 'gone'.*PAYLOAD_ENCRYPTION_KEYS"):
        await EncryptionCodec(parse_key_ring(KEYS)).decode([encoded])


async def test_a_tampered_payload_fails_authentication() -> None:
    codec = EncryptionCodec(parse_key_ring(KEYS))
    [encoded] = await codec.encode(plain("pay 10 EUR"))
    flipped = bytearray(encoded.data)
    flipped[-1] ^= 1
    tampered = Payload(metadata=dict(encoded.metadata), data=bytes(flipped))
    with pytest.raises(PayloadDecryptionError, match="failed authentication"):
        await codec.decode([tampered])


async def test_payloads_written_before_encryption_was_on_still_decode() -> None:
    originals = plain("written in clear")
    assert await EncryptionCodec(parse_key_ring(KEYS)).decode(originals) == originals


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("k1:not*base64", "not valid base64"),
        (f"k1:{base64.b64encode(os.urandom(16)).decode()}", "must decode to 32 bytes"),
        (NEW_KEY, "must be id:base64key"),
        (f"k1:{OLD_KEY},k1:{NEW_KEY}", "used twice"),
    ],
    # The keys are random: ids from the reason only, the same in every test process.
    ids=["not-base64", "short-key", "no-id", "id-twice"],
)
def test_a_bad_key_list_stops_start_up_naming_the_variable_not_the_value(
    entry: str, reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAYLOAD_ENCRYPTION_KEYS", entry)
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None)
    message = str(caught.value)
    assert "PAYLOAD_ENCRYPTION_KEYS" in message
    assert reason in message
    for secret in (entry, *(part.partition(":")[2] or part for part in entry.split(","))):
        assert secret not in message


def test_no_keys_means_no_encryption() -> None:
    assert Settings(_env_file=None).payload_encryption_keys is None


# --- Through a real worker ------------------------------------------------------------------


@pytest.fixture
def encrypted_settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(payload_encryption_keys=KEYS)


@pytest.fixture
async def encrypting_client(encrypted_settings: Settings) -> Client:
    return await connect(encrypted_settings)


@pytest.fixture
async def encrypting_worker(
    encrypting_client: Client, encrypted_settings: Settings
) -> AsyncIterator[None]:
    services = Services.from_settings(encrypted_settings, encrypting_client)
    try:
        async with build_worker(encrypting_client, services):
            yield
    finally:
        await services.close()


async def assert_history_is_ciphertext(address: str, workflow_id: str, *plaintext: str) -> None:
    """Read the history as stored, with a client that has no codec."""
    raw = await Client.connect(address)
    history = await raw.get_workflow_handle(workflow_id).fetch_history()
    stored = [payload for event in history.events for payload in payloads(event)]
    assert stored, "the history holds no payload at all"
    # Beside a local activity's (encrypted) result, the SDK core records its own bookkeeping
    # (sequence number, attempt, activity type, times) and reads it back on replay, so no
    # codec ever sees it; the plaintext scan below still covers it.
    bookkeeping = [
        payload
        for event in history.events
        if event.marker_recorded_event_attributes.marker_name == "core_local_activity"
        for payload in event.marker_recorded_event_attributes.details["data"].payloads
    ]
    user_data = [payload for payload in stored if payload not in bookkeeping]
    assert [p for p in user_data if p.metadata.get("encoding") != ENCODING] == []
    assert {p.metadata.get(KEY_ID_METADATA) for p in user_data} == {b"k2"}
    texts = "\n".join(text for event in history.events for text in payload_texts(event))
    everything = history.to_json() + texts
    for text in plaintext:
        assert text not in everything


@pytest.mark.usefixtures("encrypting_worker")
async def test_a_workflow_input_and_result_are_stored_encrypted(
    encrypting_client: Client, encrypted_settings: Settings, temporal_server_address: str
) -> None:
    workflow_id = f"codec-health-{uuid.uuid4()}"
    report = await encrypting_client.execute_workflow(
        HealthCheckWorkflow.run,
        HealthCheckInput(dependencies=["sqlite"]),
        id=workflow_id,
        task_queue=encrypted_settings.temporal_task_queue,
    )
    assert [(d.name, d.status) for d in report.dependencies] == [("sqlite", "up")]
    await assert_history_is_ciphertext(temporal_server_address, workflow_id, "sqlite")


@pytest.mark.usefixtures("encrypting_worker")
async def test_a_failure_message_is_stored_encrypted(
    encrypting_client: Client, encrypted_settings: Settings, temporal_server_address: str
) -> None:
    workflow_id = f"codec-failure-{uuid.uuid4()}"
    with pytest.raises(WorkflowFailureError) as caught:
        await encrypting_client.execute_workflow(
            HealthCheckWorkflow.run,
            HealthCheckInput(dependencies=["nosuch"]),
            id=workflow_id,
            task_queue=encrypted_settings.temporal_task_queue,
        )
    cause = caught.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "UnknownDependency"
    assert "unknown dependencies ['nosuch']" in cause.message
    await assert_history_is_ciphertext(
        temporal_server_address, workflow_id, "nosuch", "unknown dependencies", "sqlite"
    )


# --- The codec server -----------------------------------------------------------------------


@pytest.fixture
async def codec_server(
    make_settings: Callable[..., Settings],
) -> AsyncIterator[Callable[[Settings], httpx.AsyncClient]]:
    opened: list[Services] = []

    def open_gateway(settings: Settings) -> httpx.AsyncClient:
        services = Services.from_settings(settings)
        opened.append(services)
        app = create_app(GatewayState(services, None, metrics_url=None))
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")

    yield open_gateway
    for services in opened:
        await services.close()


def as_json(payloads: list[Payload]) -> dict[str, list[dict[str, object]]]:
    return {"payloads": [json_format.MessageToDict(p) for p in payloads]}


async def test_the_codec_server_encodes_and_decodes_for_the_web_ui(
    codec_server: Callable[[Settings], httpx.AsyncClient],
    encrypted_settings: Settings,
    api_key: str,
) -> None:
    originals = as_json(plain("shown in the UI", {"n": 1}))
    headers = {"Authorization": f"Bearer {api_key}", "X-Namespace": "default", "Origin": UI_ORIGIN}
    async with codec_server(encrypted_settings) as http:
        encoded = await http.post("/codec/encode", json=originals, headers=headers)
        assert encoded.status_code == 200, encoded.text
        assert encoded.headers["access-control-allow-origin"] == UI_ORIGIN
        sealed = encoded.json()["payloads"]
        assert [base64.b64decode(p["metadata"]["encoding"]) for p in sealed] == [ENCODING] * 2
        assert "shown in the UI" not in encoded.text
        decoded = await http.post("/codec/decode", json=encoded.json(), headers=headers)
    assert decoded.status_code == 200, decoded.text
    assert decoded.json() == originals


@pytest.mark.usefixtures("encrypting_worker")
async def test_the_temporal_cli_reads_an_encrypted_history_through_the_codec_server(
    encrypting_client: Client,
    encrypted_settings: Settings,
    temporal_server_address: str,
    api_key: str,
) -> None:
    workflow_id = f"codec-cli-{uuid.uuid4()}"
    await encrypting_client.execute_workflow(
        HealthCheckWorkflow.run,
        HealthCheckInput(dependencies=["sqlite"]),
        id=workflow_id,
        task_queue=encrypted_settings.temporal_task_queue,
    )
    services = Services.from_settings(encrypted_settings)
    port = free_port()
    app = create_app(GatewayState(services, None, metrics_url=None))
    gateway = embedded_server(app, "127.0.0.1", port, "warning")
    serving = asyncio.create_task(gateway.serve())
    try:
        while not gateway.started:
            if serving.done():
                serving.result()  # the reason it did not start, if it raised one
                pytest.fail("the gateway stopped before it started")
            await asyncio.sleep(0.01)
        shown = await run_cli(
            [
                *(temporal_binary(), "workflow", "show", "--workflow-id", workflow_id),
                *("--address", temporal_server_address, "--output", "json"),
                *("--codec-endpoint", f"http://127.0.0.1:{port}/codec"),
                *("--codec-auth", f"Bearer {api_key}"),
            ],
            dict(os.environ),
        )
    finally:
        gateway.should_exit = True
        await serving
        await services.close()
    assert shown.returncode == 0, shown.stderr
    [completed] = [
        event["workflowExecutionCompletedEventAttributes"]
        for event in json.loads(shown.stdout)["events"]
        if "workflowExecutionCompletedEventAttributes" in event
    ]
    [result] = completed["result"]["payloads"]
    assert base64.b64decode(result["metadata"]["encoding"]) == b"json/plain"
    assert json.loads(base64.b64decode(result["data"]))["dependencies"][0]["name"] == "sqlite"


async def test_the_codec_server_refuses_what_it_cannot_decrypt(
    codec_server: Callable[[Settings], httpx.AsyncClient],
    encrypted_settings: Settings,
    api_key: str,
) -> None:
    foreign = await EncryptionCodec(parse_key_ring(f"other:{new_key()}")).encode(plain("x"))
    async with codec_server(encrypted_settings) as http:
        unknown = await http.post(
            "/codec/decode", json=as_json(foreign), headers={"X-API-Key": api_key}
        )
        malformed = await http.post(
            "/codec/decode",
            json={"payloads": [{"data": "not base64!"}]},
            headers={"X-API-Key": api_key},
        )
    assert unknown.status_code == 400
    assert "key id 'other'" in unknown.json()["detail"]
    assert malformed.status_code == 400


async def test_the_codec_server_needs_credentials(
    codec_server: Callable[[Settings], httpx.AsyncClient], encrypted_settings: Settings
) -> None:
    async with codec_server(encrypted_settings) as http:
        anonymous = await http.post("/codec/decode", json=as_json(plain("x")))
        wrong = await http.post(
            "/codec/encode", json=as_json(plain("x")), headers={"X-API-Key": "nxp_wrong"}
        )
    assert anonymous.status_code == 401
    assert wrong.status_code == 401


async def test_a_cors_preflight_from_the_web_ui_is_answered_without_credentials(
    codec_server: Callable[[Settings], httpx.AsyncClient], encrypted_settings: Settings
) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-namespace,authorization",
    }
    async with codec_server(encrypted_settings) as http:
        allowed = await http.options("/codec/decode", headers={"Origin": UI_ORIGIN, **preflight})
        foreign = await http.options(
            "/codec/decode", headers={"Origin": "https://evil.example", **preflight}
        )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == UI_ORIGIN
    assert allowed.headers["access-control-allow-credentials"] == "true"
    allowed_headers = allowed.headers["access-control-allow-headers"].lower()
    assert {"content-type", "x-namespace", "authorization"} <= {
        header.strip() for header in allowed_headers.split(",")
    }
    assert "access-control-allow-origin" not in foreign.headers


async def test_the_codec_server_is_404_when_encryption_is_off(
    codec_server: Callable[[Settings], httpx.AsyncClient],
    make_settings: Callable[..., Settings],
    api_key: str,
) -> None:
    async with codec_server(make_settings()) as http:
        response = await http.post(
            "/codec/decode", json=as_json(plain("x")), headers={"X-API-Key": api_key}
        )
    assert response.status_code == 404
    assert "payload encryption is off" in response.json()["detail"]
