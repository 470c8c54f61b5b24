"""The remote codec server the Temporal Web UI and CLI call to show encrypted payloads.

Protocol: ``POST {endpoint}/encode`` and ``POST {endpoint}/decode`` with
``{"payloads": [...]}``, each payload in proto3 JSON (metadata values and data base64),
answered in the same shape.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, status
from google.protobuf import json_format
from pydantic import BaseModel
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.converter import PayloadCodec

from nexpo_workflows.api.auth import require_auth
from nexpo_workflows.api.deps import StateDep
from nexpo_workflows.client import data_converter
from nexpo_workflows.codec import PayloadDecryptionError

log = logging.getLogger(__name__)

router = APIRouter(prefix="/codec", tags=["codec"], dependencies=[Depends(require_auth)])


class CodecPayloads(BaseModel):
    """Temporal payloads in proto3 JSON: ``{"metadata": {"encoding": "<base64>"}, "data": ...}``."""

    payloads: list[dict[str, Any]]


async def get_codec(state: StateDep) -> PayloadCodec:
    codec = data_converter(state.services.settings).payload_codec
    if codec is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            "payload encryption is off: PAYLOAD_ENCRYPTION_KEYS is not set",
        )
    return codec


CodecDep = Annotated[PayloadCodec, Depends(get_codec)]
# The Web UI names the namespace the payloads come from; one key ring serves them all.
NamespaceHeader = Annotated[str | None, Header(alias="X-Namespace")]

_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "The payloads are not proto3 JSON, or cannot be decrypted"},
    401: {"description": "No valid API key or JWT"},
    404: {"description": "Payload encryption is off"},
}


@router.post("/encode", responses=_RESPONSES)
async def encode(
    body: CodecPayloads, codec: CodecDep, namespace: NamespaceHeader = None
) -> CodecPayloads:
    """Encrypt payloads with the newest key."""
    payloads = _parse(body)
    log.debug("encoding %d payloads (namespace %s)", len(payloads), namespace)
    return _answer(await codec.encode(payloads))


@router.post("/decode", responses=_RESPONSES)
async def decode(
    body: CodecPayloads, codec: CodecDep, namespace: NamespaceHeader = None
) -> CodecPayloads:
    """Decrypt payloads with the key each names; payloads that are not encrypted pass as is."""
    payloads = _parse(body)
    log.debug("decoding %d payloads (namespace %s)", len(payloads), namespace)
    try:
        decoded = await codec.decode(payloads)
    except PayloadDecryptionError as error:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(error)) from None
    return _answer(decoded)


def _parse(body: CodecPayloads) -> list[Payload]:
    try:
        parsed = json_format.ParseDict({"payloads": body.payloads}, Payloads())
    except json_format.ParseError as error:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, f"payloads are not Temporal proto3 JSON: {error}"
        ) from None
    return list(parsed.payloads)


def _answer(payloads: list[Payload]) -> CodecPayloads:
    return CodecPayloads(payloads=[json_format.MessageToDict(payload) for payload in payloads])
