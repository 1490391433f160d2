from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import SQLAlchemyError

from app.api.deps import NotReady, ServiceDep
from app.services.errors import database_down, unavailable_detail
from editserve.schemas import Health, Live

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, responses={503: {"description": "still loading, or failed to"}})
def health(service: ServiceDep):
    """Ready: the model and the stored edits are loaded (503 before, like /health/ready)."""
    return Health(status="ok", model=service.backbone.name, edits_active=service.edits_active)


@router.get(
    "/health/ready",
    response_model=Health,
    responses={503: {"description": "still loading, failed to, or the database is unavailable"}},
)
def ready(service: ServiceDep):
    """Ready for every request: loaded, and the database answers (while it does not, generation still
    answers from memory, and changes are refused with 503)."""
    try:
        service.repo.ping()
    except SQLAlchemyError as exc:
        if not database_down(exc):
            raise
        raise NotReady(unavailable_detail(exc, "generation answers, changes are refused")) from exc
    return Health(status="ok", model=service.backbone.name, edits_active=service.edits_active)


@router.get("/health/live", response_model=Live)
def live():
    """The process answers (200 from the moment it listens, also while it loads)."""
    return Live(status="ok")


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def metrics(request: Request):
    """Prometheus text format."""
    app_metrics = request.app.state.metrics
    service = getattr(request.app.state, "service", None)
    if service is not None:
        for method, count in service.model.active_by_method().items():
            app_metrics.edits_active.labels(method).set(count)
    return Response(generate_latest(app_metrics.registry), media_type=CONTENT_TYPE_LATEST)
