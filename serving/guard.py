"""The query service's front guard: bearer auth for ``/v1/*`` and the upload size limit, checked in
pure ASGI before any route runs or any body byte is read."""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from typing import Any

from .errors import ApiError
from .metrics import get_metrics

#: The reasons the guard answers with, on every ``/v1/*`` route.
GUARD_REASONS: tuple[str, ...] = ("unauthorized", "upload_too_large")


class BodyTooLarge(Exception):
    """A chunked body went past the upload limit while it arrived (raised by the counting ``receive``)."""


class GuardMiddleware:
    """Pure ASGI: bearer auth for ``/v1/*`` and the upload size limit, before any body is read.

    A body announced (``Content-Length``) over the limit is refused at once; a chunked body is
    counted as it arrives and the read fails with :class:`BodyTooLarge` (answered 413 by the route).
    """

    def __init__(self, app: Any, api_key: str | None, max_body: int):
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body = max_body

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        if path.startswith("/v1/") or path == "/v1":
            headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
            if self.api_key is not None and not self._authorised(headers.get("authorization")):
                get_metrics().error("unauthorized")
                get_metrics().requests.inc(1, tags={"endpoint": "guard", "status": "4xx"})
                await send_json(
                    send,
                    401,
                    ApiError(401, "unauthorized", "this service needs 'Authorization: Bearer <API key>'").body(),
                    extra_headers=[(b"www-authenticate", b'Bearer realm="regionmir"')],
                )
                return
            length = headers.get("content-length")
            if length is not None:
                try:
                    announced = int(length)
                except ValueError:
                    announced = -1
                if announced > self.max_body:
                    get_metrics().error("upload_too_large")
                    get_metrics().requests.inc(1, tags={"endpoint": "guard", "status": "4xx"})
                    await send_json(send, 413, too_large(self.max_body).body())
                    return
            receive = self._counting(receive)
        await self.app(scope, receive, send)

    def _authorised(self, header: bytes | None) -> bool:
        if not header:
            return False
        scheme, _, token = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.api_key or b"")

    def _counting(self, receive: Callable) -> Callable:
        seen = 0
        limit = self.max_body

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge()
            return message

        return counted


def too_large(limit: int) -> ApiError:
    """The 413 of a request body over ``limit`` bytes."""
    return ApiError(
        413, "upload_too_large", f"the request body exceeds the upload limit of {limit / (1024 * 1024):.1f} MiB"
    )


async def send_json(send: Callable, status: int, body: dict, extra_headers: list | None = None) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra_headers or [])})
    await send({"type": "http.response.body", "body": payload})
