"""Reading every payload in a workflow history, decoded, to look for what must not be there."""

from __future__ import annotations

from collections.abc import Iterator

from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.client import Client


def payload_texts(message: Message) -> Iterator[str]:
    """The decoded data of every Payload anywhere inside ``message`` (nested, repeated, maps)."""
    for payload in payloads(message):
        yield payload.data.decode("utf-8", errors="replace")


def payloads(message: Message) -> Iterator[Payload]:
    """Every Payload anywhere inside ``message`` (nested, repeated, maps)."""
    if isinstance(message, Payload):
        yield message
        return
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            children = list(value.values())
        elif field.is_repeated:
            children = list(value)
        else:
            children = [value]
        for child in children:
            if isinstance(child, Message):
                yield from payloads(child)


async def history_payloads(client: Client, workflow_id: str) -> str:
    """All payloads of the workflow's history, decoded and joined, for substring checks."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    return "\n".join(text for event in history.events for text in payload_texts(event))
