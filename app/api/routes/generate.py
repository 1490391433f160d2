from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from app.api.deps import ServiceDep, require, sampling
from app.api.streaming import DONE, event, in_own_thread
from editors.text_stream import End
from editserve.schemas import GenerateRequest, GenerateResponse, GenerateStreamEnd, TokenPublic

router = APIRouter(tags=["generate"], dependencies=[Depends(require("read"))])


@router.post(
    "/generate",
    response_model=GenerateResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "with stream: true, one event per token"}},
)
def generate(body: GenerateRequest, service: ServiceDep):
    """Continuation of `prompt`, or the assistant's answer to `messages`; each token names the edit
    that produced it. Greedy unless `temperature` > 0. With `stream: true`, a text/event-stream: one
    `{"text", "edit_id"}` event per token, then `{"finish_reason", "text"}`, then `[DONE]`."""
    query = service.query(body.prompt, [m.model_dump() for m in body.messages] if body.messages else None)
    args = (query, body.max_new_tokens, body.edits == "all", sampling(body), body.stops())
    if body.stream:
        return StreamingResponse(_events(service.stream(*args)), media_type="text/event-stream")
    out = service.generate(*args)
    return GenerateResponse(
        text=out.text,
        tokens=[TokenPublic(text=t, edit_id=e) for t, e in out.tokens],
        finish_reason=out.end.finish_reason,
    )


async def _events(stream):
    text = ""
    try:
        async for item in in_own_thread(stream):
            if isinstance(item, End):
                yield event(GenerateStreamEnd(finish_reason=item.finish_reason, text=text).model_dump())
            else:
                text += item.text
                yield event(TokenPublic(text=item.text, edit_id=item.edit_id).model_dump())
    except Exception as exc:  # the status line has gone out: the failure is reported in the stream
        yield event({"error": {"message": f"generation failed: {type(exc).__name__}: {exc}", "type": "server_error"}})
    yield DONE
