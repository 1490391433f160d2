"""Answers judged in the wild ("The Mirage of Model Editing", Yang et al., ACL 2025): chat answers,
greedy, long enough to go on past the fact, each read whole (evaluation/judge.py), beside the unedited
model's answers to the same questions.

Per measured record with a true (old) answer other than its target, and a subject:
- chat: the edit's prompt as a chat turn, 40 tokens; coherent = states the target whole, not the old
  fact (the subject's own name and the target aside), no splice of the new name into the old.
- open: "Tell me about <subject>.", 48 tokens; mentions = names the target; coherent as above, and it
  tells about the subject: names it and says more than the target (" Manila" alone is no answer).
- yes/no: "Is it true that <prompt> <old>? Answer yes or no." must begin "No", and the same with the
  target must begin "Yes": right only when both are. The unedited model's agreement with the true fact
  (yes to the old, no to the target) is the baseline beside it.
- fluency: ROME's generation entropy (bigram and trigram, weighted 2/3 and 4/3) of the chat and open
  answers, over the unedited model's on the same questions. fluency_matched: the same with each
  unedited answer cut to its edited answer's length in words (n-gram entropy grows with length, so
  this tells a repetitive answer from a shorter one).
- unrelated_same: the record's out-of-scope probe asked as a chat turn, 40 tokens: the answer is the
  unedited model's, byte for byte.
- distracted_same: "<prompt> <target>. <out-of-scope probe>" continued, 16 tokens: a prompt that states
  the edited fact in passing and then asks about something else gets the unedited continuation (the
  reverse leak: the edit must not answer a question about another subject).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from evaluation.datasets import Record
from evaluation.judge import coherent, states, told, words
from evaluation.systems import System

CHAT_TOKENS = 40  # long enough to restate the old fact after the new one
OPEN_TOKENS = 48
YES_NO_TOKENS = 6  # the verdict is the first word
DISTRACTED_TOKENS = 16


def claim(prompt: str, answer: str) -> str:
    """The edit's prompt completed by `answer`, as the clause of "Is it true that ...?"; a question-form
    prompt becomes 'the answer to "<question>" is <answer>'."""
    p = prompt.strip()
    if p.endswith("?"):
        return f'the answer to "{p}" is {answer}'
    first, _, rest = p.partition(" ")
    if first in ("The", "A", "An") and rest:  # "Is it true that the mother tongue of ..."
        p = f"{first.lower()} {rest}"
    return f"{p} {answer}"


def yes_no_question(prompt: str, answer: str) -> str:
    """The edit's prompt with `answer` as a question to be answered yes or no."""
    p = prompt.strip()
    if p.endswith("?"):
        return f"{p} Is it {answer}? Answer yes or no."
    return f"Is it true that {claim(p, answer)}? Answer yes or no."


def distracted_prompt(prompt: str, target: str, probe: str) -> str:
    """The edited fact stated in passing, then a question about something else."""
    return f"{prompt.strip()} {target.strip()}. {probe.strip()}"


def open_request(subject: str) -> str:
    return f"Tell me about {subject}."


def verdict(answer: str) -> str | None:
    """ "yes" or "no" where the answer begins with one, else None."""
    w = words(answer)
    return w[0] if w and w[0] in ("yes", "no") else None


def entropy(text: str) -> float:
    """ROME's n-gram entropy of one generation: the weighted mean of its bigram and trigram entropies
    (bits), over whole words (low when the text repeats itself)."""
    w = words(text)
    parts = []
    for n, weight in ((2, 2 / 3), (3, 4 / 3)):
        grams = Counter(zip(*(w[i:] for i in range(n))))
        total = sum(grams.values())
        h = -sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0
        parts.append(weight * h)
    return sum(parts) / len(parts)


