from fastapi import APIRouter

from app.api.deps import ServiceDep
from app.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
def health(service: ServiceDep):
    # The server accepts requests only after the lifespan loaded the model, so reaching here means ready.
    return Health(status="ok", model=service.backbone.name, edits_active=service.edits_active)
