from fastapi import APIRouter

from app.api.deps import ServiceDep
from app.schemas import GenerateRequest, GenerateResponse, TokenPublic

router = APIRouter(tags=["generate"])


@router.post("/generate", response_model=GenerateResponse)
def generate(body: GenerateRequest, service: ServiceDep):
    """Greedy continuation; each token names the edit that produced it."""
    out = service.generate(body.prompt, body.max_new_tokens)
    return GenerateResponse(text=out.text, tokens=[TokenPublic(text=t, edit_id=e) for t, e in out.tokens])
