"""Data for the scope classifier (`editserve train-scope`): edits with in-scope queries and hard
out-of-scope ones, from the tuning files only (../shared/data README: zsRE train-1k, CounterFact
train/val, KnowEdit wiki_counterfact train, NQ-open dev, PARAREL relations numbered below 200).

PARAREL gives the structure the other sets lack: cloze prompts cut from patterns that end in [Y],
paraphrases (same fact, other pattern), and the two hard negatives, same relation with another subject
and same subject with another relation. Question and chat forms come from the hand-written templates
below. Subjects are split train/dev/test by a seeded hash, so a dev or test subject is never trained on;
the last question template of each relation and the last chat wrapper of each family are never trained
on either, so held-out numbers also measure phrasings the models have not seen.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from evaluation.datasets import data_root

TEMPLATES = json.loads((Path(__file__).with_name("scope_templates.json")).read_text())
# relation -> (questions, indirect forms for "Do you know ..."); [X] is the subject.
QUESTIONS = {r: (v["questions"], v["indirect"]) for r, v in TEMPLATES["questions"].items()}
# relation -> yes/no questions whether [Y] is the answer; and wrappers of any cloze {c} and answer {y}.
YES_NO = {r: v["yes_no"] for r, v in TEMPLATES["questions"].items()}
YES_NO_CLOZE = TEMPLATES["yes_no"]
# Requests about [X] as a whole ("Tell me about [X]."): in the scope of every edit about [X].
OPEN = TEMPLATES["open"]
# Chat wrappers by what they wrap: q a question, ql the same starting lower-case, i an indirect form,
# c a cloze prompt.
CHAT = TEMPLATES["chat"]
# Relations whose questions can be the same question ("Where is X?" for a region, a country or a base):
# never used as negatives of each other.
CONFUSABLE = [set(g) for g in TEMPLATES["confusable"]]
# Relations that ask about the same kind of subject (0 person, 1 place, 2 organisation or thing):
# other-relation negatives are drawn from these.
SUBJECT_KINDS = [set(g) for g in TEMPLATES["subject_kinds"]]
# Other questions about a subject, beyond PARAREL's relations ("Who designed the Louvre?" is not about
# where it is): (template, SUBJECT_KINDS it suits, relations it could be the same question as).
GENERIC = [(g["template"], set(g["kinds"]), set(g["near"])) for g in TEMPLATES["generic"]]
# Wikidata's names of the PARAREL relations, for terse forms ("[X] place of birth"), and of other
# properties, as further same-subject negatives: (label, kinds, relations it could be the same as).
LABELS = TEMPLATES["labels"]
OTHER_LABELS = [(g["label"], set(g["kinds"]), set(g["near"])) for g in TEMPLATES["other_labels"]]
# How many of the last entries of each list only dev/test see: phrasings the models never trained on.
HELD_OUT = {"questions": 1, "chat": 1, "generic": 5, "other_labels": 10, "yes_no": 1, "open": 1}


def _train_part(items: list, key: str, train: bool) -> list:
    return items[: -HELD_OUT[key]] if train else items


def _kinds(rel: str) -> set[int]:
    return {i for i, g in enumerate(SUBJECT_KINDS) if rel in g}


def generic_questions(rel: str, train: bool) -> list[str]:
    kinds = _kinds(rel)
    return [t for t, suits, near in _train_part(GENERIC, "generic", train) if suits & kinds and rel not in near]


def other_labels(rel: str, train: bool) -> list[str]:
    kinds = _kinds(rel)
    labels = _train_part(OTHER_LABELS, "other_labels", train)
    return [t for t, suits, near in labels if suits & kinds and rel not in near]


def terse(label: str, subj: str, rng: random.Random) -> str:
    """A label asked the way knowledge-base probes ask: "[X] place of birth", "The place of birth of [X] is"."""
    return rng.choice([f"{subj} {label}", _fill(f"The {label} of [X] is", subj)])


def confusable(r1: str, r2: str) -> bool:
    return r1 == r2 or any(r1 in g and r2 in g for g in CONFUSABLE)


def other_relations(r: str) -> list[str]:
    return sorted({o for g in SUBJECT_KINDS if r in g for o in g if not confusable(r, o)})


def _fill(template: str, subject: str) -> str:
    text = template.replace("[X]", subject)
    return text[:1].upper() + text[1:]


def cloze_patterns(rel: str) -> list[str]:
    """The relation's patterns that end in [Y], cut before it: '[X] is located in [Y] .' -> '[X] is located in'."""
    out = []
    for line in (data_root() / "pararel/data/pattern_data/graphs_json" / f"{rel}.jsonl").read_text().splitlines():
        p = json.loads(line)["pattern"].strip().rstrip(".,").rstrip()
        if p.endswith("[Y]") and "[X]" in p[:-3]:
            cut = p[:-3].rstrip()
            if cut not in out:
                out.append(cut)
    return out


