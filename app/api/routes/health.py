from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import ServiceDep
from editserve.schemas import Health, Live

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, responses={503: {"description": "still loading, or failed to"}})
def health(service: ServiceDep):
    """Ready: the model and the stored edits are loaded (503 before, like /health/ready)."""
    return Health(status="ok", model=service.backbone.name, edits_active=service.edits_active)


@router.get("/health/ready", response_model=Health, responses={503: {"description": "still loading, or failed to"}})
def ready(service: ServiceDep):
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
