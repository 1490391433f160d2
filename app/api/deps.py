from typing import Annotated

from fastapi import Depends, Request

from app.services.editing import EditingService
from app.services.errors import ServiceError
from editors.generation import Sampling
from editserve.schemas import SamplingFields


class NotReady(ServiceError):
    status_code = 503
    headers = {"Retry-After": "5"}


class Unauthorized(ServiceError):
    status_code = 401
    headers = {"WWW-Authenticate": "Bearer"}


class Forbidden(ServiceError):
    status_code = 403


class TooManyRequests(ServiceError):
    status_code = 429

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)}


def sampling(fields: SamplingFields, logprobs: int | None = None, seed_offset: int = 0) -> Sampling:
    """How a request's tokens are chosen (`seed_offset`: the j-th of n choices draws with seed + j)."""
    seed = fields.seed + seed_offset if fields.seed is not None else None
    return Sampling(fields.temperature, fields.top_p, seed, logprobs)


def get_service(request: Request) -> EditingService:
    service = getattr(request.app.state, "service", None)
    if service is None:
        error = getattr(request.app.state, "load_error", None)
        if error is not None:
            raise NotReady(f"the server failed to start: {type(error).__name__}: {error}")
        raise NotReady("starting: the model and the stored edits are still loading; retry shortly")
    return service


def require(scope: str):
    """A dependency: the request's API key must grant `scope`; it gives the key's name (the actor), or
    None when the server runs without keys."""

    def check(request: Request) -> str | None:
        actor = _authenticate(request, scope)
        client = actor if actor is not None else (request.client.host if request.client else "unknown")
        wait = request.app.state.limiter.take(client)
        if wait:
            limit = request.app.state.limiter.per_minute
            raise TooManyRequests(f"rate limit: more than {limit} requests a minute; retry in {wait} s", wait)
        return actor

    return check


def _authenticate(request: Request, scope: str) -> str | None:
    ring = request.app.state.keys
    if ring is None:
        return None
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthorized("missing API key: send the header Authorization: Bearer <key>")
    key = ring.find(secret.strip())
    if key is None:
        raise Unauthorized("unknown API key")
    if not key.allows(scope):
        raise Forbidden(f"the key {key.name!r} has scope {key.scope!r}; this needs {scope!r}")
    request.state.actor = key.name
    return key.name


ServiceDep = Annotated[EditingService, Depends(get_service)]
Reader = Annotated[str | None, Depends(require("read"))]
Editor = Annotated[str | None, Depends(require("edit"))]