def split_of(subject: str, seed: int, dev: float = 0.1, test: float = 0.1) -> str:
    u = int(hashlib.sha256(f"{seed}:{subject}".encode()).hexdigest()[:8], 16) / 16**8
    return "dev" if u < dev else "test" if u < dev + test else "train"


@dataclass
class Pararel:
    """PARAREL facts (relation, subject) of the relations with question templates and cloze patterns."""

    seed: int
    patterns: dict[str, list[str]] = field(default_factory=dict)
    facts: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # split -> [(relation, subject)]
    objects: dict[str, list[str]] = field(default_factory=dict)  # relation -> its objects, in file order

    @classmethod
    def load(cls, seed: int) -> Pararel:
        self = cls(seed)
        for rel in sorted(QUESTIONS, key=lambda r: int(r[1:])):
            assert int(rel[1:]) < 200, rel  # relations >= 200 are acceptance data
            pats = cloze_patterns(rel)
            if not pats:
                continue
            self.patterns[rel] = pats
            path = data_root() / "pararel/data/trex_lms_vocab" / f"{rel}.jsonl"
            seen = set()
            self.objects[rel] = []
            for line in path.read_text().splitlines():
                row = json.loads(line)
                s = row["sub_label"]
                if row["obj_label"] not in self.objects[rel]:
                    self.objects[rel].append(row["obj_label"])
                if s not in seen:
                    seen.add(s)
                    self.facts.setdefault(split_of(s, seed), []).append((rel, s))
        return self

    def cloze(self, rel: str, subj: str, rng: random.Random, avoid: str | None = None) -> str:
        options = [p for p in self.patterns[rel] if _fill(p, subj) != avoid] or self.patterns[rel]
        return _fill(rng.choice(options), subj)


def question(rel: str, subj: str, rng: random.Random, train: bool, avoid: str | None = None) -> str:
    qs = _train_part(QUESTIONS[rel][0], "questions", train)
    options = [q for q in qs if _fill(q, subj) != avoid] or qs
    return _fill(rng.choice(options), subj)


def yes_no(rel: str | None, subj: str, answer: str, rng: random.Random, train: bool, prompt: str | None) -> str:
    """Asks whether `answer` is the fact: the relation's own yes/no question, or the edit's prompt (a
    cloze, or a question) with the answer; a third of the time with "Answer yes or no." after it, as
    the harness and many users add."""
    own = _train_part(YES_NO[rel], "yes_no", train) if rel is not None else []
    if own and (prompt is None or rng.random() < 0.6):
        text = _fill(rng.choice(own).replace("[Y]", answer), subj)
    elif prompt is not None and prompt.rstrip().endswith("?"):
        text = f"{prompt.strip()} Is it {answer}?"
    elif prompt is not None:
        wrap = rng.choice(_train_part(YES_NO_CLOZE, "yes_no", train))
        first, _, rest = prompt.strip().partition(" ")
        if not wrap.startswith("{c}") and first in ("The", "A", "An") and rest:
            prompt = f"{first.lower()} {rest}"  # "Is it true that the mother tongue of ..."
        text = wrap.format(c=prompt.strip(), y=answer)
    else:
        raise ValueError("a yes/no question needs a relation or a prompt")
    return text + (" Answer yes or no." if rng.random() < 0.33 else "")


def open_request(subj: str, rng: random.Random, train: bool) -> str:
    return _fill(rng.choice(_train_part(OPEN, "open", train)), subj)


def chat_question(q: str, rng: random.Random, train: bool) -> str:
    wrappers = _train_part(CHAT["q"], "chat", train)
    return rng.choice(wrappers).format(q=q, ql=q[:1].lower() + q[1:])


def chat(
    rel: str | None, subj: str, rng: random.Random, train: bool, cloze_text: str | None = None, q: str | None = None
) -> str:
    """A user message about (rel, subj): wrapping a question, an indirect question or the cloze."""
    families = [
        f
        for f, ok in (("q", q is not None or rel is not None), ("i", rel is not None), ("c", cloze_text is not None))
        if ok
    ]
    family = rng.choice(families)
    if family == "q":
        return chat_question(q if q is not None else question(rel, subj, rng, train), rng, train)
    wrappers = _train_part(CHAT[family], "chat", train)
    if family == "i":
        return rng.choice(wrappers).format(i=QUESTIONS[rel][1][rng.randrange(2)].replace("[X]", subj))
    return rng.choice(wrappers).format(c=cloze_text)


