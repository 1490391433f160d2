"""A preview: what the model would answer with an edit, without making it."""

from __future__ import annotations

import uuid

from app.services.editing import EditingService
from app.services.errors import check_retrofit, check_text, invalid_input
from editors.edited import Query, Restore
from editors.text_stream import Generation

PREVIEW_NEIGHBOURS = 16  # active edits nearest a previewed prompt whose answers are checked


def preview(
    service: EditingService,
    method: str,
    prompt: str,
    target: str,
    retrofit: bool,
    asked: list[Query],
    max_new_tokens: int,
    subject: str | None = None,
    aliases: tuple[str, ...] = (),
) -> tuple[list[tuple[Generation, Generation]], list[tuple[str, str, Generation, Generation]]]:
    """What the model answers to `asked` (the first being the prompt) now and with the edit, storing
    nothing; and the active edits near the prompt whose own prompts the edit would take over, as
    (id, prompt, answer now, answer with the edit). The trial edit is seen by no other request:
    changes and answers wait until the preview is done."""
    editor = service.method_editor(method)
    check_retrofit(editor, retrofit)
    check_text("target", target)
    service.check_length("prompt", prompt)
    service.check_target(target)
    with service.writes, service.model.lock:
        service.refuse_duplicate(prompt)
        near = service.model.scope.nearest(prompt, PREVIEW_NEIGHBOURS)
        before = [service.model.generate(q, max_new_tokens) for q in asked]
        trial_id = f"preview-{uuid.uuid4()}"
        invalid_input(service.model.insert, method, trial_id, prompt, target, retrofit, subject, aliases)
        try:
            after = [service.model.generate(q, max_new_tokens) for q in asked]
            # An answer changes only if the scope model now gives its query to the new edit.
            decided = service.model.decide([Query.prompt(e.prompt) for e in near])
            taken = [e for e, d in zip(near, decided) if d is not None and d.edit_id == trial_id]
            taken_after = [service.model.generate(Query.prompt(e.prompt), max_new_tokens) for e in taken]
        finally:
            service.model.restore(Restore(trial_id, method, prompt, target, None, subject))
        taken_before = [service.model.generate(Query.prompt(e.prompt), max_new_tokens) for e in taken]
    affected = [
        (e.edit_id, e.prompt, b, a) for e, b, a in zip(taken, taken_before, taken_after) if b.token_ids != a.token_ids
    ]
    return list(zip(before, after)), affected
