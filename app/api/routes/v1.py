"""OpenAI-compatible routes: a translation of the OpenAI API onto the service's one generation path.

Each choice also carries `edits`: the ids of the edits that produced its tokens (in a streamed chunk,
those of the chunk's tokens). A request's `edits: "none"` answers as the unedited model. With `n` > 1
and a `seed`, choice i samples with seed + i, so the choices differ and each is reproducible.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from app.api.deps import ServiceDep, require, sampling
from app.api.streaming import DONE, event, in_own_thread
from app.openai_protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprob,
    ChatLogprobs,
    ChatMessageOut,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    Delta,
    ModelCard,
    ModelList,
    OpenAIRequest,
    TopLogprob,
    Usage,
)
from app.services.editing import EditingService
from app.services.errors import NotFound
from editors.edited import Query
from editors.text_stream import End, Piece

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Depends(require("read"))])
# With stream: true the answer is server-sent events, each a chunk of the response's shape (the chat's:
# ChatCompletionChunk), then `data: [DONE]`.
STREAMED: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {}}}}


class ModelNotFound(NotFound):
    code = "model_not_found"


@router.get("/models", response_model=ModelList)
def models(service: ServiceDep):
    return ModelList(data=[_model_card(service)])


@router.get("/models/{model_id:path}", response_model=ModelCard)
def model(model_id: str, service: ServiceDep):
    _check_model(service, model_id)
    return _model_card(service)


@router.post("/completions", response_model=CompletionResponse, responses=STREAMED)
def completions(body: CompletionRequest, service: ServiceDep):
    _check_model(service, body.model)
    jobs = _jobs(body, [service.query(p, None) for p in body.prompts()], body.logprobs)
    head = _head("cmpl", service)
    if body.stream:
        return _streaming(_completion_chunks(body, service, jobs, head, body.max_tokens))
    results = [(i, service.generate(q, body.max_tokens, body.edits == "all", s, body.stops())) for i, q, s in jobs]
    tok, want = service.backbone.tokenizer, body.logprobs is not None
    choices = [_completion_choice(i, g.pieces, g.end, want, tok) for i, g in results]
    return CompletionResponse(**head, choices=choices, usage=_usage([g.end for _, g in results], body.n))


@router.post("/chat/completions", response_model=ChatCompletionResponse, responses=STREAMED)
def chat_completions(body: ChatCompletionRequest, service: ServiceDep):
    _check_model(service, body.model)
    query = service.query(None, [m.plain() for m in body.messages])
    jobs = _jobs(body, [query], body.logprob_count())
    head = _head("chatcmpl", service)
    if body.stream:
        return _streaming(_chat_chunks(body, service, jobs, head))
    results = [(i, service.generate(q, body.budget(), body.edits == "all", s, body.stops())) for i, q, s in jobs]
    choices = [
        ChatChoice(
            index=i,
            message=ChatMessageOut(content=g.text),
            logprobs=_chat_logprobs(g.pieces) if body.logprobs else None,
            finish_reason=g.end.finish_reason,
            edits=_edit_ids(g.pieces),
        )
        for i, g in results
    ]
    return ChatCompletionResponse(**head, choices=choices, usage=_usage([g.end for _, g in results], body.n))


# -- streaming -------------------------------------------------------------------------------------------
def _pieces(service: EditingService, body: OpenAIRequest, jobs, budget: int) -> Iterator[tuple[int, Piece | End]]:
    """Every choice's pieces, one choice after another (each answer sees one edit set)."""
    for index, query, how in jobs:
        with closing(service.stream(query, budget, body.edits == "all", how, body.stops())) as stream:
            for item in stream:
                yield index, item


async def _completion_chunks(body: CompletionRequest, service, jobs, head, budget):
    tok, want, ends = service.backbone.tokenizer, body.logprobs is not None, []
    async for index, item in in_own_thread(_pieces(service, body, jobs, budget)):
        if isinstance(item, End):
            ends.append(item)
            choice = _completion_choice(index, [], item, False, tok)
        else:
            choice = _completion_choice(index, [item], None, want, tok)
        yield CompletionResponse(**head, choices=[choice])
    if body.stream_options and body.stream_options.include_usage:
        yield CompletionResponse(**head, choices=[], usage=_usage(ends, body.n))


