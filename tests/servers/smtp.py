"""A real SMTP server, aiosmtpd in its own thread, on a free port.

It keeps every message it accepts. With ``users`` it offers AUTH (LOGIN, PLAIN) over plain
TCP and refuses mail from sessions that did not log in; with ``reject`` it answers that
reply (``"451 4.3.0 Try again later"``, ``"550 5.1.1 No such user"``) at ``reject_at``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from nexpo_workflows.ports import free_port
from tests.servers import HOST


@dataclass(frozen=True)
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    # The user the session logged in as, if it did.
    login: str | None


@dataclass
class SMTPServer:
    host: str
    port: int
    messages: list[ReceivedMail] = field(default_factory=list)


@dataclass
class _Handler:
    server: SMTPServer
    reject: str | None
    reject_at: Literal["RCPT", "DATA"]

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if self.reject and self.reject_at == "RCPT":
            return self.reject
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.reject and self.reject_at == "DATA":
            return self.reject
        # Line endings as a mailbox stores them, not as SMTP sends them (CRLF).
        content = (envelope.original_content or b"").replace(b"\r\n", b"\n")
        message = BytesParser(policy=policy.default).parsebytes(content)
        assert isinstance(message, EmailMessage)
        auth = session.auth_data
        login = auth.login.decode() if isinstance(auth, LoginPassword) else None
        self.server.messages.append(
            ReceivedMail(str(envelope.mail_from), list(envelope.rcpt_tos), message, login)
        )
        return "250 Message accepted"


@dataclass(frozen=True)
class _Authenticator:
    users: dict[str, str]

    def __call__(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        valid = (
            isinstance(auth_data, LoginPassword)
            and self.users.get(auth_data.login.decode()) == auth_data.password.decode()
        )
        # handled=False: aiosmtpd then answers a failure with 535 itself.
        return AuthResult(success=valid, handled=False, auth_data=auth_data)


@contextlib.asynccontextmanager
async def running_smtp(
    *,
    users: dict[str, str] | None = None,
    reject: str | None = None,
    reject_at: Literal["RCPT", "DATA"] = "RCPT",
) -> AsyncIterator[SMTPServer]:
    """Start the server, yield it (``.host``, ``.port``, ``.messages``), stop it."""
    server = SMTPServer(HOST, free_port(HOST))
    auth: dict[str, Any] = (
        {"authenticator": _Authenticator(users), "auth_required": True, "auth_require_tls": False}
        if users
        else {}
    )
    controller = Controller(
        _Handler(server, reject, reject_at), hostname=HOST, port=server.port, **auth
    )
    # start() and stop() block until the server thread is up or gone.
    await asyncio.to_thread(controller.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(controller.stop)
