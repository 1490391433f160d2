"""Evaluation data as uniform records, read from ../shared/data (or --data-dir / EDITSERVE_EVAL_DATA).

Splits follow ../shared/data/README.md: `acceptance` files are for reporting only, `dev` (the train
files, PARAREL relations below P200, NQ-open dev) for tuning.

dataset: acceptance file | dev file | prompt / paraphrase / target | out-of-scope probe
- zsre: zsre_mend_eval_portability_gpt4.json | zsre_mend_train-1k.json | src / rephrase / alt | loc / loc_ans
- counterfact: counterfact-edit.json | counterfact-train.json | prompt / rephrase_prompt / target_new |
  locality_prompt / locality_ground_truth
- pararel: relations >= P200 | relations < P200 | appendix 9.6 of the iReVa paper (below) | NQ-open dev question
- knowedit: zsre/ZsRE-test-all.json | none | prompt / rephrase_prompt / target_new | NQ question of the split
- counterfact-rome: counterfact/counterfact_500.json | none | requested_rewrite / paraphrase_prompts[0] /
  target_new.str | neighborhood_prompts[0] / target_true.str

Beside those, a record carries the probes the files give (`Probe`: a prompt and its expected answer):
`same_subject` (KnowEdit `locality.Relation_Specificity`: the subject's other relations, answers that
must not change), `neighbourhood` (CounterFact ROME `neighborhood_prompts`: same relation, other
subject, whose answer stays `target_true`), `portability` (zsRE `portability` New Question/Answer,
KnowEdit `portability{kind: [...]}`: questions whose answer follows from the edit, so the expected
answer is the edited one). knowedit and counterfact-rome have acceptance files only.

NS (the iReVa paper's neighbourhood success) uses NQ questions: NQ-open.efficientqa.test for acceptance,
NQ-open.dev for dev, phrased as zsRE phrases its NQ probes ("nq question: ..."), answer = first answer.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DATASETS = ("zsre", "counterfact", "pararel", "knowedit", "counterfact-rome")
SPLITS = ("acceptance", "dev")
NQ_PREFIX = "nq question: "
PARAREL_SEED = 0


@dataclass(frozen=True)
class Probe:
    prompt: str
    answer: str  # expected answer: the unedited one (same_subject, neighbourhood), the edited one (portability)
    kind: str = ""  # the file's name for the probe's kind, where it has several (portability)


@dataclass(frozen=True)
class Record:
    prompt: str
    target: str
    paraphrase: str
    loc_prompt: str  # out-of-scope probe whose predictions must not change
    loc_answer: str
    subject: str
    truth: str | None = None  # the fact before the edit, when the dataset gives it
    paraphrases: tuple[str, ...] = ()  # every paraphrase the file gives, `paraphrase` first (when several)
    same_subject: tuple[Probe, ...] = ()  # the subject's other relations: answers unchanged by the edit
    neighbourhood: tuple[Probe, ...] = ()  # the same relation of other subjects: answers unchanged
    portability: tuple[Probe, ...] = ()  # questions whose answer follows from the edit


@dataclass(frozen=True)
class Question:
    prompt: str
    answer: str


def data_root(explicit: str | Path | None = None) -> Path:
    """--data-dir, else $EDITSERVE_EVAL_DATA, else ../shared/data next to the repository."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("EDITSERVE_EVAL_DATA")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _json(path: Path):
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing (set --data-dir or EDITSERVE_EVAL_DATA to the shared data dir)")
    return json.loads(path.read_text())


def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing (set --data-dir or EDITSERVE_EVAL_DATA to the shared data dir)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _check_split(split: str, only: tuple[str, ...] = SPLITS, dataset: str = "") -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    if split not in only:
        raise ValueError(f"{dataset} has no {split} file (only {', '.join(only)}): tune on another dataset's dev split")


def _first(answer) -> str:
    """The first answer of a list, or the answer itself."""
    return answer[0] if isinstance(answer, list) else answer


def zsre(split: str = "acceptance", root: Path | None = None) -> list[Record]:
    _check_split(split)
    name = "zsre_mend_eval_portability_gpt4.json" if split == "acceptance" else "zsre_mend_train-1k.json"
    rows = _json(data_root(root) / "zsre" / name)
    return [
        Record(
            prompt=r["src"],
            target=r["alt"],
            paraphrase=r["rephrase"],
            loc_prompt=r["loc"],
            loc_answer=r["loc_ans"],
            subject=r["subject"],
            truth=(r.get("answers") or [None])[0],
            portability=_zsre_portability(r.get("portability")),
        )
        for r in rows
    ]


