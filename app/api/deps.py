from typing import Annotated

from fastapi import Depends, Request

from app.services.editing import EditingService


def get_service(request: Request) -> EditingService:
    return request.app.state.service


ServiceDep = Annotated[EditingService, Depends(get_service)]