@dataclass
class Wild:
    judged: list[int]  # the measured records judged (those with a true answer and a subject), in order
    chat: list[str]
    chat_ok: list[bool]
    open: list[str]
    open_mentions: list[bool]
    open_ok: list[bool]
    yes: list[str]  # the answers to the question naming the target (should begin "yes")
    no: list[str]  # ... naming the old fact (should begin "no")
    yes_no_ok: list[bool]
    unedited_chat: list[str]
    unedited_open: list[str]
    unedited_yes_no_ok: list[bool]  # the unedited model: yes to the old fact, no to the target
    unrelated: list[str]  # the answers to the out-of-scope probe asked as a chat turn
    unrelated_same: list[bool]  # ... byte-identical to the unedited model's
    distracted: list[str]  # the continuations of distracted_prompt()
    distracted_same: list[bool]  # ... identical to the unedited model's, token for token

    def metrics(self) -> dict:
        n = len(self.judged)

        def share(xs: list[bool]) -> float | None:
            return sum(xs) / n if n else None

        edited = _mean_entropy(self.chat + self.open)
        unedited = _mean_entropy(self.unedited_chat + self.unedited_open)
        return {
            "chat_coherent": share(self.chat_ok),
            "open_mentions": share(self.open_mentions),
            "open_coherent": share(self.open_ok),
            "yes_no": share(self.yes_no_ok),
            "yes_no_unedited": share(self.unedited_yes_no_ok),
            "fluency": edited / unedited if n and unedited else None,
            "fluency_matched": _matched_fluency(self.chat + self.open, self.unedited_chat + self.unedited_open),
            "unrelated_same": share(self.unrelated_same),
            "distracted_same": share(self.distracted_same),
        }


def _mean_entropy(texts: list[str]) -> float:
    return sum(map(entropy, texts)) / len(texts) if texts else 0.0


def _matched_fluency(edited: list[str], unedited: list[str]) -> float | None:
    cut = [" ".join(words(b)[: len(words(a))]) for a, b in zip(edited, unedited)]
    plain = _mean_entropy(cut)
    return _mean_entropy(edited) / plain if edited and plain else None


def measure(system: System, unedited: System, records: list[Record], tok) -> Wild | None:
    """Ask `system` (edits active) and `unedited` every question (once, when they are one system);
    None where the model has no chat template or no record has a true answer to judge against."""
    # A record whose target is its true answer edits nothing: neither fact can be told from the other.
    judged = [k for k, r in enumerate(records) if r.truth and r.subject and words(r.truth) != words(r.target)]
    if getattr(tok, "chat_template", None) is None or not judged:
        return None
    rs = [records[k] for k in judged]
    n = len(rs)
    questions, budgets = _chat_questions(rs)
    owners = judged * 5
    answers = system.chat(questions, budgets, owners)
    plain = answers if unedited is system else unedited.chat(questions, budgets, owners)
    chat, opened, yes, no, unrelated = _parts(answers, n)
    plain_chat, plain_open, plain_yes, plain_no, plain_unrelated = _parts(plain, n)
    distracted = [distracted_prompt(r.prompt, r.target, r.loc_prompt) for r in rs]
    budgets = [DISTRACTED_TOKENS] * n
    went_on = system.generate(distracted, budgets, owners=judged)
    plain_went_on = went_on if unedited is system else unedited.generate(distracted, budgets, owners=judged)
    return Wild(
        judged=judged,
        chat=chat,
        chat_ok=[coherent(a, r.target, r.truth, r.subject) for a, r in zip(chat, rs)],
        open=opened,
        open_mentions=[states(a, r.target) for a, r in zip(opened, rs)],
        open_ok=[told(a, r.target, r.truth, r.subject) for a, r in zip(opened, rs)],
        yes=yes,
        no=no,
        yes_no_ok=[verdict(y) == "yes" and verdict(x) == "no" for y, x in zip(yes, no)],
        unedited_chat=plain_chat,
        unedited_open=plain_open,
        unedited_yes_no_ok=[verdict(y) == "no" and verdict(x) == "yes" for y, x in zip(plain_yes, plain_no)],
        unrelated=unrelated,
        unrelated_same=[a == b for a, b in zip(unrelated, plain_unrelated)],
        distracted=[tok.decode(g) for g in went_on],
        distracted_same=[a == b for a, b in zip(went_on, plain_went_on)],
    )


def _chat_questions(rs: list[Record]) -> tuple[list[str], list[int]]:
    """Five chat questions per record, kind by kind: its prompt, the open request, yes/no naming the
    target, yes/no naming the old fact, and its out-of-scope probe; and their token budgets."""
    n = len(rs)
    questions = (
        [r.prompt for r in rs]
        + [open_request(r.subject) for r in rs]
        + [yes_no_question(r.prompt, r.target) for r in rs]
        + [yes_no_question(r.prompt, str(r.truth)) for r in rs]
        + [r.loc_prompt for r in rs]
    )
    return questions, [CHAT_TOKENS] * n + [OPEN_TOKENS] * n + [YES_NO_TOKENS] * (2 * n) + [CHAT_TOKENS] * n


def _parts(xs: list[str], n: int) -> list[list[str]]:
    return [xs[i : i + n] for i in range(0, len(xs), n)]
