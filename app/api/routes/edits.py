from fastapi import APIRouter, Query

from app.api.deps import ServiceDep
from app.schemas import EditCreate, EditPublic, EditsPublic, EditUpdate, Status

router = APIRouter(prefix="/edits", tags=["edits"])


@router.post("", status_code=201, response_model=EditPublic)
def create_edit(body: EditCreate, service: ServiceDep):
    """Teach the model `prompt` -> `target`. 409 if an active edit of the method has this prompt."""
    return service.insert(body.method, body.prompt, body.target, retrofit=body.retrofit)


@router.get("", response_model=EditsPublic)
def list_edits(
    service: ServiceDep,
    status: Status | None = None,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0),
):
    records, count = service.list(status=status, limit=limit, offset=offset)
    return EditsPublic(data=records, count=count)


@router.get("/{edit_id}", response_model=EditPublic)
def read_edit(edit_id: str, service: ServiceDep):
    return service.get(edit_id)


@router.put("/{edit_id}", response_model=EditPublic)
def update_edit(edit_id: str, body: EditUpdate, service: ServiceDep):
    """Retrain the edit on a new prompt and/or target (a corrupt edit is rebuilt)."""
    return service.update(edit_id, prompt=body.prompt, target=body.target)


@router.delete("/{edit_id}", response_model=EditPublic)
def withdraw_edit(edit_id: str, service: ServiceDep):
    """The edit stops acting; its record stays, with status `withdrawn`."""
    return service.withdraw(edit_id)
