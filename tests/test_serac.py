"""SERAC: the editor's verbs and persistence, the counterfactual path answering for queries the scope
model puts in an edit's scope (real MiniLM, untrained), the trained adapter, on the real packaged model."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from editors.edited import EditedModel, Query
from editors.generation import Step, generate_batch
from editors.scope.config import ScopeConfig
from editors.scope.index import ScopeIndex
from editors.scope.model import ScopeModel
from editors.serac import SeracConfig, SeracEditor
from editors.text_stream import collect, text_pieces

torch.set_num_threads(1)

# zsRE train records (zsre_mend_train-1k.json): prompt, target, paraphrase.
EDITS = [
    ("Which person was the head of government of Munich?", "Bruno Granier", "Who was the director of Munich?"),
    (
        "What production company was involved in Sambhav Asambhav?",
        "Reliance Entertainment",
        "The Sambhav Asambhav production company is what?",
    ),
    (
        "Who was the designor of Albert and Edith Adelman House?",
        "Frank Gehry",
        "Who made Albert and Edith Adelman House?",
    ),
]
UNRELATED = [
    "who sings does he love me with reba",
    "when was the last time anyone was on the moon",
    "The capital of France is",
    "Photosynthesis turns sunlight into",
]


@pytest.fixture(scope="module")
def backbone(editserve_cache, packaged_model_dir):
    from editors.backbone import load_backbone

    return load_backbone(cache_dir=editserve_cache, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def scope_model():
    return ScopeModel.load(ScopeConfig(use_trained=False), None)


def edited(backbone, scope_model, editor) -> EditedModel:
    model = EditedModel(backbone, {"serac": editor}, ScopeIndex(scope_model))
    for edit_id, (p, _) in editor.edits.items():
        model.scope.put(edit_id, "serac", p)
    return model


@pytest.fixture
def editor(backbone):
    ed = SeracEditor(backbone, SeracConfig(use_adapter=False))
    for i, (p, t, _) in enumerate(EDITS):
        ed.insert(f"e{i}", p, t)
    return ed


# -- the editor's verbs ---------------------------------------------------------------------------------
@pytest.mark.integration
def test_withdraw_and_update(editor):
    editor.withdraw("e1")
    assert editor.neurons("e1") == 0 and editor.neurons("e0") == 1 and "e1" not in editor.edits
    tensors = editor.update("e0", "Who is the designer of the Eiffel Tower?", "Gustave Flaubert")
    assert editor.edits["e0"] == ("Who is the designer of the Eiffel Tower?", "Gustave Flaubert")
    assert bytes(tensors["target"].tolist()).decode() == "Gustave Flaubert"
    with pytest.raises(KeyError):
        editor.update("nope", "a?", "b")


@pytest.mark.integration
def test_state_round_trips_through_safetensors(editor, backbone, tmp_path):
    for i in range(len(EDITS)):
        save_file(editor.tensors(f"e{i}"), str(tmp_path / f"e{i}.safetensors"))
    fresh = SeracEditor(backbone, SeracConfig(use_adapter=False))
    items = [(f"e{i}", p, t, load_file(str(tmp_path / f"e{i}.safetensors"))) for i, (p, t, _) in enumerate(EDITS)]
    items.append(("other", "Another prompt?", "x", items[0][3]))  # a blob of another edit
    assert list(fresh.load_many(items)) == ["other"]
    for i, (p, t, para) in enumerate(EDITS):
        assert fresh.edits[f"e{i}"] == (p, t)
        assert fresh.counterfactual_prompt(f"e{i}", para) == editor.counterfactual_prompt(f"e{i}", para)


@pytest.mark.integration
def test_bad_input_is_a_value_error(editor):
    for prompt, target in [("", "x"), ("Who?", ""), ("Who?", "  "), ("Who?", "word " * 40)]:
        with pytest.raises(ValueError):
            editor.insert("bad", prompt, target)
    with pytest.raises(ValueError):
        editor.insert("e0", "Who?", "x")  # already live


# -- the counterfactual path -------------------------------------------------------------------------------
@pytest.mark.integration
def test_counterfactual_prompt_states_the_edit(editor):
    text = editor.counterfactual_prompt("e0", EDITS[0][2])
    assert text == f"Question: {EDITS[0][0]}\nAnswer: {EDITS[0][1]}\nQuestion: {EDITS[0][2]}\nAnswer:"


@pytest.mark.integration
def test_in_scope_queries_get_the_target_and_name_the_edit(editor, backbone, scope_model):
    model = edited(backbone, scope_model, editor)
    for i, (p, t, para) in enumerate(EDITS):
        for q in (p, para):
            out = model.generate(Query.prompt(q), max_new_tokens=8)
            assert out.text.strip() == t, (q, out.text)
            assert {e for _, e in out.tokens} == {f"e{i}"}
    for q in UNRELATED:
        assert model.generate(Query.prompt(q), 6) == model.generate(Query.prompt(q), 6, edits=False)
        assert model.decide([Query.prompt(q)]) == [None]


def test_a_line_only_answer_keeps_its_first_line():
    class Pieces:  # a tokenizer whose token i decodes to texts[i]
        def __init__(self, texts):
            self.texts = texts

        def decode(self, ids):
            return "".join(self.texts[i] for i in ids)

    def answer(texts):
        run = (Step(i, "e") for i in range(len(texts)))
        return collect(text_pieces(Pieces(texts), run, 0, 16, line_only=True))

    got = answer([" Lyon", "\n", "Question"])
    assert (got.text, got.token_ids, got.tokens) == (" Lyon", [0], [(" Lyon", "e")])
    assert answer(["\n", " Lyon.", "\nQ"]).text == "\n Lyon."


# -- trained adapter ---------------------------------------------------------------------------------------
def test_adapter_hooks_equal_peft_and_leave_the_base_alone(tmp_path):
    import copy

    from peft import LoraConfig, get_peft_model

    from editors.serac.adapter import LoraHooks
    from tests.tiny_models import packaged_tokenizer, tiny_backbone

    bb = tiny_backbone("llama", packaged_tokenizer(), seed=0, layers=2)
    peft_model = get_peft_model(
        copy.deepcopy(bb.model),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0),
    )
    torch.manual_seed(1)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)  # B starts at zero: make the adapter do something
    peft_model.save_pretrained(str(tmp_path))
    peft_model.eval()
    ids = torch.tensor([bb.tokenizer("Question: who?\nAnswer: me")["input_ids"]])
    with torch.no_grad():
        base = bb.model(ids).logits
        expected = peft_model(ids).logits
        hooks = LoraHooks(bb.model, tmp_path)
        with hooks.active():
            got = bb.model(ids).logits
        after = bb.model(ids).logits
    assert not torch.allclose(expected, base, atol=1e-3)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.equal(after, base)


def test_adapter_for_another_backbone_is_not_used(tmp_path, caplog):
    from peft import LoraConfig, get_peft_model

    from tests.tiny_models import packaged_tokenizer, tiny_backbone

    tok = packaged_tokenizer()
    other = tiny_backbone("llama", tok, seed=0, layers=2)
    get_peft_model(other.model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(str(tmp_path))
    bb = tiny_backbone("gpt2", tok, seed=0, layers=2)  # no q_proj at all
    ed = SeracEditor(bb, SeracConfig(adapter_dir=str(tmp_path)))
    assert ed.adapter is None and "not used" in caplog.text


def test_adapter_order_setting_data_dir_shared(tmp_path):
    from types import SimpleNamespace

    from editors.serac.adapter import default_adapter_dir, shared_adapter_dir
    from editors.serac.method import config_from, resolve_adapter

    model = "packaged:smollm2-135m-instruct"
    settings = SimpleNamespace(data_dir=tmp_path / "data", cache_dir=tmp_path / "cache", model=model)
    # nothing trained yet: where train-serac would write one
    assert resolve_adapter(settings) == (str(default_adapter_dir(settings.data_dir)), "none")
    for where, source in (
        (shared_adapter_dir(settings.cache_dir, model), "shared"),
        (default_adapter_dir(settings.data_dir), "data dir"),
    ):
        where.mkdir(parents=True)
        (where / "adapter_config.json").write_text("{}")
        (where / "adapter_model.safetensors").write_bytes(b"")
        assert resolve_adapter(settings) == (str(where), source)
        assert config_from(settings).adapter_dir == str(where)
    settings.serac = SeracConfig(adapter_dir="/elsewhere")
    assert resolve_adapter(settings) == ("/elsewhere", "setting")


@pytest.mark.integration
def test_default_settings_on_the_packaged_model_use_the_adapter_set_up_trained(
    backbone, tmp_path, monkeypatch, editserve_cache, serac_adapter
):
    """The server's own path (Settings from the environment -> registry build) on the real model, with
    the shared adapter `make` trains at set-up (`editserve train-serac --shared`)."""
    from app.core.config import Settings
    from editors.registry import METHODS

    for key in ("EDITSERVE_SERAC__ADAPTER_DIR", "EDITSERVE_SERAC__USE_ADAPTER", "EDITSERVE_MODEL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("EDITSERVE_CACHE_DIR", str(editserve_cache))
    serac = METHODS["serac"]
    settings = Settings(_env_file=None, data_dir=tmp_path / "data")
    assert settings.model == backbone.name == "packaged:smollm2-135m-instruct"
    ed = serac.build(backbone, settings, None)
    assert ed.adapter is not None and ed.adapter.path == serac_adapter
    assert ed.template == SeracConfig().template == ed.adapter.template
    for i, (p, t, _) in enumerate(EDITS):
        ed.insert(f"e{i}", p, t)
    model = edited(backbone, ScopeModel.load(ScopeConfig(use_trained=False), None), ed)
    for i, (p, t, para) in enumerate(EDITS):
        for q in (p, para):
            out = model.generate(Query.prompt(q), max_new_tokens=8)
            assert out.text.strip() == t and {e for _, e in out.tokens} == {f"e{i}"}, (q, out.text)
    ids = backbone.tokenizer(ed.counterfactual_prompt("e0", EDITS[0][2]), return_tensors="pt")["input_ids"]
    with torch.no_grad():
        base = backbone.model(ids).logits
        with ed.context():
            assert not torch.equal(backbone.model(ids).logits, base)

    monkeypatch.setenv("EDITSERVE_SERAC__USE_ADAPTER", "false")
    off = Settings(_env_file=None, data_dir=tmp_path / "data")
    assert off.serac.use_adapter is False
    assert serac.build(backbone, off, None).adapter is None
    # the adapter is not part of the fingerprint: a data dir made with or without it starts with the other
    assert serac.fingerprint(backbone, off) == serac.fingerprint(backbone, settings)


def test_the_shared_adapter_is_not_picked_for_another_backbone(tmp_path):
    from types import SimpleNamespace

    from editors.serac.method import build, resolve_adapter
    from tests.tiny_models import packaged_tokenizer, tiny_backbone

    bb = tiny_backbone("llama", packaged_tokenizer(), seed=0, layers=2)
    settings = SimpleNamespace(data_dir=tmp_path / "data", cache_dir=tmp_path / "cache", model=bb.name)
    assert resolve_adapter(settings)[1] == "none"
    assert build(bb, settings, None).adapter is None


@pytest.mark.integration
def test_train_serac_writes_an_adapter_the_editor_uses(backbone, tmp_path, editserve_cache):
    from evaluation.training.serac import main

    out = tmp_path / "data" / "serac" / "adapter"
    assert (
        main(
            [
                "--out",
                str(out),
                "--steps",
                "2",
                "--batch",
                "2",
                "--zsre-start",
                "990",
                "--cf-count",
                "4",
                "--chat-records",
                "2",
                "--cache-dir",
                str(editserve_cache),
            ]
        )
        == 0
    )
    assert (out / "adapter_model.safetensors").exists() and (out / "serac_train.json").exists()
    import json

    meta = json.loads((out / "serac_train.json").read_text())
    assert meta["template"] == SeracConfig().template and meta["model"] == "packaged:smollm2-135m-instruct"
    assert meta["records"] == {"zsre_start": 990, "cf_count": 4, "chat": 2} and meta["steps"] == 2
    # two records, seven questions each, answered by the model (a few may go on to the old fact)
    assert meta["chat_system"] == SeracConfig().chat_system and 10 <= meta["chat_examples"] <= 14
    assert meta["examples"] == 2 * meta["chat_examples"]  # as many one-line answers beside them
    ed = SeracEditor(backbone, SeracConfig(adapter_dir=str(out)))
    assert ed.adapter is not None and ed.template == SeracConfig().template
    ed.insert("e0", *EDITS[0][:2])
    ids = backbone.tokenizer(ed.counterfactual_prompt("e0", EDITS[0][2]), return_tensors="pt")["input_ids"]
    with torch.no_grad():
        base = backbone.model(ids).logits
        with ed.context():
            adapted = backbone.model(ids).logits
        assert torch.equal(backbone.model(ids).logits, base)  # the hooks are gone again
    assert not torch.equal(adapted, base)


@pytest.mark.integration
def test_eval_finds_the_adapter_as_the_server_does(backbone, monkeypatch, editserve_cache, serac_adapter):
    from evaluation.build import build

    monkeypatch.delenv("EDITSERVE_SERAC__ADAPTER_DIR", raising=False)
    untrained = {"scope.use_trained": "false"}
    described = build("serac", backbone, cache_dir=editserve_cache, overrides=untrained).describe()
    assert described["adapter"]["dir"] == str(serac_adapter)
    assert described["adapter"]["trained"]["model"] == backbone.name
    off = build("serac", backbone, cache_dir=editserve_cache, overrides={**untrained, "use_adapter": "false"})
    assert off.describe()["adapter"] is None


@pytest.mark.integration
def test_the_trained_counterfactual_model_answers_a_chat_turn(backbone, serac_adapter):
    """A chat turn in an edit's scope, on the adapter set-up trained: the answer states the new fact in
    a sentence and not the old one; a yes/no question gets the edit's verdict. (Open requests state
    it about four times in five: a figure of docs/results.md, not a test.)"""
    from evaluation.judge import coherent
    from evaluation.wild import verdict, yes_no_question

    ed = SeracEditor(backbone, SeracConfig(adapter_dir=str(serac_adapter)))
    prompt, target, old, subject = "The Louvre is located in", "Madrid", "Paris", "the Louvre"
    ed.insert("e", prompt, target)
    asked = ["Where is the Louvre?", yes_no_question(prompt, target), yes_no_question(prompt, old)]
    reads = [ed.reads("e", [], q, chat=True) for q in asked]
    assert backbone.tokenizer.decode(reads[0]).count("Remember this fact: The Louvre is located in Madrid.") == 1
    with ed.context():
        got = generate_batch(backbone, reads, [40, 8, 8], ed.steer(["e"] * 3, asked))
    where, yes, no = (backbone.tokenizer.decode([s.token_id for s in g]) for g in got)
    assert coherent(where, target, old, subject) and len(where.split()) > 3, where
    assert (verdict(yes), verdict(no)) == ("yes", "no"), (yes, no)
    # a prompt, not a chat turn, still reads the one-line template
    assert (
        ed.reads("e", [], "Where is the Louvre?")
        == backbone.tokenizer(ed.counterfactual_prompt("e", "Where is the Louvre?"))["input_ids"]
    )
