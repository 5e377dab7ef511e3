"""The embedded checkpoints, the bundled supersense task, the WordNet parser and the supersense example."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

from scripts.embedded_build import wordnet as wordnet_data
from softprompt_ext import SoftPromptConfig
from softprompt_ext.embedded import embedded_model_path, load_embedded
from softprompt_ext.lm_adapted import is_span_corruption_only
from softprompt_ext.tasks.supersense import (
    NOUN_DIR,
    SUPERSENSE_LABELS,
    VERB_DIR,
    load_supersense,
    read_supersense,
    supersense_batch,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# shape documented in the model card and softprompt_ext/embedded.py
SHAPE = {"d_model": 256, "d_kv": 64, "d_ff": 683, "num_layers": 4, "num_decoder_layers": 4, "num_heads": 4,
         "vocab_size": 8192, "feed_forward_proj": "gated-gelu",
         # transformers 5 always ties T5's embeddings: T5 1.0's tied convention, output scaled by d_model^-0.5
         "tie_word_embeddings": True, "scale_decoder_outputs": True}


@pytest.fixture(scope="module")
def lm_adapted():
    return load_embedded("lm_adapt")


@pytest.mark.parametrize("kind", ["lm_adapt", "span"])
def test_checkpoint_has_documented_shape_and_fp16_weights(kind):
    from safetensors import safe_open
    from transformers import AutoConfig

    path = embedded_model_path(kind)
    config = AutoConfig.from_pretrained(path)
    assert {k: getattr(config, k) for k in SHAPE} == SHAPE
    weights = os.path.join(path, "model.safetensors")
    assert os.path.getsize(weights) < 25 * 2**20
    with safe_open(weights, "pt") as handle:
        dtypes = {handle.get_slice(name).get_dtype() for name in handle.keys()}
    assert dtypes == {"F16"}


def test_lm_adapted_loads_offline_with_t5_token_layout(lm_adapted):
    model, tokenizer = lm_adapted
    assert model.dtype == torch.float32 and not model.training
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert len(tokenizer) == 8192
    assert tokenizer.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_99>"]) == [8092, 8191]
    assert model.get_input_embeddings().weight.shape == (8192, 256)
    enc = tokenizer(["dog: a domesticated carnivorous mammal"], return_tensors="pt")
    assert enc["input_ids"][0, -1].item() == 1  # EOS appended, as T5 does
    out = model.generate(**enc, max_new_tokens=3, do_sample=False)  # [1, <=3]
    assert out.shape[0] == 1 and 1 < out.shape[1] <= 3


def test_lm_adapted_config_records_adaptation_and_is_not_warned(lm_adapted):
    from peft import get_peft_model

    path = embedded_model_path("lm_adapt")
    with open(os.path.join(path, "config.json"), encoding="utf-8") as handle:
        record = json.load(handle)["lm_adaptation"]
    assert record["objective"] == "prefix_lm" and record["steps"] >= 1
    assert not is_span_corruption_only(path)
    model, _ = lm_adapted
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        get_peft_model(model, SoftPromptConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=2,
                                               prompt_tuning_init="RANDOM_UNIFORM"))
    assert not [w for w in caught if "span-corruption" in str(w.message)]


@pytest.mark.parametrize("kind", ["lm_adapt", "span"])
def test_encoder_keeps_tokens_apart(kind):
    """Regression for the first build (tied table at N(0, d^-0.5)): after layer 1 the encoder's residual stream had
    norm ~8,500 and effective rank 1.4 against token embeddings of norm ~1, and prompt tuning stayed at chance."""
    sys.path.insert(0, REPO)
    from benchmarks.encoder_use import residual_stream

    model, tokenizer = load_embedded(kind)
    stream = residual_stream(model, tokenizer, [r["text"] for r in read_supersense("dev")[:128]])
    embeddings, layers = stream[0], stream[1:]
    assert all(layer["effective_rank"] >= 10 for layer in layers), stream  # first build: 1.4 to 1.9; v2 >= 16; v3 >= 21
    assert all(layer["norm"] <= 20 * embeddings["norm"] for layer in layers), stream  # first build: 7,800x; now <= 8x


@pytest.mark.parametrize("kind, objective", [("span", "span_corruption"), ("lm_adapt", "prefix_lm")])
def test_both_checkpoints_read_their_input(kind, objective):
    """Each checkpoint's own objective is predicted better from the example's own input than a neighbour's.

    The failure this pins: the first v3 attempt's LM-adapted decoder ignored its encoder (6.605 vs
    6.608), and v2's barely read it (5.824 vs 5.884), so no prompt could steer them. The shipped v3 build
    (Adafactor, T5's parameter-scaled LM adaptation): span 5.760 vs 5.887, LM-adapted 5.932 vs 6.073. The gap
    alone is no collapse test (the collapsed first build's span checkpoint had 0.43); the rank and norm test
    above is. v2's span checkpoint, trained on glosses only, had 0.70 on these glosses; v3's prose-trained
    decoder predicts more of a masked gloss span from its own prefix."""
    sys.path.insert(0, REPO)
    from benchmarks.encoder_use import input_dependence

    model, tokenizer = load_embedded(kind)
    losses = input_dependence(model, tokenizer, [r["text"] for r in read_supersense("dev")[:64]], objective)
    assert losses["shuffled_input_loss"] - losses["own_input_loss"] > 0.1, losses


def test_span_checkpoint_is_detected_as_span_corruption():
    assert is_span_corruption_only(embedded_model_path("span"))


def test_span_checkpoint_records_its_objective_and_no_adaptation():
    with open(os.path.join(embedded_model_path("span"), "config.json"), encoding="utf-8") as handle:
        config = json.load(handle)
    assert config["pretraining"]["objective"] == "span_corruption"
    assert "lm_adaptation" not in config


def test_unknown_kind_and_split_raise():
    with pytest.raises(ValueError, match=r"kind='t5-base' is not an embedded checkpoint; use one of"):
        embedded_model_path("t5-base")
    with pytest.raises(ValueError, match=r"split='validation' is not a supersense split"):
        read_supersense("validation")


@pytest.mark.parametrize("directory, classes", [(NOUN_DIR, wordnet_data.SUPERSENSES),
                                                (VERB_DIR, wordnet_data.VERB_SUPERSENSES)])
def test_supersense_splits_are_disjoint_balanced_and_labelled(directory, classes):
    splits = {name: read_supersense(name, directory) for name in ("train", "dev", "test")}
    assert {name: len(rows) for name, rows in splits.items()} == {"train": 2000, "dev": 320, "test": 320}
    ids = {name: {r["id"] for r in rows} for name, rows in splits.items()}
    texts = {name: {r["text"] for r in rows} for name, rows in splits.items()}
    for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
        assert not ids[a] & ids[b] and not texts[a] & texts[b]
    for name, rows in splits.items():
        assert len(ids[name]) == len(rows)
        counts = {label: sum(r["label"] == label for r in rows) for label in classes.values()}
        assert set(counts.values()) == {len(rows) // 8}, counts
        assert all(classes[r["lexname"]] == r["label"] for r in rows)
    dataset = load_supersense("dev", directory)
    assert dataset.column_names == ["id", "text", "label", "lexname"] and len(dataset) == 320


SNIPPET = """\
  1 This software and database is being provided to you, the LICENSEE, by
02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 002 @ 02083346 n 0000 ~ 01322604 n 0000 | a member of the genus Canis; "the dog barked all night"; "a dog's life"
00022686 29 v 02 stimulate 0 arouse 1 001 @ 00021939 v 0000 01 + 08 00 | cause to be alert and energetic; "Coffee stimulates me"
00004171 00 s 01 moribund(p) 0 001 & 00002728 a 0000 | being on the point of death; breathing your last
"""


def test_wndb_parser_on_hand_made_snippet():
    records = [wordnet_data.parse_data_line(line) for line in SNIPPET.splitlines()]
    assert records == [
        None,
        wordnet_data.Synset(2084071, "noun.animal", "n", ("dog", "domestic dog", "Canis familiaris"),
                            "a member of the genus Canis", ("the dog barked all night", "a dog's life")),
        wordnet_data.Synset(22686, "verb.body", "v", ("stimulate", "arouse"), "cause to be alert and energetic",
                            ("Coffee stimulates me",)),
        wordnet_data.Synset(4171, "adj.all", "s", ("moribund",), "being on the point of death; breathing your last",
                            ()),
    ]
    assert records[1].synset_id == "02084071-n"
    assert wordnet_data.task_input(records[1]) == "dog, domestic dog, Canis familiaris: a member of the genus Canis"


def test_the_held_out_verb_task_shares_no_synset_or_definition_with_the_noun_task():
    nouns = [r for split in ("train", "dev", "test") for r in read_supersense(split, NOUN_DIR)]
    verbs = [r for split in ("train", "dev", "test") for r in read_supersense(split, VERB_DIR)]
    assert all(r["id"].endswith("-v") for r in verbs) and all(r["id"].endswith("-n") for r in nouns)
    assert not {r["text"].split(": ", 1)[1] for r in nouns} & {r["text"].split(": ", 1)[1] for r in verbs}


def test_corpus_leaves_out_held_out_synsets_and_their_definitions():
    synsets = [wordnet_data.parse_data_line(line) for line in SNIPPET.splitlines()[1:]]
    twin = wordnet_data.Synset(1, "noun.act", "n", ("twin",), "cause to be alert and energetic", ())
    held_out = [{"id": "00022686-v", "text": wordnet_data.task_input(synsets[1])}]
    lines = wordnet_data.corpus_lines([*synsets, twin], held_out, max_chars=10_000)
    assert lines == [
        "dog, domestic dog, Canis familiaris: a member of the genus Canis. the dog barked all night. a dog's "
        "life. moribund: being on the point of death; breathing your last."
    ]


@pytest.mark.slow
def test_supersense_example_smoke_run_saves_a_loadable_adapter(tmp_path):
    from peft import PeftModel

    out = tmp_path / "adapter"
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "examples", "supersense.py"), "--steps", "2", "--dev_size", "8",
         "--output_dir", str(out)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "dev accuracy before tuning" in proc.stdout and "8/8 predictions identical" in proc.stdout
    model, _ = load_embedded("lm_adapt")
    reloaded = PeftModel.from_pretrained(model, str(out))
    assert reloaded.peft_config["default"].num_virtual_tokens == 20


@pytest.mark.slow
def test_a_soft_prompt_steers_the_lm_adapted_model():
    """The frozen LM-adapted model's loss on held-out label words falls when only a class-label-initialised prompt
    trains (paper recipe: Adafactor, constant lr 0.3, 160 steps of 16), measured against the initial prompt on the
    same 64 dev rows in eval mode -- a control in the same process, so no threshold depends on the CPU's kernels.

    Margins measured (fp32; training trajectories differ between CPU kinds by float rounding): AMD EPYC, AVX2
    only, no bf16 units: dev loss 7.315 -> 5.679 (-22%). The old absolute form of this test (training-loss drop
    > 1.5 nats) saw 1.25 nats on that CPU kind and > 1.5 on an AVX-512 one -- both -17% or more of a
    ~7.2 start. The first build (its decoder ignored the encoder) did not move (~7.7 throughout). The bound,
    -8%, is under half the smallest relative drop seen on either kind."""
    import random

    from peft import get_peft_model

    from softprompt_ext.training.recipe import paper_optimizer

    torch.manual_seed(0)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, tokenizer = load_embedded("lm_adapt")
        config = SoftPromptConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=20, prompt_tuning_init="CLASS_LABELS",
                                  class_labels=list(SUPERSENSE_LABELS), tokenizer_name_or_path=embedded_model_path(),
                                  sample_vocab_size=1000, init_seed=0)
        model = get_peft_model(model, config)
        dev = read_supersense("dev")[:64]

        def dev_loss() -> float:
            model.eval()
            with torch.no_grad():
                return sum(model(**supersense_batch(tokenizer, dev[i : i + 16])).loss.item() for i in range(0, 64, 16)) / 4

        before = dev_loss()
        optimizer, _ = paper_optimizer(model)
        train = read_supersense("train")
        rows_order = random.Random(0).sample(range(len(train)), len(train))
        for step in range(160):
            rows = [train[rows_order[(16 * step + j) % len(train)]] for j in range(16)]
            model.train()
            loss = model(**supersense_batch(tokenizer, rows)).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        after = dev_loss()
    finally:
        torch.set_num_threads(previous)
    assert before > 6.0, before  # the label words start unlikely (8 classes among 8,192 tokens)
    assert after < 0.92 * before, (before, after)


def test_default_config_works_on_the_embedded_model(lm_adapted):
    """`SoftPromptConfig(task_type=..., num_virtual_tokens=...)` and nothing else: the paper's 5,000-token pool fits
    this 8,192-row vocabulary, so the default SAMPLE_VOCAB init samples from it without a warning (the v2 model's
    4,096 rows made the initialiser warn and sample all of them)."""
    from peft import get_peft_model

    model, _ = load_embedded("lm_adapt")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=r".*sampling from all")
        peft_model = get_peft_model(model, SoftPromptConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=20))
    assert peft_model.get_nb_trainable_parameters()[0] == 20 * 256


@pytest.mark.parametrize("kind", ["lm_adapt", "span"])
def test_shipped_model_cards_are_written_from_the_shipped_record(kind):
    """No number in a card is typed by hand: each is `scripts/embedded_build/card_text.py`'s text for the shipped
    record."""
    from scripts.embedded_build import card_text as model_card_text

    root = os.path.dirname(embedded_model_path(kind))
    with open(os.path.join(root, "build_record.json"), encoding="utf-8") as handle:
        record = json.load(handle)
    with open(os.path.join(embedded_model_path(kind), "README.md"), encoding="utf-8") as handle:
        assert handle.read() == model_card_text.model_card(record, kind)
