from fastapi import APIRouter

from app.api.routes import edits, generate, health, ui, v1

api_router = APIRouter()
api_router.include_router(edits.router)
api_router.include_router(generate.router)
api_router.include_router(health.router)
api_router.include_router(v1.router)
api_router.include_router(ui.router)
