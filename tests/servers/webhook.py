"""A real webhook receiver, aiohttp on a free port, that checks every signature.

It records each request at any path (headers, body, whether the signature verified). It can
answer 503 to the first ``fail_first`` requests, or ``status`` (say 400) to all of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web

from nexpo_workflows.notify.webhook import verify_signature
from nexpo_workflows.ports import free_port
from tests.servers import HOST


@dataclass(frozen=True)
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    # What the receiver answered.
    status: int


@dataclass
class WebhookReceiver:
    secret: str
    port: int
    fail_first: int = 0
    status: int = 200
    # Every request, failed ones included.
    requests: list[Delivery] = field(default_factory=list)

    def url(self, path: str = "/hook") -> str:
        return f"http://{HOST}:{self.port}{path}"

    @property
    def delivered(self) -> list[Delivery]:
        """The requests answered 2xx."""
        return [delivery for delivery in self.requests if 200 <= delivery.status < 300]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        verified = verify_signature(
            self.secret,
            request.headers.get("X-Nexpo-Timestamp", ""),
            body,
            request.headers.get("X-Nexpo-Signature", ""),
        )
        failing = len(self.requests) < self.fail_first
        status = 503 if failing else self.status if verified else 401
        self.requests.append(Delivery(request.path, dict(request.headers), body, verified, status))
        return web.Response(status=status, text="ok" if status < 300 else "refused")


@contextlib.asynccontextmanager
async def running_webhook_receiver(
    secret: str, *, fail_first: int = 0, status: int = 200
) -> AsyncIterator[WebhookReceiver]:
    """Start a receiver checking signatures under ``secret``, yield it, stop it."""
    receiver = WebhookReceiver(secret, free_port(HOST), fail_first, status)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, HOST, receiver.port).start()
        yield receiver
    finally:
        await runner.cleanup()
