from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["ui"])


@router.get("/ui", response_class=HTMLResponse, include_in_schema=False)
def ui():
    """The web page: edits (search, withdraw), adding one with a preview, and a playground whose tokens
    are coloured by the edit that produced them. Plain HTML and JavaScript over the same API."""
    return HTMLResponse((files("app") / "ui" / "index.html").read_text(encoding="utf-8"))