async def _chat_chunks(body: ChatCompletionRequest, service, jobs, head):
    started, ends = set(), []
    async for index, item in in_own_thread(_pieces(service, body, jobs, body.budget())):
        if index not in started:  # the first chunk of a choice names the role, as OpenAI's do
            started.add(index)
            delta = Delta(role="assistant", content="")
            yield ChatCompletionChunk(
                **head, choices=[ChatChunkChoice(index=index, delta=delta, logprobs=None, finish_reason=None)]
            )
        if isinstance(item, End):
            ends.append(item)
            choice = ChatChunkChoice(
                index=index, delta=Delta(), logprobs=None, finish_reason=item.finish_reason, edits=[]
            )
        else:
            logprobs = _chat_logprobs([item]) if body.logprobs else None
            delta = Delta(content=item.text)
            choice = ChatChunkChoice(
                index=index, delta=delta, logprobs=logprobs, finish_reason=None, edits=_edit_ids([item])
            )
        yield ChatCompletionChunk(**head, choices=[choice])
    if body.stream_options and body.stream_options.include_usage:
        yield ChatCompletionChunk(**head, choices=[], usage=_usage(ends, body.n))


def _streaming(chunks) -> StreamingResponse:
    async def events():
        try:
            async for chunk in chunks:
                yield event(chunk.model_dump(exclude_unset=True))  # a chunk carries only what it sets
        except Exception as exc:  # the status line has gone out: the failure is reported in the stream
            log.exception("a streamed generation failed")
            message = f"generation failed: {type(exc).__name__}: {exc}"
            yield event({"error": {"message": message, "type": "server_error", "param": None, "code": None}})
        yield DONE

    return StreamingResponse(events(), media_type="text/event-stream")


# -- shapes ----------------------------------------------------------------------------------------------
def _model_card(service: EditingService) -> ModelCard:
    return ModelCard(id=service.model_id, created=service.started_at)


def _check_model(service: EditingService, name: str) -> None:
    if name != service.model_id:
        raise ModelNotFound(f"model: `{name}` is not served here; this server serves `{service.model_id}`")


def _head(prefix: str, service: EditingService) -> dict:
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "created": int(time.time()), "model": service.model_id}


def _jobs(body: OpenAIRequest, queries: list[Query], logprobs: int | None):
    """(choice index, query, sampling) for each choice: n per query, in the OpenAI order."""
    return [
        (q * body.n + j, query, sampling(body, logprobs, seed_offset=j))
        for q, query in enumerate(queries)
        for j in range(body.n)
    ]


def _edit_ids(pieces: list[Piece]) -> list[str]:
    return list(dict.fromkeys(p.edit_id for p in pieces if p.edit_id is not None))


def _usage(ends: list[End], n: int) -> Usage:
    # A prompt counts once however many choices it has, as OpenAI counts it; ends are in job order.
    prompt = sum(e.prompt_tokens for k, e in enumerate(ends) if k % n == 0)
    completion = sum(e.completion_tokens for e in ends)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _completion_choice(index: int, pieces: list[Piece], end: End | None, logprobs: bool, tok) -> CompletionChoice:
    """A completion's choice: whole (all its pieces and its end), or a streamed chunk's (some pieces,
    or only the end)."""
    return CompletionChoice(
        index=index,
        text="".join(p.text for p in pieces),
        logprobs=_completion_logprobs(pieces, tok) if logprobs else None,
        finish_reason=end.finish_reason if end is not None else None,
        edits=_edit_ids(pieces),
    )


def _completion_logprobs(pieces: list[Piece], tok) -> CompletionLogprobs:
    offsets, at = [], 0
    for p in pieces:
        offsets.append(at)
        at += len(p.text)
    return CompletionLogprobs(
        tokens=[tok.decode([p.token_id]) for p in pieces],
        token_logprobs=[p.logprob for p in pieces],
        top_logprobs=[dict(p.top or []) for p in pieces],
        text_offset=offsets,
    )


def _chat_logprobs(pieces: list[Piece]) -> ChatLogprobs:
    def entry(token: str, logprob: float | None) -> dict:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    content = [
        ChatLogprob(**entry(p.text, p.logprob), top_logprobs=[TopLogprob(**entry(t, lp)) for t, lp in p.top or []])
        for p in pieces
    ]
    return ChatLogprobs(content=content)
