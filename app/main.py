"""The FastAPI app: migrate the database, load the model and the stored edits, then serve."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from app.api.main import api_router
from app.core.config import Settings
from app.services.editing import EditingService, ServiceError
from storage import migrate
from storage.repository import database_url

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        migrate.upgrade(database_url(settings.data_dir))
        app.state.service = EditingService.start(settings)
        log.info(
            "serving %s with methods %s from %s", settings.model, list(app.state.service.editors), settings.data_dir
        )
        try:
            yield
        finally:
            app.state.service.close()

    app = FastAPI(title="editserve", summary="An LM whose knowledge is edited over HTTP", lifespan=lifespan)
    app.include_router(api_router)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError):
        return JSONResponse(status_code=exc.status_code, content={"detail": str(exc)})

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        # One readable sentence naming each bad field, e.g. "max_new_tokens: Input should be less than
        # or equal to 512", instead of pydantic's list of dicts.
        problems = []
        for err in exc.errors():
            if err["type"] == "json_invalid":
                problems.append(f"body: invalid JSON ({err.get('ctx', {}).get('error', err['msg'])})")
                continue
            loc = [str(part) for part in err["loc"] if part not in ("body", "query", "path")]
            name = ".".join(loc) or ".".join(str(part) for part in err["loc"])
            problems.append(f"{name}: {err['msg'].removeprefix('Value error, ')}")
        return JSONResponse(status_code=422, content={"detail": "; ".join(problems)})

    return app
