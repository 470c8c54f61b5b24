"""A local stand-in for the far end of the Anthropic Messages API, for the real SDK to call.

No Anthropic endpoint is reachable from the tests, so this HTTP server answers
``POST /v1/messages`` with responses shaped exactly like the API's (messages, error bodies,
``retry-after`` headers), taken from a script a test sets up or computed by a function of the
request. Every request is recorded with its headers and JSON body.

    async with running_anthropic() as fake:
        fake.script(rate_limited(retry_after=1), tool_use({"verdict": "approve"}))
        settings = make_settings(anthropic_api_key=KEY, anthropic_base_url=fake.url)
        ...
        assert fake.requests[0].tool_name == "Verdict"
        assert fake.requests[0].api_key == KEY
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from nexpo_workflows.ports import free_port
from tests.servers import HOST

MESSAGES_PATH = "/v1/messages"


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it; header names are lower case."""

    headers: dict[str, str]
    body: dict[str, Any]
    # The server's event-loop clock when it arrived: for the waits between retries.
    received_at: float

    @property
    def api_key(self) -> str | None:
        """The key sent: older SDKs use ``x-api-key``, 2.x an ``Authorization`` bearer."""
        bearer = self.headers.get("authorization", "")
        return self.headers.get("x-api-key") or bearer.removeprefix("Bearer ") or None

    @property
    def tool_name(self) -> str | None:
        """The tool the request forces (structured output), if any."""
        choice = self.body.get("tool_choice") or {}
        name = choice.get("name") if choice.get("type") == "tool" else None
        return str(name) if name is not None else None

    @property
    def last_user_text(self) -> str:
        users = [m for m in self.body.get("messages", []) if m.get("role") == "user"]
        content = users[-1]["content"] if users else ""
        if isinstance(content, str):
            return content
        return "".join(block.get("text", "") for block in content)


@dataclass(frozen=True)
class Reply:
    """An HTTP answer. A message body without ``id`` or ``model`` gets them from the request."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


Responder = Callable[[RecordedRequest], Reply]


def message(
    content: list[dict[str, Any]],
    *,
    stop_reason: str = "end_turn",
    input_tokens: int = 12,
    output_tokens: int = 8,
) -> Reply:
    return Reply(
        200,
        {
            "type": "message",
            "role": "assistant",
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
        },
    )


def text(answer: str, *, input_tokens: int = 12, output_tokens: int = 8) -> Reply:
    """A text answer (``end_turn``)."""
    return message(
        [{"type": "text", "text": answer}],
        input_tokens=input_tokens,
        output_tokens=output_tokens,
    )


def tool_use(
    answer: dict[str, Any],
    *,
    name: str | None = None,
    input_tokens: int = 12,
    output_tokens: int = 8,
) -> Reply:
    """A call of the tool named ``name`` (default: the one the request forces) with ``answer``
    as its input, whether or not it matches the tool's schema."""
    block = {"type": "tool_use", "id": "", "name": name or "", "input": answer}
    return message(
        [block], stop_reason="tool_use", input_tokens=input_tokens, output_tokens=output_tokens
    )


def refusal(explanation: str = "") -> Reply:
    """The model declining to answer (``stop_reason: refusal``)."""
    content = [{"type": "text", "text": explanation}] if explanation else []
    return message(content, stop_reason="refusal", output_tokens=0)


def error(status: int, kind: str, detail: str, *, headers: dict[str, str] | None = None) -> Reply:
    """An error in the API's own shape: ``{"type": "error", "error": {type, message}}``."""
    body = {"type": "error", "error": {"type": kind, "message": detail}}
    return Reply(status, body, headers or {})


def rate_limited(
    retry_after: float, detail: str = "Number of request tokens has exceeded your rate limit."
) -> Reply:
    return error(429, "rate_limit_error", detail, headers={"retry-after": f"{retry_after:g}"})


def overloaded() -> Reply:
    return error(529, "overloaded_error", "Overloaded")


def server_error() -> Reply:
    return error(500, "api_error", "Internal server error")


def invalid_request(detail: str = "max_tokens: must be greater than 0") -> Reply:
    return error(400, "invalid_request_error", detail)


def unauthorized() -> Reply:
    return error(401, "authentication_error", "invalid x-api-key")


class FakeAnthropic:
    """The server's state: what it will answer, and what it was asked."""

    def __init__(self, url: str):
        self.url = url
        self.requests: list[RecordedRequest] = []
        self._scripted: deque[Reply] = deque()
        self._responder: Responder | None = None
        self._ids = itertools.count(1)

    def script(self, *replies: Reply) -> None:
        """Answer the next requests with these, in order (after any still queued)."""
        self._scripted.extend(replies)

    def respond_with(self, responder: Responder) -> None:
        """Answer every request the script does not cover with ``responder(request)``."""
        self._responder = responder

    def _reply(self, request: RecordedRequest) -> Reply:
        if request.api_key is None:
            return error(401, "authentication_error", "x-api-key header is required")
        if self._scripted:
            return self._scripted.popleft()
        if self._responder is not None:
            return self._responder(request)
        # Not retryable, so a test that forgot a reply fails at once, saying so.
        return invalid_request("the fake Anthropic API has no scripted reply for this request")

    def _completed(self, reply: Reply, request: RecordedRequest) -> dict[str, Any]:
        if reply.body.get("type") != "message":
            return reply.body
        number = next(self._ids)
        content = [
            {
                **block,
                "id": block["id"] or f"toolu_{number:04d}",
                "name": block["name"] or request.tool_name or "answer",
            }
            if block["type"] == "tool_use"
            else block
            for block in reply.body["content"]
        ]
        return {
            "id": f"msg_{number:04d}",
            "model": request.body.get("model", ""),
            **reply.body,
            "content": content,
        }

    async def handle(self, http: web.Request) -> web.Response:
        request = RecordedRequest(
            headers={name.lower(): value for name, value in http.headers.items()},
            body=json.loads(await http.read()),
            received_at=asyncio.get_running_loop().time(),
        )
        self.requests.append(request)
        reply = self._reply(request)
        return web.json_response(
            self._completed(reply, request),
            status=reply.status,
            headers={"request-id": f"req_{len(self.requests):04d}", **reply.headers},
        )


@contextlib.asynccontextmanager
async def running_anthropic() -> AsyncIterator[FakeAnthropic]:
    """Serve the fake API on a free port of 127.0.0.1 in this event loop until the block ends."""
    port = free_port(HOST)
    fake = FakeAnthropic(f"http://{HOST}:{port}")
    app = web.Application()
    app.router.add_post(MESSAGES_PATH, fake.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, HOST, port).start()
        yield fake
    finally:
        await runner.cleanup()
