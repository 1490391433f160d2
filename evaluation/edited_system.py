"""iReVa and SERAC under evaluation: the server's own EditedModel, built as the server builds it.

Every query takes the server's answer path (editors/edited.py): the scope model decides which edit,
if any, it is about, and that edit's method answers. Teacher-forced cases are scored on that path
(one forward per prefix, the edit acting on the last position), generations through it, batched.
"""

from __future__ import annotations

import time
from dataclasses import asdict

from tqdm.auto import tqdm

from app.services.startup import build_model
from editors.backbone import Backbone
from editors.edited import Query
from editors.registry import METHODS
from evaluation.datasets import Record
from evaluation.systems import CaseSet, PerRecord, System, set_config


class EditedSystem(System):
    withdrawable = True

    def __init__(
        self,
        backbone: Backbone,
        method: str,
        batch_size: int = 32,
        cache_dir=None,
        layer: int | None = None,
        retrofit: bool = False,
        overrides: dict[str, str] | None = None,
    ):
        super().__init__(backbone, batch_size)
        from app.core.config import Settings

        self.name, self.retrofit = method, retrofit
        settings = Settings(_env_file=None, **({"cache_dir": cache_dir} if cache_dir else {}))
        section = getattr(settings, method)
        scope_overrides = {k[len("scope.") :]: v for k, v in (overrides or {}).items() if k.startswith("scope.")}
        set_config(section, {k: v for k, v in (overrides or {}).items() if not k.startswith("scope.")})
        set_config(settings.scope, scope_overrides)
        if layer is not None:
            if not hasattr(section, "layer"):
                raise SystemExit(f"--method {method} has no --layer")
            section.layer = layer
        self.settings = settings
        self.model = build_model(settings, [method], backbone)  # as the server builds it
        self.editor = self.model.editor(method)
        if retrofit and not self.editor.supports_retrofit:
            raise SystemExit(f"--retrofit: method {method} does not support retrofit")
        self.decide_seconds: list[float] = []

    def describe(self) -> dict:
        model = self.model.scope.model
        out = {
            "config": asdict(getattr(self.settings, self.name)),
            "retrofit": self.retrofit,
            "scope": {
                "config": asdict(self.settings.scope),
                "fingerprint": model.fingerprint,
                "trained": model.trained,
            },
        }
        out.update(METHODS[self.name].describe(self.editor))
        return out

    def insert_all(self, records: list[Record]) -> float:
        self.ids = [f"e{i}" for i in range(len(records))]
        self.subjects = {self.ids[i]: r.subject for i, r in enumerate(records)}
        self.prompts = {self.ids[i]: (r.prompt, r.target) for i, r in enumerate(records)}
        seconds = 0.0
        for i, r in enumerate(tqdm(records, desc=f"insert ({self.name})", leave=False)):
            t = time.perf_counter()
            try:
                self.model.insert(self.name, self.ids[i], r.prompt, r.target, self.retrofit, r.subject)
                self.model.drop_shadows(r.prompt)  # as the server does once the edit is stored
            except ValueError as exc:
                self.rejected[i] = str(exc)
            seconds += time.perf_counter() - t
        return seconds

    def _decide(self, queries: list[Query]):
        t = time.perf_counter()
        out = self.model.decide(queries)
        self.decide_seconds.append((time.perf_counter() - t) / max(len(queries), 1))
        return out

    def predict(self, cs: CaseSet, base: PerRecord, progress: str | None = None, owners=None) -> PerRecord:
        queries = [Query.prompt(q) for q in cs.queries]
        decisions = []
        for s in range(0, len(queries), 256):
            decisions += self._decide(queries[s : s + 256])
        out = [list(b) for b in base] if base is not None else [[] for _ in queries]
        fired: list[str | None] = [None] * len(cs.expected)
        for k, d in enumerate(tqdm(decisions, desc=progress, disable=progress is None, leave=False)):
            if d is None:
                if base is None:
                    out[k] = self._plain(cs, k)
                continue
            t_ids = cs.target_ids[k]
            preds = self.model.next_tokens(queries[k], d, [t_ids[:i] for i in range(len(t_ids))])
            out[k] = list(zip(preds, t_ids))
            for i in cs.cases_of(k):
                fired[i] = d.edit_id
        self.last_fired_owner = fired
        return out

    def _plain(self, cs: CaseSet, k: int) -> list[tuple[int, int]]:
        t_ids = cs.target_ids[k]
        preds = self.model.next_tokens(Query.prompt(cs.queries[k]), None, [t_ids[:i] for i in range(len(t_ids))])
        return list(zip(preds, t_ids))

    def generate(self, queries, budgets, base=None, progress=None, owners=None):
        gens = self.model.generate_many([Query.prompt(q) for q in queries], budgets, batch_size=self.batch_size)
        return [g.token_ids for g in gens]

    def chat(self, questions: list[str], budgets: list[int], owners=None) -> list[str]:
        """The text of the answer to each question asked as a chat turn, as the server answers it."""
        tok = self.backbone.tokenizer
        queries = [Query.chat(tok, [{"role": "user", "content": q}]) for q in questions]
        return [g.text for g in self.model.generate_many(queries, budgets, batch_size=self.batch_size)]

    def predict_withdrawn(self, k: int, cs: CaseSet, base: PerRecord) -> PerRecord | None:
        """Record k's cases with edit k withdrawn (the others active), then the edit put back."""
        if k in self.rejected:
            return None
        edit_id = self.ids[k]
        prompt, target = self.prompts[edit_id]
        before = self.model.snapshot(edit_id, self.name, prompt, target, self.subjects[edit_id])
        self.model.withdraw(edit_id, self.name)
        try:
            return self.predict(cs.subset([k]), None)
        finally:
            self.model.restore(before)

    def predict_one(self, k: int, cs: CaseSet) -> list[tuple[int, int]]:
        return self.predict(cs.subset([k]), None)[0]

    def close(self) -> None:
        self.model.close()  # the batch engine, if an answer started it
        self.editor.close()
