from typing import Annotated

from fastapi import Depends, Request

from app.services.editing import EditingService, ServiceError


class NotReady(ServiceError):
    status_code = 503
    headers = {"Retry-After": "5"}


def get_service(request: Request) -> EditingService:
    service = getattr(request.app.state, "service", None)
    if service is None:
        error = getattr(request.app.state, "load_error", None)
        if error is not None:
            raise NotReady(f"the server failed to start: {type(error).__name__}: {error}")
        raise NotReady("starting: the model and the stored edits are still loading; retry shortly")
    return service


ServiceDep = Annotated[EditingService, Depends(get_service)]