def _zsre_portability(p: dict | None) -> tuple[Probe, ...]:
    if not p or not p.get("New Question"):
        return ()
    return (Probe(p["New Question"], p["New Answer"], "New Question"),)


def counterfact(split: str = "acceptance", root: Path | None = None) -> list[Record]:
    _check_split(split)
    name = "counterfact-edit.json" if split == "acceptance" else "counterfact-train.json"
    rows = _json(data_root(root) / "counterfact" / name)
    return [
        Record(
            prompt=r["prompt"],
            target=r["target_new"],
            paraphrase=r["rephrase_prompt"],
            loc_prompt=r["locality_prompt"],
            loc_answer=r["locality_ground_truth"],
            subject=r["subject"],
            truth=r.get("ground_truth"),
        )
        for r in rows
    ]


def nq(split: str = "acceptance", root: Path | None = None, file: str | None = None) -> list[Question]:
    """NQ-open questions with their first answer, as NS probes."""
    _check_split(split)
    name = file or ("NQ-open.efficientqa.test.1.1.jsonl" if split == "acceptance" else "NQ-open.dev.jsonl")
    return [
        Question(NQ_PREFIX + r["question"], r["answer"][0])
        for r in _jsonl(data_root(root) / "nq" / name)
        if r.get("answer")
    ]


def knowedit(split: str = "acceptance", root: Path | None = None) -> list[Record]:
    """KnowEdit's ZsRE test file: the edit, its rephrase, the subject's other relations
    (`locality.Relation_Specificity`) as `same_subject` and `portability` by kind; the out-of-scope
    probe of record i is NQ question i of the split (the file has no unrelated probe of its own)."""
    _check_split(split, ("acceptance",), "knowedit")
    rows = _json(data_root(root) / "zsre" / "ZsRE-test-all.json")
    loc = nq(split, root)
    return [
        Record(
            prompt=r["prompt"],
            target=r["target_new"],
            paraphrase=r["rephrase_prompt"],
            loc_prompt=loc[i % len(loc)].prompt,
            loc_answer=loc[i % len(loc)].answer,
            subject=r["subject"],
            truth=_first(r.get("ground_truth") or [None]),
            same_subject=tuple(
                Probe(p["prompt"], _first(p["ground_truth"]))
                for p in (r.get("locality") or {}).get("Relation_Specificity", [])
            ),
            portability=tuple(
                Probe(p["prompt"], _first(p["ground_truth"]), kind)
                for kind, probes in (r.get("portability") or {}).items()
                for p in probes
            ),
        )
        for i, r in enumerate(rows)
    ]


def counterfact_rome(split: str = "acceptance", root: Path | None = None) -> list[Record]:
    """CounterFact in ROME's format: the prompt is `requested_rewrite.prompt` with "{}" filled by the
    subject; every `neighborhood_prompts` entry (same relation, another subject) is a `neighbourhood`
    probe whose answer stays `target_true`, the first of them also the out-of-scope probe."""
    _check_split(split, ("acceptance",), "counterfact-rome")
    rows = _json(data_root(root) / "counterfact" / "counterfact_500.json")
    out = []
    for r in rows:
        rw = r["requested_rewrite"]
        truth = rw["target_true"]["str"]
        neighbours = tuple(Probe(p, truth) for p in r["neighborhood_prompts"])
        out.append(
            Record(
                prompt=rw["prompt"].replace("{}", rw["subject"]),
                target=rw["target_new"]["str"],
                paraphrase=r["paraphrase_prompts"][0],
                loc_prompt=neighbours[0].prompt,
                loc_answer=truth,
                subject=rw["subject"],
                truth=truth,
                paraphrases=tuple(r["paraphrase_prompts"]),
                neighbourhood=neighbours,
            )
        )
    return out


# -- PARAREL ------------------------------------------------------------------------------------------
_MASK = "[MASK]"


def _relation_number(path: Path) -> int:
    return int(path.stem.lstrip("P"))


def _as_question(pattern: str, subject: str) -> str:
    """A PARAREL pattern with [X] filled and [Y] as [MASK]; the sentence-final full stop is dropped, so
    "[X] is located in [Y] ." asks "<subject> is located in [MASK]" (the next-token form)."""
    text = pattern.replace("[X]", subject).replace("[Y]", _MASK).strip()
    return re.sub(r"\s*\.$", "", text).strip()


def _lcs(a: list[str], b: list[str]) -> list[str]:
    """Longest common contiguous sub-array of two token lists (first one found on ties)."""
    best, best_end = 0, 0
    prev = [0] * (len(b) + 1)
    for i in range(1, len(a) + 1):
        cur = [0] * (len(b) + 1)
        for j in range(1, len(b) + 1):
            if a[i - 1] == b[j - 1]:
                cur[j] = prev[j - 1] + 1
                if cur[j] > best:
                    best, best_end = cur[j], i
        prev = cur
    return a[best_end - best : best_end]


