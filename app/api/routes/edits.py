import json

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from app.api.deps import Editor, Reader, ServiceDep
from app.api.streaming import in_own_thread
from app.services import bundles
from app.services.errors import Invalid
from app.services.preview import preview
from editors.edited import Query as Asked
from editserve.schemas import (
    EditCreate,
    EditHistory,
    EditPublic,
    EditsPublic,
    EditUpdate,
    EditVersionPublic,
    PreviewAnswer,
    PreviewRequest,
    PreviewResponse,
    Status,
)

router = APIRouter(prefix="/edits", tags=["edits"])


@router.post("", status_code=201, response_model=EditPublic)
def create_edit(body: EditCreate, service: ServiceDep, actor: Editor):
    """Teach the model `prompt` -> `target`. 409 if an active edit has this prompt."""
    return service.insert(
        body.method,
        body.prompt,
        body.target,
        retrofit=body.retrofit,
        subject=body.subject,
        actor=actor,
        aliases=body.aliases,
    )


@router.get("", response_model=EditsPublic)
def list_edits(
    service: ServiceDep,
    _: Reader,
    status: Status | None = None,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=1_000_000_000),
    q: str | None = Query(None, max_length=1000, description="a part of the prompt, target or subject"),
    created_by: str | None = Query(None, max_length=128, description="the name of the key that made it"),
):
    records, count = service.list(status=status, limit=limit, offset=offset, search=q, created_by=created_by)
    return EditsPublic(data=records, count=count)


@router.get("/export", response_class=StreamingResponse, responses={200: {"content": {"application/x-ndjson": {}}}})
def export_edits(service: ServiceDep, _: Reader, status: Status | None = None):
    """Every edit (or those of one status), oldest first, one JSON line each: `prompt`, `target_new`,
    `subject`, `method`, `status`, `retrofit`, timestamps, `id`. POST /edits/import reads it back."""
    return StreamingResponse(
        bundles.export_lines(service, status),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": 'attachment; filename="edits.jsonl"'},
    )


@router.post("/import", responses={200: {"content": {"application/x-ndjson": {}}}})
async def import_edits(request: Request, service: ServiceDep, actor: Editor):
    """Edits as JSON lines (an export) or a JSON list, inserted line by line. The answer streams one
    JSON line per input line as it is done — `{"line", "result": "created"|"conflict"|"invalid"|"failed",
    "id"|"detail"}` — then `{"summary": {…}}`. A line is applied whole or not at all."""
    try:
        lines = bundles.parse(await request.body(), service.settings.max_import_lines)
    except ValueError as exc:
        raise Invalid(str(exc)) from exc

    async def results():
        async for result in in_own_thread(bundles.import_lines(service, lines, actor)):
            yield json.dumps(result, ensure_ascii=False) + "\n"

    return StreamingResponse(results(), media_type="application/x-ndjson")


@router.post("/preview", response_model=PreviewResponse)
def preview_edit(body: PreviewRequest, service: ServiceDep, _: Editor):
    """What the model says now and what it would say with this edit, storing nothing: for the prompt,
    the `queries` and `questions` given, and the active edits whose answers it would change."""
    asked = (
        [("prompt", body.prompt, Asked.prompt(body.prompt))]
        + [("query", q, service.query(q, None)) for q in body.queries]
        + [("question", q, service.query(None, [{"role": "user", "content": q}])) for q in body.questions]
    )
    pairs, affected = preview(
        service,
        body.method,
        body.prompt,
        body.target,
        body.retrofit,
        [a for _, _, a in asked],
        body.max_new_tokens,
        body.subject,
        tuple(body.aliases),
    )
    return PreviewResponse(
        answers=[
            PreviewAnswer(kind=k, text=t, now=b.text, with_edit=a.text, changed=b.token_ids != a.token_ids)
            for (k, t, _), (b, a) in zip(asked, pairs)
        ],
        affected=[
            PreviewAnswer(kind="active edit", text=p, edit_id=i, now=b.text, with_edit=a.text, changed=True)
            for i, p, b, a in affected
        ],
    )


@router.get("/{edit_id}", response_model=EditPublic)
def read_edit(edit_id: str, service: ServiceDep, _: Reader):
    return service.get(edit_id)


@router.get("/{edit_id}/history", response_model=EditHistory)
def edit_history(edit_id: str, service: ServiceDep, _: Reader):
    """Every version of the edit, oldest first: the earlier ones PUT replaced, then the current one."""
    record, earlier = service.history(edit_id)
    versions = [
        EditVersionPublic(
            version=v.version,
            prompt=v.prompt,
            target=v.target,
            aliases=v.aliases or [],
            made_by=v.made_by,
            made_at=v.made_at,
            replaced_by=v.replaced_by,
            replaced_at=v.replaced_at,
        )
        for v in earlier
    ]
    current = EditVersionPublic(
        version=len(versions) + 1,
        prompt=record.prompt,
        target=record.target,
        aliases=record.aliases or [],
        made_by=record.updated_by,
        made_at=record.updated_at,
    )
    return EditHistory(edit_id=edit_id, status=record.status, versions=[*versions, current])


@router.put("/{edit_id}", response_model=EditPublic)
def update_edit(edit_id: str, body: EditUpdate, service: ServiceDep, actor: Editor):
    """Retrain the edit on a new prompt and/or target (a corrupt edit is rebuilt); the version it
    replaces stays in the edit's history."""
    return service.update(edit_id, prompt=body.prompt, target=body.target, actor=actor, aliases=body.aliases)


@router.delete("/{edit_id}", response_model=EditPublic)
def withdraw_edit(edit_id: str, service: ServiceDep, actor: Editor):
    """The edit stops acting; its record stays, with status `withdrawn`."""
    return service.withdraw(edit_id, actor=actor)