def any_form(par: Pararel, rel: str, subj: str, rng: random.Random, train: bool) -> tuple[str, str]:
    """(text, form) about (rel, subj) as a cloze, a question, a terse label or a chat message."""
    form = rng.choice(["cloze", "question", "chat", "cloze", "question", "chat", "keyword", "yesno"])
    if form == "keyword":
        return terse(rng.choice(LABELS[rel]), subj, rng), form
    if form == "yesno":
        return yes_no(rel, subj, rng.choice(par.objects[rel]), rng, train, par.cloze(rel, subj, rng)), form
    if form == "cloze":
        return par.cloze(rel, subj, rng), form
    if form == "question":
        return question(rel, subj, rng, train), form
    return chat(rel, subj, rng, train, cloze_text=par.cloze(rel, subj, rng)), form


# -- one edit with what is and is not in its scope ---------------------------------------------------
Key = tuple  # (subject, relation); relation is a PARAREL id, or a record id elsewhere (relation unknown)


@dataclass
class Unit:
    source: str  # pararel, zsre, cf, ke
    edit: str
    key: Key
    positives: list[tuple[str, str]]  # (query, kind): paraphrase, question, chat, prompt (the edit itself)
    negatives: list[tuple[str, str, Key]]  # (query, kind, its fact): srel, ssubj, nq


def same_scope(a: Key, b: Key) -> bool:
    """Could a query about fact b be in the scope of edit a? Only PARAREL's relations are known; for
    the other sets the same subject is enough to keep a pair out of the negatives."""
    if a[0] is None or a[0] != b[0]:
        return False
    if a[1].startswith("P") and b[1].startswith("P"):
        return confusable(a[1], b[1])
    return True


def pararel_unit(
    par: Pararel,
    rel: str,
    subj: str,
    neg_pool: list[tuple[str, str]],
    rng: random.Random,
    train: bool,
    n_srel: int = 2,
    n_ssubj: int = 2,
) -> Unit:
    """The edit is a cloze prompt, or a quarter of the time a question: users write edits both ways."""
    as_question = rng.random() < 0.25
    edit = question(rel, subj, rng, train) if as_question else par.cloze(rel, subj, rng)
    c2 = par.cloze(rel, subj, rng, avoid=edit)
    q2 = question(rel, subj, rng, train, avoid=edit)
    pos = [
        (q2 if as_question else c2, "paraphrase"),
        (c2 if as_question else q2, "question"),
        (chat(rel, subj, rng, train, cloze_text=c2), "chat"),
        (terse(rng.choice(LABELS[rel]), subj, rng), "keyword"),
        (yes_no(rel, subj, rng.choice(par.objects[rel]), rng, train, c2), "yesno"),
        (open_request(subj, rng, train), "open"),
        (edit, "prompt"),
    ]
    # Relations with one cloze pattern (P37, P140, P190) have no cloze paraphrase of a cloze edit.
    pos = [(q, kind) for q, kind in pos if kind == "prompt" or q != edit]
    neg = []
    same_rel = [s for r, s in neg_pool if r == rel and s != subj]
    for s in rng.sample(same_rel, min(n_srel, len(same_rel))):
        neg.append((any_form(par, rel, s, rng, train)[0], "srel", (s, rel)))
    others = [r for r in other_relations(rel) if r in par.patterns]
    for r in rng.sample(others, min(n_ssubj, len(others))):
        neg.append((any_form(par, r, subj, rng, train)[0], "ssubj", (subj, r)))
    generic = generic_questions(rel, train)
    if generic and rng.random() < 0.6:
        text = _fill(rng.choice(generic), subj)
        neg.append((chat_question(text, rng, train) if rng.random() < 0.3 else text, "ssubj", (subj, "generic")))
    labels = other_labels(rel, train)
    if labels and rng.random() < 0.6:
        neg.append((terse(rng.choice(labels), subj, rng), "ssubj", (subj, "generic")))
    return Unit("pararel", edit, (subj, rel), pos, neg)


def _json(path: str):
    return json.loads((data_root() / path).read_text())


def zsre_units(start: int, stop: int, rng: random.Random, train: bool) -> list[Unit]:
    out = []
    for i, r in enumerate(_json("zsre/zsre_mend_train-1k.json")[start:stop]):
        answer = rng.choice([r["alt"], *r["answers"]])
        pos = [
            (r["rephrase"], "paraphrase"),
            (chat_question(r["rephrase"], rng, train), "chat"),
            (chat_question(r["src"], rng, train), "chat"),
            (yes_no(None, r["subject"], answer, rng, train, r["src"]), "yesno"),
            (open_request(r["subject"], rng, train), "open"),
            (r["src"], "prompt"),
        ]
        loc = r["loc"].removeprefix("nq question: ").strip()
        out.append(Unit("zsre", r["src"], (r["subject"], f"zsre{start + i}"), pos, [(loc, "nq", (None, "nq"))]))
    return out


