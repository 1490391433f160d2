from fastapi import APIRouter

from app.api.deps import ServiceDep
from app.schemas import GenerateRequest, GenerateResponse, TokenPublic
from app.services.editing import Invalid
from editors.edited import Query

router = APIRouter(tags=["generate"])


@router.post("/generate", response_model=GenerateResponse)
def generate(body: GenerateRequest, service: ServiceDep):
    """Greedy continuation of `prompt`, or the assistant's answer to `messages`; each token names the
    edit that produced it."""
    if body.prompt is not None:
        query = Query.prompt(body.prompt)
    else:
        try:
            query = Query.chat(service.backbone.tokenizer, [m.model_dump() for m in body.messages])
        except ValueError as exc:
            raise Invalid(str(exc)) from exc
    out = service.generate(query, body.max_new_tokens)
    return GenerateResponse(text=out.text, tokens=[TokenPublic(text=t, edit_id=e) for t, e in out.tokens])
