"""Where and in what precision the backbone runs: one rule (editors/backbone.py pick_dtype), and the
whole answer path (insert, scope, batched generation naming its edits) in half precision. No GPU here,
so CUDA's choice is tested through the rule and bfloat16 runs on the CPU."""

from __future__ import annotations

import time

import pytest
import torch
from pydantic import ValidationError

from app.core.config import Settings
from editors.backbone import pick_dtype
from editors.edited import Query
from editors.text_stream import collect
from tests.api.helpers import PROMPT, TARGET, UNRELATED, create, generate


def test_auto_is_float32_off_the_gpu_and_half_precision_on_it():
    assert pick_dtype(torch.device("cpu")) == torch.float32
    assert pick_dtype(torch.device("cuda"), bf16=True) == torch.bfloat16
    assert pick_dtype(torch.device("cuda"), bf16=False) == torch.float16
    assert pick_dtype(torch.device("cpu"), "bfloat16") == torch.bfloat16
    assert pick_dtype(torch.device("cuda"), "float32") == torch.float32
    with pytest.raises(ValueError, match="dtype"):
        pick_dtype(torch.device("cpu"), "int8")
    with pytest.raises(ValidationError, match="dtype"):
        Settings(_env_file=None, dtype="float64")


def test_an_edit_acts_in_bfloat16_alone_and_in_a_batch(start):
    client = start(dtype="bfloat16")
    model = client.app.state.service.backbone.model
    assert next(model.parameters()).dtype == torch.bfloat16
    edit = create(client)
    alone = generate(client, PROMPT, 6)
    assert alone["text"].lstrip().startswith(TARGET) and alone["tokens"][0]["edit_id"] == edit["id"]
    other = generate(client, UNRELATED, 6)

    service = client.app.state.service
    slow = model.register_forward_pre_hook(lambda *_: time.sleep(0.02))  # both rows are still running together
    try:
        streams = [service.stream(Query.prompt(PROMPT), 6), service.stream(Query.prompt(UNRELATED), 6)]
        heads = [next(s) for s in streams]
        together = [[(h.text, h.edit_id)] + collect(s).tokens for h, s in zip(heads, streams)]
    finally:
        slow.remove()
    assert service.model.batcher.peak_rows == 2
    assert together == [[(t["text"], t["edit_id"]) for t in g["tokens"]] for g in (alone, other)]
    withdrawn = client.delete(f"/edits/{edit['id']}")
    assert withdrawn.status_code == 200
    assert all(t["edit_id"] is None for t in generate(client, PROMPT, 6)["tokens"])
