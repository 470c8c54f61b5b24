"""One way to get a connected Temporal client: local server, Temporal Cloud or an mTLS cluster."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from temporalio.client import Client, Interceptor
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes
from temporalio.runtime import Runtime
from temporalio.service import RPCError, TLSConfig

from nexpo_workflows.codec import EncryptionCodec, parse_key_ring
from nexpo_workflows.config import Settings
from nexpo_workflows.errors import first_line

log = logging.getLogger(__name__)

_FIRST_BACKOFF_SECONDS = 0.2
_MAX_BACKOFF_SECONDS = 3.0


class TemporalUnavailableError(Exception):
    """The Temporal server could not be reached within the configured bound."""


@dataclass(frozen=True)
class ConnectionOptions:
    target: str
    namespace: str
    api_key: str | None = field(default=None, repr=False)
    tls: TLSConfig | bool = False


def connection_options(settings: Settings) -> ConnectionOptions:
    """Where and how to connect, derived from the settings alone (no I/O but reading certs)."""
    api_key = settings.temporal_cloud_api_key
    client_cert = settings.temporal_tls_client_cert
    client_key = settings.temporal_tls_client_key
    server_ca = settings.temporal_tls_server_ca_cert
    tls: TLSConfig | bool
    if settings.temporal_tls is False:
        tls = False
    elif client_cert or server_ca or settings.temporal_tls_server_name:
        tls = TLSConfig(
            server_root_ca_cert=server_ca.read_bytes() if server_ca else None,
            client_cert=client_cert.read_bytes() if client_cert else None,
            client_private_key=client_key.read_bytes() if client_key else None,
            domain=settings.temporal_tls_server_name,
        )
    else:
        # Temporal Cloud always speaks TLS, and an API key is not sent in clear unless asked.
        tls = bool(settings.temporal_tls) or settings.temporal_uses_cloud or api_key is not None
    return ConnectionOptions(
        target=settings.temporal_target,
        namespace=settings.temporal_effective_namespace,
        api_key=api_key.get_secret_value() if api_key else None,
        tls=tls,
    )


def data_converter(settings: Settings) -> DataConverter:
    """The pydantic converter; with PAYLOAD_ENCRYPTION_KEYS, it encrypts every payload."""
    keys = settings.payload_encryption_keys
    if keys is None:
        return pydantic_data_converter
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=EncryptionCodec(parse_key_ring(keys.get_secret_value())),
        # Failure messages and stack traces are not payloads; this moves them into one,
        # so the codec encrypts them too.
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


async def connect(
    settings: Settings,
    *,
    runtime: Runtime | None = None,
    identity: str | None = None,
    interceptors: Sequence[Interceptor] = (),
) -> Client:
    """Connect with :func:`data_converter`, retrying with backoff for a bounded time."""
    options = connection_options(settings)
    converter = data_converter(settings)
    deadline = time.monotonic() + settings.temporal_connect_timeout_seconds
    backoff = _FIRST_BACKOFF_SECONDS
    while True:
        remaining = deadline - time.monotonic()
        try:
            return await Client.connect(
                options.target,
                namespace=options.namespace,
                api_key=options.api_key,
                tls=options.tls,
                data_converter=converter,
                runtime=runtime,
                identity=identity,
                interceptors=interceptors,
                connect_timeout=timedelta(seconds=max(remaining, 0.5)),
            )
        except (RuntimeError, RPCError) as error:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TemporalUnavailableError(
                    f"cannot reach the Temporal server at {options.target} "
                    f"(namespace {options.namespace}) after "
                    f"{settings.temporal_connect_timeout_seconds:g}s: {first_line(error)}"
                ) from error
            log.warning(
                "Temporal at %s not reachable yet (%s); retrying in %.1fs",
                options.target,
                first_line(error),
                backoff,
            )
            await asyncio.sleep(min(backoff, remaining))
            backoff = min(backoff * 2, _MAX_BACKOFF_SECONDS)
