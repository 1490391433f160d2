"""Decoding: the answers of a fixed set of rows, token by token, each token naming the edit that
produced it, and how each next token is chosen (greedy, or sampled).

`decode` is the loop of a single stream and of the harness's batches; the server's running batch
(editors/batching.py) lets rows join and leave instead. Both step through `editors.engine.Rows`.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass

import torch

from editors.backbone import Backbone
from editors.engine import Rows, Steering


@dataclass(frozen=True)
class Sampling:
    """How each next token is chosen: the most likely one at temperature 0 (greedy, the default);
    otherwise drawn from the softmax at `temperature`, kept to the smallest set of tokens whose
    probability reaches `top_p`, from a generator seeded with `seed` (the same seed, the same draw).
    `logprobs`: also report the chosen token's log-probability under the model and this many of the
    most likely alternatives (None: none)."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    logprobs: int | None = None


GREEDY = Sampling()


@dataclass
class Step:
    token_id: int
    edit_id: str | None
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None  # the most likely tokens and their log-probabilities


class Chooser:
    def __init__(self, sampling: Sampling):
        self.sampling = sampling
        self.rng = None
        if sampling.temperature > 0:
            # Drawn on the CPU, so a seed gives the same tokens on any device.
            self.rng = torch.Generator()
            self.rng.manual_seed(sampling.seed if sampling.seed is not None else torch.seed())

    def __call__(self, logits: torch.Tensor, edit_id: str | None, greedy: int) -> Step:
        """`greedy`: the row's most likely token, taken for the whole batch at once (one copy from the
        device a step); a greedy choice without log-probabilities reads nothing else."""
        s = self.sampling
        if self.rng is None and s.logprobs is None:
            return Step(greedy, edit_id)
        logits = logits.float().cpu()
        token = greedy
        if self.rng is not None:
            # In float64, and greedy where the temperature is so small that the softmax overflows: the
            # limit of sampling as the temperature goes to 0.
            probs = torch.softmax(logits.double() / s.temperature, -1)
            if s.top_p < 1.0:
                sorted_p, order = probs.sort(descending=True)
                # every token before the mass reaches top_p, and the one that reaches it
                keep = sorted_p.cumsum(-1) - sorted_p < s.top_p
                probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
            if bool(torch.isfinite(probs).all()) and float(probs.sum()) > 0:
                token = int(torch.multinomial(probs, 1, generator=self.rng))
        if s.logprobs is None:
            return Step(token, edit_id)
        logp = torch.log_softmax(logits, -1)
        top = logp.topk(s.logprobs) if s.logprobs > 0 else None
        alternatives = list(zip(top.indices.tolist(), top.values.tolist())) if top is not None else []
        return Step(token, edit_id, float(logp[token]), alternatives)


@torch.no_grad()
def decode(
    backbone: Backbone,
    prompts: list[list[int]],
    budgets: list[int],
    steerings: Sequence[Steering] = (),
    choosers: list[Chooser] | None = None,
) -> Generator[list[Step | None], None, None]:
    """The continuations of token-id prompts, decoded together: per step, each row's new Step (None for
    a row that has ended: EOS, not yielded, or its budget). A row that ended stays in the batch, fed
    its greedy token, so the others' arithmetic does not change with it. Closing the iterator early
    undoes the steerings."""
    choosers = choosers or [Chooser(GREEDY) for _ in prompts]
    eos = backbone.tokenizer.eos_token_id
    rows = Rows(backbone)
    out: list[list[int]] = [[] for _ in prompts]
    done = [b <= 0 for b in budgets]
    latest: list[int] | None = None
    try:
        while not all(done):
            if latest is None:
                logits, writers = rows.prefill(prompts, steerings)
            else:
                logits, writers = rows.decode(latest, steerings, out)
            made: list[Step | None] = [None] * len(prompts)
            # argmax (in a third of its time); a row that has ended is fed on, so the others' arithmetic stays
            latest = logits.max(-1).indices.tolist()
            for i in range(len(prompts)):
                if done[i]:
                    continue
                step = choosers[i](logits[i], writers[i], latest[i])
                latest[i] = step.token_id
                if step.token_id == eos:
                    done[i] = True
                    continue
                out[i].append(step.token_id)
                done[i] = len(out[i]) >= budgets[i]
                made[i] = step
            yield made
    finally:
        for steering in steerings:
            steering.close()


def steps(
    backbone: Backbone,
    ids: list[int],
    max_new_tokens: int = 16,
    steering: Steering | None = None,
    sampling: Sampling = GREEDY,
) -> Generator[Step, None, None]:
    """The continuation of the token ids `ids`, one step at a time, until EOS (not yielded) or
    `max_new_tokens`; each step names the edit `steering` says wrote it. Closing the iterator early
    undoes the steering."""
    run = decode(backbone, [ids], [max_new_tokens], [steering] if steering is not None else [], [Chooser(sampling)])
    try:
        for made in run:
            if made[0] is not None:
                yield made[0]
    finally:
        run.close()


def generate_batch(
    backbone: Backbone, prompts: list[list[int]], budgets: list[int], steering: Steering | None = None
) -> list[list[Step]]:
    """Greedy continuations of many token-id prompts at once, whole: decode() collected. A row's tokens
    equal its steps() alone, up to float rounding of the padded batch."""
    out: list[list[Step]] = [[] for _ in prompts]
    for made in decode(backbone, prompts, budgets, [steering] if steering is not None else []):
        for row, step in zip(out, made):
            if step is not None:
                row.append(step)
    return out
