"""Request limits: body size (413) and a per-key rate (429). The token limits live with the inputs they
bound (app/services/editing.py), the queue bound with the generations (the service)."""

from __future__ import annotations

import math
import threading
import time

from app.core.errors import error_response


class BodyLimit:
    """ASGI middleware: a body longer than the limit is a 413 before the app reads any of it (by its
    Content-Length), or as soon as it grows past the limit (a chunked body is read here first)."""

    def __init__(self, app, limit: int, import_limit: int):
        self.app, self.limit, self.import_limit = app, limit, import_limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return await self.app(scope, receive, send)
        limit = self.import_limit if scope["path"] == "/edits/import" else self.limit
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > limit:
                return await self._refuse(scope, receive, send, limit)
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([message]), send)
            size += len(message.get("body", b""))
            if size > limit:
                return await self._refuse(scope, receive, send, limit)
            chunks.append(message)
            if not message.get("more_body"):
                break
        await self.app(scope, _replay(chunks), send)

    async def _refuse(self, scope, receive, send, limit: int):
        message = f"body: larger than the limit of {limit} bytes"
        await error_response(scope["path"], 413, message, headers={"Connection": "close"})(scope, receive, send)


def _replay(messages: list[dict]):
    pending = list(messages)

    async def receive():
        if pending:
            return pending.pop(0)
        return {"type": "http.disconnect"}

    return receive


class RateLimiter:
    """Per client (API key name, or address without keys): a bucket of `per_minute` requests that
    refills continuously. `take` answers how many seconds to wait, 0 when the request may go."""

    def __init__(self, per_minute: int):
        self.per_minute = per_minute
        self.buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, when)
        self.lock = threading.Lock()

    def take(self, client: str) -> int:
        if self.per_minute <= 0:
            return 0
        rate, now = self.per_minute / 60.0, time.monotonic()
        with self.lock:
            tokens, then = self.buckets.get(client, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - then) * rate)
            if tokens >= 1.0:
                self.buckets[client] = (tokens - 1.0, now)
                return 0
            self.buckets[client] = (tokens, now)
            return max(1, math.ceil((1.0 - tokens) / rate))
