"""Tokens to text as they are generated: per-token pieces, stop strings, and why an answer ended.

A piece is handed out only once no stop string can still begin inside it, so a streamed answer never
shows text that a stop string later takes back; the pieces of an answer concatenate to its text.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass, field

from editors.generation import Step


@dataclass
class Piece:
    text: str  # may be "" for a token that ends inside a multi-byte character (a later one carries it)
    token_id: int
    edit_id: str | None
    logprob: float | None = None
    top: list[tuple[str, float]] | None = None


@dataclass
class End:
    finish_reason: str  # "stop": the model ended, or a stop string came; "length": the token budget ran out
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Generation:
    """A whole answer: its text, token ids, (text, edit id) per token, the pieces and why it ended."""

    text: str
    end: End
    token_ids: list[int] = field(default_factory=list)
    tokens: list[tuple[str, str | None]] = field(default_factory=list)  # (text, edit id or None)
    pieces: list[Piece] = field(default_factory=list)  # with log-probabilities when asked for


# An answer as it is made: its pieces, then its End; closing it early stops the generation.
Answer = Generator["Piece | End", None, None]


def text_pieces(
    tokenizer,
    steps: Generator[Step, None, None],
    prompt_tokens: int,
    max_new_tokens: int,
    stop: tuple[str, ...] = (),
    line_only: bool = False,
) -> Answer:
    """The answer's pieces, then its End. `stop`: strings that end the answer (not part of it);
    `line_only`: the answer also ends at the first newline after some text (a method that answers in
    one line). Closing this early closes `steps` (if it is a generator)."""
    ids: list[int] = []
    text, emitted, held = "", 0, []
    hold = max((len(s) for s in stop), default=1) - 1  # a stop string may begin this far back
    try:
        for step in steps:
            ids.append(step.token_id)
            decoded = tokenizer.decode(ids)
            piece = ""
            if not decoded.endswith("\ufffd"):  # not inside a multi-byte character
                piece, text = decoded[len(text) :], decoded
            top = [(tokenizer.decode([t]), lp) for t, lp in step.top] if step.top is not None else None
            held.append(Piece(piece, step.token_id, step.edit_id, step.logprob, top))
            cut = _cut(text, stop, line_only, max(0, emitted - hold))
            if cut is not None:
                yield from _until(held, cut - emitted)
                yield End("stop", prompt_tokens, len(ids))
                return
            while held and emitted + len(held[0].text) <= len(text) - hold:
                emitted += len(held[0].text)
                yield held.pop(0)
        yield from held
        yield End("length" if len(ids) >= max_new_tokens else "stop", prompt_tokens, len(ids))
    finally:
        steps.close()  # let it undo its steering


def _cut(text: str, stop: tuple[str, ...], line_only: bool, start: int) -> int | None:
    """Where the answer ends inside `text`, if it does: the earliest stop string or line end."""
    ends = [i for i in (text.find(s, start) for s in stop) if i >= 0]
    if line_only:
        first_text = len(text) - len(text.lstrip())
        if first_text < len(text) and (i := text.find("\n", first_text)) >= 0:
            ends.append(i)
    return min(ends, default=None)


def _until(held: list[Piece], chars: int) -> Iterator[Piece]:
    """The held pieces that make up the first `chars` characters; a piece cut short is kept only if
    what remains of it has some text."""
    for p in held:
        if chars <= 0:
            return
        if len(p.text) <= chars:
            yield p
        elif p.text[:chars].strip():
            yield Piece(p.text[:chars], p.token_id, p.edit_id, p.logprob, p.top)
        chars -= len(p.text)


def collect(stream: Iterator[Piece | End]) -> Generation:
    """A streamed answer, whole."""
    pieces, end = [], None
    for item in stream:
        if isinstance(item, End):
            end = item
        else:
            pieces.append(item)
    if end is None:
        raise RuntimeError("the answer stream stopped before its end")
    return Generation(
        "".join(p.text for p in pieces),
        end,
        [p.token_id for p in pieces],
        [(p.text, p.edit_id) for p in pieces],
        pieces,
    )
