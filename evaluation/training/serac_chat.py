"""Chat examples for SERAC's counterfactual model, written by the unedited model itself.

The counterfactual model of a chat turn reads the edit in a system turn and answers the user as the
assistant (editors/serac/model.py `chat_prompt`). To answer in full sentences, in any form of
question, it learns from the backbone's own answers. Each train record gets seven questions: the
edit's prompt as a chat turn, its paraphrase, an open request about the subject, two yes/no
questions naming the new fact and two naming the old. Each is answered by an opening that states
the new fact where the answer states it ("The Louvre is located in Madrid", "No. The Louvre is
located in Madrid."), continued by the unedited model, greedy, in its own words. An answer that
then restates the old fact is dropped. The answer ends with the model's end of turn where it ended;
one cut by the token budget carries no end, so the adapter learns to go on, not to stop there.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from editors.backbone import encode_prompt
from editors.generation import generate_batch
from editors.serac.model import chat_prompt
from editors.statement import fact, opening
from evaluation.datasets import Record
from evaluation.judge import coherent, words
from evaluation.wild import claim

# The wordings a user might ask in; one of each kind per record, picked by the seeded generator.
OPEN = ("Tell me about {s}.", "What do you know about {s}?", "Describe {s} in a few sentences.")
YES_NO = ("Is it true that {c}? Answer yes or no.", "Yes or no: is it true that {c}?", "Is it true that {c}?")
BUDGET = {"chat": 28, "paraphrase": 28, "open": 32, "yes": 16, "no": 16}


@dataclass(frozen=True)
class ChatExample:
    record: Record
    kind: str  # chat | paraphrase | open | yes | no
    question: str
    opening: str  # the answer's first words, stating the new fact


def usable(r: Record) -> bool:
    """A record teaches a chat answer when it has a subject and an old fact other than the new one."""
    return bool(r.truth and r.subject and words(r.truth) != words(r.target))


def questions(records: list[Record], rng: random.Random) -> list[ChatExample]:
    out = []
    for r in filter(usable, records):
        said = fact(r.prompt, r.target)
        open_said = said if r.prompt.strip().endswith("?") else said.removesuffix(".")
        asked = [
            ("chat", r.prompt.strip(), opening(r.prompt, r.target, r.prompt)),
            ("paraphrase", r.paraphrase.strip(), opening(r.prompt, r.target, r.paraphrase)),
            ("open", rng.choice(OPEN).format(s=r.subject), open_said),
        ]
        # Two wordings each of the yes and the no question: the verdict is one token of a short
        # answer, so it needs examples of its own to be learned rather than guessed.
        for kind, said_of, verdict in (("yes", r.target, "Yes"), ("no", str(r.truth), "No")):
            for wording in rng.sample(YES_NO, 2):
                asked.append((kind, wording.format(c=claim(r.prompt, said_of)), f"{verdict}. {said}"))
        out += [ChatExample(r, kind, q, op) for kind, q, op in asked if q]
    return out


def answers(backbone, examples: list[ChatExample], batch: int = 16) -> list[tuple[str, bool]]:
    """(answer, ended) per example: its opening continued by the unedited model (the user's question
    alone, no system turn), greedy; `ended` where the model closed its turn within the budget."""
    tok = backbone.tokenizer
    rows = []
    for ex in examples:
        turn = tok.apply_chat_template(
            [{"role": "user", "content": ex.question}], tokenize=False, add_generation_prompt=True
        )
        rows.append(encode_prompt(tok, turn) + tok(ex.opening, add_special_tokens=False)["input_ids"])
    order = sorted(range(len(rows)), key=lambda k: len(rows[k]))  # similar lengths pad less
    out: list[tuple[str, bool]] = [("", False)] * len(rows)
    for s in range(0, len(order), batch):
        chunk = order[s : s + batch]
        budgets = [BUDGET[examples[k].kind] for k in chunk]
        got = generate_batch(backbone, [rows[k] for k in chunk], budgets)
        for k, made, budget in zip(chunk, got, budgets):
            ops = tok(examples[k].opening, add_special_tokens=False)["input_ids"]
            text = tok.decode(ops + [step.token_id for step in made])
            out[k] = (text.strip(), len(made) < budget)
    return out


def chat_examples(backbone, records: list[Record], system: str, seed: int) -> list[tuple[str, str, bool]]:
    """(counterfactual chat prompt, answer, ended) for every kept example of `records`."""
    examples = questions(records, random.Random(seed))
    kept = []
    for ex, (answer, ended) in zip(examples, answers(backbone, examples)):
        r = ex.record
        if not coherent(answer, r.target, r.truth, r.subject):
            continue  # it went on to restate the old fact: not an answer to learn
        prompt = chat_prompt(backbone.tokenizer, system, r.prompt, r.target, ex.question)
        kept.append((prompt, answer, ended))
    return kept
