"""Request and response bodies of the HTTP API: the server validates and answers with these, and the
client (editserve.client) reads them. They need pydantic only, so the client loads nothing else."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Status = Literal["active", "withdrawn", "corrupt"]  # storage.models.STATUSES (a test holds them equal)
MAX_NEW_TOKENS = 512
MAX_ALIASES = 16  # app/services/errors.py takes no more either


def _not_blank(value: str | None) -> str | None:
    # Kept as given otherwise: a leading or trailing space changes the tokens.
    if value is not None and not value.strip():
        raise ValueError("must not be empty")
    return value


class EditCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str
    target: str
    method: str = "ireva"
    retrofit: bool = False
    # The entity the prompt is about: the edit only takes queries naming it (read off the prompt if absent)
    subject: str | None = None
    # Other names of the subject ("Musée du Louvre"): a query naming one is about the subject; given
    # these, a longer name holding the subject's words ("Louvre Abu Dhabi") is another entity's
    aliases: list[str] = Field([], max_length=MAX_ALIASES)

    _check = field_validator("prompt", "target")(_not_blank)
    _check_aliases = field_validator("aliases")(lambda values: [_not_blank(v) for v in values])


class EditUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str | None = None
    target: str | None = None
    aliases: list[str] | None = Field(None, max_length=MAX_ALIASES)  # None: as they are; []: none

    _check = field_validator("prompt", "target")(_not_blank)
    _check_aliases = field_validator("aliases")(lambda values: values and [_not_blank(v) for v in values])

    @model_validator(mode="after")
    def _something(self) -> EditUpdate:
        if self.prompt is None and self.target is None and self.aliases is None:
            raise ValueError("give prompt, target, aliases or some of them")
        return self


def _none_as_empty(values: list[str] | None) -> list[str]:
    return values or []


class EditPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    method: str
    prompt: str
    target: str
    subject: str | None
    aliases: list[str]  # [] where none were given
    status: Status
    neurons: int
    retrofit: bool
    created_at: datetime
    updated_at: datetime
    withdrawn_at: datetime | None
    error: str | None  # why a corrupt edit is corrupt
    created_by: str | None  # the name of the API key that made it (None: the server had no keys)
    updated_by: str | None
    withdrawn_by: str | None

    _aliases = field_validator("aliases", mode="before")(_none_as_empty)


class EditVersionPublic(BaseModel):
    version: int  # 1 = as first made
    prompt: str
    target: str
    aliases: list[str] = []
    made_by: str | None
    made_at: datetime
    replaced_by: str | None = None  # None for the current version
    replaced_at: datetime | None = None


class EditHistory(BaseModel):
    edit_id: str
    status: Status
    versions: list[EditVersionPublic]  # oldest first; the last is the current one


MAX_PREVIEW_QUERIES = 16


class PreviewRequest(EditCreate):
    """An edit as POST /edits takes it, and what to ask of it besides its prompt."""

    queries: list[str] = Field([], max_length=MAX_PREVIEW_QUERIES)  # prompts, continued as they are
    questions: list[str] = Field([], max_length=MAX_PREVIEW_QUERIES)  # asked as chat turns
    max_new_tokens: int = Field(16, ge=1, le=64)

    @field_validator("queries", "questions")
    @classmethod
    def _none_blank(cls, values: list[str]) -> list[str]:
        if any(not v.strip() for v in values):
            raise ValueError("must not hold an empty string")
        return values


class PreviewAnswer(BaseModel):
    kind: Literal["prompt", "query", "question", "active edit"]
    text: str  # what was asked (for an active edit: its prompt)
    edit_id: str | None = None  # the active edit this is, for kind "active edit"
    now: str
    with_edit: str
    changed: bool


class PreviewResponse(BaseModel):
    answers: list[PreviewAnswer]  # the prompt, then the queries, then the questions
    affected: list[PreviewAnswer]  # active edits near the prompt whose own answer the edit would change


class EditsPublic(BaseModel):
    data: list[EditPublic]
    count: int  # edits matching the filter, over all pages


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


MAX_STOPS = 4


class SamplingFields(BaseModel):
    """How tokens are chosen and when an answer ends; the same fields on every generating route."""

    temperature: float = Field(0.0, ge=0.0, le=2.0)  # 0: greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    # with temperature > 0: the same seed, the same answer (a 64-bit integer: the generator's seed)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    stop: str | list[str] | None = None  # up to 4 strings that end the answer (not included in it)
    edits: Literal["all", "none"] = "all"  # "none": answer as the unedited model, to compare

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        items = [value] if isinstance(value, str) else value
        if items is not None:
            if len(items) > MAX_STOPS:
                raise ValueError(f"at most {MAX_STOPS} stop strings")
            if any(s == "" for s in items):
                raise ValueError("a stop string must not be empty")
        return value

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class GenerateRequest(SamplingFields):
    """Either `prompt` (continued as it is) or `messages` (a chat, rendered with the model's own
    chat template and answered as the assistant's next turn)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    max_new_tokens: int = Field(16, ge=1, le=MAX_NEW_TOKENS)
    stream: bool = False  # text/event-stream: one event per token, then the end

    _check = field_validator("prompt")(_not_blank)

    @model_validator(mode="after")
    def _one_input(self) -> GenerateRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give either prompt or messages")
        if self.messages is not None and not any(m.role == "user" and m.content.strip() for m in self.messages):
            raise ValueError("messages: there is no user message to answer")
        return self


class TokenPublic(BaseModel):
    text: str
    edit_id: str | None  # the edit that produced this token, if any


class GenerateStreamEnd(BaseModel):
    """The last event of a streamed /generate before [DONE]."""

    finish_reason: Literal["stop", "length"]
    text: str  # the whole answer


class GenerateResponse(BaseModel):
    text: str
    tokens: list[TokenPublic]
    finish_reason: Literal["stop", "length"]  # stop: the model ended or a stop string came


class Live(BaseModel):
    status: Literal["ok"]


class Health(BaseModel):
    status: Literal["ok"]
    model: str
    edits_active: int
