"""The FastAPI app. It answers at once; the database migration, the model and the stored edits load
in a thread meanwhile (GET /health/live is 200 from the start, /health/ready and every route that
needs the model 503 until they are loaded). A load that fails is logged, reported by /health/ready
and, under `editserve serve`, ends the process."""

from __future__ import annotations

import logging
import os
import signal
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.main import api_router
from app.core.config import Settings
from app.core.errors import error_response, is_openai
from app.core.limits import BodyLimit, RateLimiter
from app.core.observability import Metrics, RequestContext
from app.core.security import KeyRing, load_keys
from app.services import startup
from app.services.errors import DatabaseUnavailable, ServiceError, database_down, unavailable_detail
from storage import migrate
from storage.repository import database_url, safe_url

log = logging.getLogger(__name__)

DEFAULT_RATE_PER_KEY = 600  # requests a minute, when keys are configured and no rate is set


def create_app(settings: Settings | None = None, exit_on_load_failure: bool = False) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    keys = load_keys(settings.api_keys, settings.api_keys_file)

    def load(app: FastAPI) -> None:
        try:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            migrate.upgrade(database_url(settings.data_dir, settings.database_url))
            app.state.service = startup.start(settings, metrics)
            metrics.ready.set(1)
            log.info(
                "serving %s with methods %s from %s (edits in %s)",
                settings.model,
                list(app.state.service.editors),
                settings.data_dir,
                safe_url(app.state.service.repo.url),
            )
        except BaseException as exc:
            app.state.load_error = exc
            log.exception("the server cannot start")
            if exit_on_load_failure:
                os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts down cleanly; the log says why
        finally:
            app.state.loaded.set()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.service, app.state.load_error, app.state.loaded = None, None, threading.Event()
        loader = threading.Thread(target=load, args=(app,), name="editserve-load", daemon=True)
        loader.start()
        try:
            yield
        finally:
            loader.join()  # a stop during the load waits for it, then closes what it opened
            if app.state.service is not None:
                startup.stop(app.state.service)

    app = FastAPI(title="editserve", summary="An LM whose knowledge is edited over HTTP", lifespan=lifespan)
    app.state.metrics = metrics
    app.state.keys = KeyRing(keys) if keys else None
    rate = settings.rate_limit_per_minute
    app.state.limiter = RateLimiter(rate if rate is not None else (DEFAULT_RATE_PER_KEY if keys else 0))
    app.include_router(api_router)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes, import_limit=settings.max_import_bytes)
    app.add_middleware(RequestContext, metrics=metrics)  # outermost: it also sees the 413s

    handle_errors(app)
    return app


def handle_errors(app: FastAPI) -> None:
    """Every refusal as one JSON shape: {"detail": ...} on the native routes, an OpenAI error object on
    /v1, with the status the refusal carries."""

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError):
        status = 400 if exc.status_code == 422 and _openai(request) else exc.status_code
        return _error(request, status, str(exc), code=getattr(exc, "code", None), headers=getattr(exc, "headers", None))

    @app.exception_handler(SQLAlchemyError)
    async def database_error(request: Request, exc: SQLAlchemyError):
        # A read or a change's lock that reached a database which is down: 503, not a stack trace.
        if not database_down(exc):
            raise exc
        log.warning("%s %s: the database is unavailable: %s", request.method, request.url.path, exc)
        detail = unavailable_detail(exc, "nothing was changed")
        return _error(request, DatabaseUnavailable.status_code, detail, headers=DatabaseUnavailable.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error(request, exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        # One readable sentence naming each bad field, e.g. "max_new_tokens: Input should be less than
        # or equal to 512", instead of pydantic's list of dicts.
        problems, params = [], []
        for err in exc.errors():
            if err["type"] == "json_invalid":
                problems.append(f"body: invalid JSON ({err.get('ctx', {}).get('error', err['msg'])})")
                continue
            loc = [str(part) for part in err["loc"] if part not in ("body", "query", "path")]
            name = ".".join(loc) or ".".join(str(part) for part in err["loc"])
            params.append(name)
            problems.append(f"{name}: {err['msg'].removeprefix('Value error, ')}")
        # The OpenAI API answers a bad parameter with 400; the native routes keep FastAPI's 422.
        status = 400 if _openai(request) else 422
        return _error(request, status, "; ".join(problems), param=params[0] if params else None)


def _openai(request: Request) -> bool:
    return is_openai(request.url.path)


def _error(request: Request, status: int, message: str, param=None, code=None, headers=None) -> JSONResponse:
    return error_response(request.url.path, status, message, param, code, headers)
