"""IKE, the in-context reference (`editserve eval --method ike`): the unedited model, told the edit.

Every query about a record is asked with that record's edit stated before it: in a system turn for a
chat, on a line before the prompt otherwise. Nothing decides scope: a query is about the record the
harness asks it for (its out-of-scope probe included, which is how in-context editing meets a user), and
NQ questions, about no record, are asked plainly. Nothing is stored, so nothing is withdrawn.
"""

from __future__ import annotations

from evaluation.datasets import Record
from evaluation.systems import CaseSet, PerRecord, System


def fact(record: Record) -> str:
    return f"{record.prompt.strip()} {record.target}."


class IkeSystem(System):
    name = "ike"

    def describe(self) -> dict:
        return {"chat": "system turn: " + _system_turn("<prompt> <target>."), "prompt": _prefixed("<fact>", "<query>")}

    def insert_all(self, records: list[Record]) -> float:
        self.ids = [f"e{i}" for i in range(len(records))]
        self.facts = {self.ids[i]: fact(r) for i, r in enumerate(records)}
        return 0.0

    def _fact(self, k: int) -> str:
        return self.facts[self.ids[k]]

    def predict(self, cs: CaseSet, base: PerRecord, progress: str | None = None, owners=None) -> PerRecord:
        if owners is None:
            return base
        queries = [_prefixed(self._fact(k), q) for k, q in zip(owners, cs.queries)]
        told = CaseSet.build(self.backbone.tokenizer, queries, cs.targets)
        return told.group(told.plain(self.backbone, self.batch_size, progress)[0])

    def generate(self, queries, budgets, base=None, progress=None, owners=None):
        if owners is not None:
            queries = [_prefixed(self._fact(k), q) for k, q in zip(owners, queries)]
        return super().generate(queries, budgets, None, progress)

    def chat(self, questions: list[str], budgets: list[int], owners=None) -> list[str]:
        if owners is None:
            return super().chat(questions, budgets)
        tok = self.backbone.tokenizer
        texts = [
            tok.apply_chat_template(
                [{"role": "system", "content": _system_turn(self._fact(k))}, {"role": "user", "content": q}],
                tokenize=False,
                add_generation_prompt=True,
            )
            for k, q in zip(owners, questions)
        ]
        return [tok.decode(g) for g in super().generate(texts, budgets)]


def _system_turn(fact: str) -> str:
    return f"You are a helpful assistant. Take this fact as true, though it may be new to you: {fact}"


def _prefixed(fact: str, query: str) -> str:
    return f"Fact: {fact}\n{query}"