def counterfact_units(split: str, start: int, stop: int, rng: random.Random, train: bool) -> list[Unit]:
    """CounterFact's locality prompt is the same relation with another subject (which it does not name)."""
    wrap = _train_part(CHAT["c"], "chat", train)
    out = []
    for i, r in enumerate(_json(f"counterfact/counterfact-{split}.json")[start:stop]):
        answer = rng.choice([r["target_new"], r["ground_truth"]])
        pos = [
            (r["rephrase_prompt"], "paraphrase"),
            (rng.choice(wrap).format(c=r["prompt"]), "chat"),
            (yes_no(None, r["subject"], answer, rng, train, r["prompt"]), "yesno"),
            (open_request(r["subject"], rng, train), "open"),
            (r["prompt"], "prompt"),
        ]
        out.append(
            Unit(
                "cf",
                r["prompt"],
                (r["subject"], f"cf-{split}{start + i}"),
                pos,
                [(r["locality_prompt"], "srel", (None, "cf-loc"))],
            )
        )
    return out


def knowedit_units(start: int, stop: int, rng: random.Random, train: bool) -> list[Unit]:
    """KnowEdit's Relation_Specificity prompts ask about the edit's subject, another relation."""
    wrap = _train_part(CHAT["c"], "chat", train)
    out = []
    for i, r in enumerate(_json("knowedit/benchmark_wiki_counterfact_train_cf.json")[start:stop]):
        key = (r["subject"], f"ke{start + i}")
        neg = [
            (x["prompt"], "ssubj", (r["subject"], f"ke{start + i}-other"))
            for x in r.get("locality", {}).get("Relation_Specificity", [])
        ]
        answer = rng.choice([r["target_new"], r["ground_truth"]])
        pos = [
            (rng.choice(wrap).format(c=r["prompt"]), "chat"),
            (yes_no(None, r["subject"], answer, rng, train, r["prompt"]), "yesno"),
            (open_request(r["subject"], rng, train), "open"),
            (r["prompt"], "prompt"),
        ]
        out.append(Unit("ke", r["prompt"], key, pos, neg))
    return out


def nq_questions(start: int, stop: int) -> list[str]:
    lines = (data_root() / "nq" / "NQ-open.dev.jsonl").read_text().splitlines()[start:stop]
    return [json.loads(line)["question"] for line in lines]


# Record ranges of the other files: train / dev (thresholds) / test (the reported table). zsRE's first
# 300 are also the records train-serac holds out.
RANGES = {
    "zsre": {"train": (300, 1000), "dev": (0, 150), "test": (150, 300)},
    "cf": {"train": ("train", 0, 10000), "dev": ("val", 0, 960), "test": ("val", 960, 1919)},
    "ke": {"train": (0, 1100), "dev": (1100, 1264), "test": (1264, 1428)},
    "nq": {"train": (0, 3000), "dev": (3000, 3300), "test": (3300, 3610)},
}


def units(
    split: str, seed: int, par: Pararel, pararel_n: int, cf_n: int, limit: int | None = None, ke_n: int | None = None
) -> list[Unit]:
    """The split's edits in a fixed (seeded) order. Outside train, the PARAREL edits have distinct
    subjects and their other-subject negatives are drawn from subjects without an edit, so that every
    negative is truly out of the scope of every edit of the split."""
    rng = random.Random(f"{seed}:{split}")
    train = split == "train"
    pool = sorted(par.facts.get(split, []))
    rng.shuffle(pool)
    n = pararel_n if limit is None else min(pararel_n, limit)
    if train:
        picked, neg_pool = pool[:n], pool
    else:
        picked, seen = [], set()
        for rel, subj in pool:
            if len(picked) < n and subj not in seen:
                picked.append((rel, subj))
                seen.add(subj)
        neg_pool = [(r, s) for r, s in pool if s not in seen]
    out = [pararel_unit(par, r, s, neg_pool, rng, train) for r, s in picked]
    z0, z1 = RANGES["zsre"][split]
    cf_split, c0, c1 = RANGES["cf"][split]
    k0, k1 = RANGES["ke"][split]
    few = limit if limit is not None else 10**9
    out += zsre_units(z0, min(z1, z0 + few), rng, train)
    out += counterfact_units(cf_split, c0, min(c1, c0 + cf_n, c0 + few), rng, train)
    out += knowedit_units(k0, min(k1, k0 + few, k0 + (ke_n if ke_n is not None else k1)), rng, train)
    return out
