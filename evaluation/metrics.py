"""The metrics of `editserve eval`, each in [0, 1], micro-averaged over tokens where they are token-level:

es, ps     teacher-forced accuracy of the target's tokens after the prompt / paraphrase (appendix 9.5:
           one case per target token, the prompt plus the target tokens before it)
locality   share of the out-of-scope probe's teacher-forced tokens whose prediction equals the
           unedited model's (zsRE loc/loc_ans, CounterFact locality_prompt, PARAREL an NQ question)
es_gen, ps_gen  greedy generation (KV cache, as the server generates) from the prompt / paraphrase
           starts with the whole target (leading whitespace of the generation ignored)
ns         teacher-forced accuracy of NQ answers with the edits active (the iReVa paper's NS)
rs, con    withdrawable methods only (null otherwise): each edit k is withdrawn on its own, the others
           active, and its prompt's cases predicted again; rs = share of the tokens whose prediction
           the edit had changed (edited != unedited) that change back (withdrawn != edited); con =
           share of all the prompt's tokens predicted as by the unedited model (withdrawn == unedited)
chat_es, chat_ps  the prompt / paraphrase asked as one chat turn (the model's chat template, the
           question as the user's message): the generated answer contains the target (case-insensitive)
chat_coherent  the prompt asked as one chat turn, a 40-token greedy answer judged whole
           (evaluation/judge.py): it states the target whole, does not state the true (old) answer
           outside the subject's own name, and does not splice the new name into the old
open_mentions, open_coherent  "Tell me about <subject>." as a chat turn, 48 tokens: the answer names
           the target / and is coherent as above
yes_no     "Is it true that <prompt> <old>? Answer yes or no." answered no and the same with the target
           answered yes (both); yes_no_unedited: the unedited model answers both right for the true fact
fluency    ROME's generation entropy of the chat and open answers over the unedited model's on the
           same questions (evaluation/wild.py); fluency_matched: the same with each unedited answer
           cut to the length of the edited one (entropy grows with length)
unrelated_same  the record's out-of-scope probe asked as a chat turn, 40 tokens: byte-identical to the
           unedited model's answer
distracted_same  "<prompt> <target>. <out-of-scope probe>" continued 16 tokens: identical to the
           unedited model's (the edit, stated in passing, does not answer another question). These
           nine: over the records with a true answer; null where the file gives none or the model has
           no chat template
same_subject  share of the teacher-forced tokens of the subject's other relations (KnowEdit
           Relation_Specificity) whose prediction equals the unedited model's; null where the file has none
neighbourhood  the same for prompts of the same relation about other subjects (CounterFact ROME
           neighborhood_prompts, answer target_true); null where the file has none
portability  teacher-forced accuracy of the answers that follow from the edit (zsRE / KnowEdit
           portability); null where the file has none
subject_aliasing  the same for KnowEdit's Subject_Aliasing probes alone (the edit's question asked
           about its subject by another name; no aliases are given to the edits)
n_edits    records evaluated (edits requested; refused ones are listed in report.md)
seconds    wall clock of the whole run; insert_seconds_per_edit: mean time of one insert (FT: training
           time / N)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from evaluation.systems import PerRecord  # per record: the (predicted, expected) token of each case

# What evaluation/wild.py measures of answers in the wild, in METRIC_KEYS' order.
WILD_KEYS = (
    "chat_coherent",
    "open_mentions",
    "open_coherent",
    "yes_no",
    "yes_no_unedited",
    "fluency",
    "fluency_matched",
    "unrelated_same",
    "distracted_same",
)

METRIC_KEYS = (
    "es",
    "ps",
    "locality",
    "es_gen",
    "ps_gen",
    "ns",
    "rs",
    "con",
    "chat_es",
    "chat_ps",
    *WILD_KEYS,
    "same_subject",
    "neighbourhood",
    "portability",
    "subject_aliasing",
    "n_edits",
    "seconds",
    "insert_seconds_per_edit",
)


def fmt(v, digits: int = 4) -> str:
    """A metric as a table shows it: "–" for null, floats to `digits` places."""
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def token_accuracy(per_record: PerRecord) -> float:
    pairs = [p == y for rec in per_record for p, y in rec]
    return sum(pairs) / len(pairs) if pairs else 0.0


def exact_match(per_record: PerRecord) -> float:
    """Share of records whose every target token is right."""
    return sum(all(p == y for p, y in rec) for rec in per_record) / len(per_record) if per_record else 0.0


def unchanged_share(base: PerRecord, edited: PerRecord) -> float:
    """Share of base tokens whose prediction is the same under the edited model (position by position;
    a token the edited path lacks counts as changed)."""
    same = total = 0
    for b, e in zip(base, edited):
        total += len(b)
        same += sum(pb == pe for (pb, _), (pe, _) in zip(b, e))
    return same / total if total else 1.0


def changed_tokens(base: list[tuple[int, int]], edited: list[tuple[int, int]]) -> int:
    return sum(pb != pe for (pb, _), (pe, _) in zip(base, edited))


def starts_with_target(text: str, target: str) -> bool:
    return text.lstrip().startswith(target.strip())


def firing_diagnostics(records, sets, base, edited, fired_by, withdrawal, ids, subjects) -> dict:
    """For a method that names the edit acting on each case: which edit acted, and how the cases fared
    in each group. Empty for a method that names none (fired_by all None)."""
    if not any(fired_by.get(name) for name in sets):
        return {}
    own_of = {edit_id: k for k, edit_id in enumerate(ids)}
    # every inserted edit's subject (with --eval-sample, the edits measured are only some of them)
    subject_of = subjects or {edit_id: records[k].subject for k, edit_id in enumerate(ids)}
    out = {}
    for name in ("es", "ps"):
        owners = fired_by.get(name)
        if owners is None:
            continue
        groups = {"own": [0, 0], "other edit, same subject": [0, 0], "other edit": [0, 0], "none": [0, 0]}
        cs = sets[name]
        flat = [pair for rec in edited[name] for pair in rec]
        for i, ((p, y), who) in enumerate(zip(flat, owners)):
            k = cs.owner[i]
            if who is None:
                g = "none"
            elif own_of.get(who) == k:
                g = "own"
            elif subject_of.get(who) == records[k].subject:
                g = "other edit, same subject"
            else:
                g = "other edit"
            groups[g][0] += 1
            groups[g][1] += p == y
        out[name] = {g: {"cases": c, "accuracy": (r / c if c else None)} for g, (c, r) in groups.items()}
    for name in ("locality", "ns"):
        owners = fired_by.get(name)
        if owners is None:
            continue
        flat_b = [pair for rec in base[name] for pair in rec]
        flat_e = [pair for rec in edited[name] for pair in rec]
        fired = [who is not None for who in owners]
        changed = [pb != pe for (pb, _), (pe, _) in zip(flat_b, flat_e)]
        # A probe that names a subject the set edits too may ask exactly that edit's fact (CounterFact's
        # locality prompt of one record is often another record's edited fact): count those apart.
        cs = sets[name]
        about_named = [
            who is not None and _names(cs.queries[cs.owner[i]], subject_of.get(who)) for i, who in enumerate(owners)
        ]
        out[name] = {
            "cases": len(owners),
            "fired": sum(fired),
            "changed_where_fired": sum(c and f for c, f in zip(changed, fired)),
            "changed_where_not_fired": sum(c and not f for c, f in zip(changed, fired)),
            "changed_by_an_edit_of_a_subject_the_probe_names": sum(c and a for c, a in zip(changed, about_named)),
            "unchanged_share_without_those": _share_unchanged(changed, about_named),
        }
    if withdrawal.get("fired_after"):
        out["withdrawal"] = withdrawal["fired_after"]
    return out


def edited_fact_split(records, probes, base: PerRecord, edited: PerRecord) -> dict:
    """The same-subject probes split by what they ask. KnowEdit's `Relation_Specificity` holds, beside
    the subject's other facts, the edited fact itself in other words ("Mallory Reaves mother" for the
    edit "The mother of Mallory Reaves is whom?"): its expected answer is the edit's old one. An edit
    that generalises changes those, so they are counted apart: the share unchanged of each group."""
    groups: dict[str, tuple[list, list]] = {"asks_the_edited_fact": ([], []), "other_facts": ([], [])}
    for (k, probe), b, e in zip(probes, base, edited):
        truth = records[k].truth
        same = truth is not None and _norm(probe.answer) == _norm(truth)
        g = groups["asks_the_edited_fact" if same else "other_facts"]
        g[0].append(b)
        g[1].append(e)
    return {
        name: {"probes": len(b), "unchanged": unchanged_share(b, e) if b else None} for name, (b, e) in groups.items()
    }


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


def _names(probe: str, subject: str | None) -> bool:
    return bool(subject) and subject.lower() in probe.lower()


def _share_unchanged(changed: list[bool], left_out: list[bool]) -> float | None:
    kept = [c for c, out in zip(changed, left_out) if not out]
    return (len(kept) - sum(kept)) / len(kept) if kept else None


def contains_target(text: str, target: str) -> bool:
    return target.strip().lower() in text.lower()
