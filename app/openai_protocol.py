"""The OpenAI-compatible protocol (/v1): request bodies, response bodies and streamed chunks, as the
OpenAI API defines them, each choice with editserve's `edits` (the edits that made its tokens).

Fields the API defines and editserve does not act on are refused when they would change the answer
(penalties, logit_bias, echo, best_of, tools), so a client never silently gets something else than it
asked for; unknown fields are ignored, as the OpenAI API does. `edits` is editserve's own (pass it
through the `openai` client's `extra_body`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from editserve.schemas import MAX_NEW_TOKENS, SamplingFields

MAX_CHOICES = 8
DEFAULT_CHAT_TOKENS = 256


class StreamOptions(BaseModel):
    include_usage: bool = False


class OpenAIRequest(SamplingFields):
    model_config = ConfigDict(extra="ignore")

    model: str
    temperature: float = Field(1.0, ge=0.0, le=2.0)  # the OpenAI default; 0 is greedy
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    @model_validator(mode="after")
    def _unsupported(self):
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise ValueError(f"{name}: not supported by this server; leave it at 0")
        if self.logit_bias:
            raise ValueError("logit_bias: not supported by this server")
        return self


class CompletionRequest(OpenAIRequest):
    prompt: str | list[str]
    max_tokens: int = Field(16, ge=1, le=MAX_NEW_TOKENS)
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, value):
        items = [value] if isinstance(value, str) else value
        if not items:
            raise ValueError("give at least one prompt")
        if any(not p.strip() for p in items):
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _completion_only(self):
        if self.echo:
            raise ValueError("echo: not supported by this server")
        if self.best_of not in (None, 1):
            raise ValueError("best_of: not supported by this server")
        if self.suffix:
            raise ValueError("suffix: not supported by this server")
        return self

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessageIn(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def plain(self) -> dict:
        """As the chat template reads it (a developer message is the system message of older APIs)."""
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatCompletionRequest(OpenAIRequest):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Any] | None = None
    response_format: dict | None = None

    @model_validator(mode="after")
    def _chat_only(self):
        if not any(m.role == "user" and m.plain()["content"].strip() for m in self.messages):
            raise ValueError("messages: there is no user message to answer")
        if self.tools:
            raise ValueError("tools: not supported by this server")
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            raise ValueError("response_format: only text is supported by this server")
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs: needs logprobs: true")
        return self

    def budget(self) -> int:
        return self.max_completion_tokens or self.max_tokens or DEFAULT_CHAT_TOKENS

    def logprob_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


# -- responses ---------------------------------------------------------------------------------------------
class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "editserve"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: Literal["stop", "length"] | None  # None in a streamed chunk before the last
    edits: list[str] = []  # the edits that produced this choice's tokens (editserve's own field)


class CompletionResponse(BaseModel):
    """A whole completion; streamed, each chunk has this shape with one choice of a few tokens."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float | None
    bytes: list[int]


class ChatLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatLogprob]


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: ChatLogprobs | None
    finish_reason: Literal["stop", "length"]
    edits: list[str] = []


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: ChatLogprobs | None
    finish_reason: Literal["stop", "length"] | None
    edits: list[str] = []


class ChatCompletionChunk(BaseModel):
    """One event of a streamed chat completion (sent without the fields it does not set)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