def _words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text)


def pararel(
    split: str = "acceptance", root: Path | None = None, tokenize: Callable[[str], list[str]] = _words
) -> list[Record]:
    """The iReVa paper's appendix 9.6 preprocessing (algorithm 3):

    - a fact's question bag is every pattern of its relation filled with the subject; questions ending in
      [MASK] (after dropping the final full stop) are compatible; bags with fewer than 2 are dropped;
    - the bag's subject is the longest common sub-array of all its questions (word and punctuation
      tokens here, GPT-2 tokens in the paper; the [MASK] placeholder is left out, or it would be the
      longest common part); bags whose subject is empty or the whole source question are dropped;
    - source = first compatible question, paraphrase = a random other compatible one (seeded);
    - the out-of-scope probe of each record is the next NQ-open dev question.
    Relations are read in numeric order and the records then shuffled with a fixed seed, so that the
    "first N records" mix relations. Prompts are the questions without the trailing [MASK].
    """
    _check_split(split)
    base = data_root(root) / "pararel" / "data"
    patterns_dir, facts_dir = base / "pattern_data" / "graphs_json", base / "trex_lms_vocab"
    if not patterns_dir.exists():
        raise FileNotFoundError(f"{patterns_dir} is missing (set --data-dir or EDITSERVE_EVAL_DATA)")
    rng = random.Random(PARAREL_SEED)
    out: list[tuple[str, str, str, str]] = []
    for pattern_file in sorted(patterns_dir.glob("P*.jsonl"), key=_relation_number):
        number = _relation_number(pattern_file)
        if (number >= 200) != (split == "acceptance"):
            continue
        facts_file = facts_dir / pattern_file.name
        if not facts_file.exists():
            continue
        patterns = [row["pattern"] for row in _jsonl(pattern_file)]
        for fact in _jsonl(facts_file):
            bag = [_as_question(p, fact["sub_label"]) for p in patterns]
            if len(bag) <= 1:
                continue
            compatible = [q for q in bag if q.endswith(_MASK)]
            if len(compatible) < 2:
                continue
            unmasked = [q.replace(_MASK, " ") for q in bag]
            subject = tokenize(unmasked[0])
            for q in unmasked[1:]:
                subject = _lcs(tokenize(q), subject)
            found = re.search(r"\s*".join(map(re.escape, subject)), unmasked[0]) if subject else None
            subject_text = found.group(0).strip() if found else ""
            src = compatible[0]
            if not subject_text or subject_text == src:
                continue
            para = rng.choice(compatible[1:])
            strip = lambda q: q[: -len(_MASK)].rstrip()  # noqa: E731
            out.append((strip(src), fact["obj_label"], strip(para), subject_text))
    rng.shuffle(out)
    loc = nq("dev", root)
    return [
        Record(
            prompt=p,
            target=t,
            paraphrase=q,
            loc_prompt=loc[i % len(loc)].prompt,
            loc_answer=loc[i % len(loc)].answer,
            subject=s,
            truth=t,
        )
        for i, (p, t, q, s) in enumerate(out)
    ]


LOADERS = {
    "zsre": zsre,
    "counterfact": counterfact,
    "pararel": pararel,
    "knowedit": knowedit,
    "counterfact-rome": counterfact_rome,
}
ONLY_ACCEPTANCE = ("knowedit", "counterfact-rome")  # no dev file in their format


def splits(dataset: str) -> tuple[str, ...]:
    """The splits a dataset has files for."""
    return ("acceptance",) if dataset in ONLY_ACCEPTANCE else SPLITS


def load(dataset: str, split: str = "acceptance", n: int | None = None, root: Path | None = None) -> list[Record]:
    """The first n records (all when n is None) of a dataset's file for the split."""
    if dataset not in LOADERS:
        raise ValueError(f"dataset must be one of {DATASETS}, not {dataset!r}")
    records = LOADERS[dataset](split, root)
    return records if n is None else records[:n]


def dev_edit_pairs(root: Path | None = None) -> list[tuple[str, str]]:
    """(prompt, target) of the dev files' edits, zsRE train then CounterFact train, each prompt once
    (a store holds one active edit per prompt): what the benches insert."""
    first: dict[str, tuple[str, str]] = {}
    for r in load("zsre", "dev", None, root) + load("counterfact", "dev", None, root):
        first.setdefault(r.prompt, (r.prompt, r.target))
    return list(first.values())
