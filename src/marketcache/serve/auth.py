"""The bearer token: `Authorization: Bearer T` (or `?token=T`, for WebSocket clients that
cannot set headers), compared in constant time; `/health` is open. The token is never logged
or echoed: the 401 says only that it is missing or wrong, and `redact` keeps it out of the
access log."""

from __future__ import annotations

import hmac
import json
import logging
import re
from typing import Any
from urllib.parse import parse_qsl

OPEN_PATHS = ("/health",)
_TOKEN_IN_QUERY = re.compile(r"(?i)((?:^|[?&])token=)[^&\s\"]*")


def redact(text: str) -> str:
    """`text` with the value of every token= query parameter replaced by ***."""
    return _TOKEN_IN_QUERY.sub(r"\1***", text)


class RedactTokens(logging.Filter):
    """For uvicorn's access logger: the request line is logged with the token hidden."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def _given(scope: dict[str, Any]) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, credential = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and credential.strip():
                return str(credential.strip())
    for name, value in parse_qsl(scope.get("query_string", b"").decode("latin-1")):
        if name == "token":
            return str(value)
    return None


class TokenAuth:
    """ASGI middleware: requests without the right token get a 401 JSON answer (HTTP) or a
    denied handshake (WebSocket) before any route runs."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.token = token.encode()

    def allowed(self, scope: dict[str, Any]) -> bool:
        given = _given(scope)
        return given is not None and hmac.compare_digest(given.encode(), self.token)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if self.allowed(scope):
            await self.app(scope, receive, send)
            return
        body = json.dumps(
            {"error": "missing or wrong token: send Authorization: Bearer <token>", "status": 401}
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]
        if scope["type"] == "http":
            headers.append((b"content-length", str(len(body)).encode()))
            await send({"type": "http.response.start", "status": 401, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await receive()  # websocket.connect
        if "websocket.http.response" in scope.get("extensions", {}):
            headers.append((b"content-length", str(len(body)).encode()))
            await send({"type": "websocket.http.response.start", "status": 401,
                        "headers": headers})  # fmt: skip
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1008})
