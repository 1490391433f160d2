from typing import Annotated

from fastapi import Depends, Request

from app.core.config import Settings
from app.services.editing import EditingService


def get_service(request: Request) -> EditingService:
    return request.app.state.service


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


ServiceDep = Annotated[EditingService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
