"""Prometheus metrics and request ids.

Each app has its own registry (several apps can live in one process, as in the tests). The HTTP
middleware is plain ASGI so that a streamed response is timed to its last byte, not to its headers.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

log = logging.getLogger("editserve.access")

REQUEST_ID = "x-request-id"
_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "editserve_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "editserve_http_request_duration_seconds",
            "Time from a request's arrival to its last response byte",
            ["method", "route"],
            buckets=_LATENCY,
            registry=r,
        )
        self.tokens = Counter("editserve_generated_tokens", "Tokens generated, all routes", registry=r)
        self.waiting = Gauge(
            "editserve_generations_waiting", "Generations accepted that have not produced a token yet", registry=r
        )
        self.running = Gauge("editserve_generations_running", "Generations producing tokens", registry=r)
        self.insert_seconds = Histogram(
            "editserve_edit_insert_duration_seconds",
            "Time to insert an edit (model and store)",
            buckets=_LATENCY,
            registry=r,
        )
        self.edits_active = Gauge("editserve_edits_active", "Active edits", ["method"], registry=r)
        self.ready = Gauge("editserve_ready", "1 once the model and the edits are loaded", registry=r)


class RequestContext:
    """ASGI middleware: an X-Request-Id on every response (the client's, if it sent a sane one), one
    access log line naming it, and the request counters and latency by route template."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        sent = dict(scope.get("headers") or []).get(REQUEST_ID.encode(), b"").decode("latin-1")
        request_id = sent if _SAFE_ID.fullmatch(sent) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started, status = time.perf_counter(), [500]

        async def tagged(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", []), (REQUEST_ID.encode(), request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, tagged)
        finally:
            seconds = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(scope["method"], route, str(status[0])).inc()
            self.metrics.latency.labels(scope["method"], route).observe(seconds)
            log.info(
                "%s %s -> %d in %.0f ms request_id=%s",
                scope["method"],
                scope["path"],
                status[0],
                1000 * seconds,
                request_id,
            )
