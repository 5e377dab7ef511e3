"""Nearest-token readout (paper section 7): exact neighbours from hand-made tables, special tokens skipped."""

from __future__ import annotations

import json
import math
import os
import shutil

import pytest
import torch
from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model
from transformers import AutoModelForSeq2SeqLM

from softprompt_ext import SoftPromptConfig, tiny_models
from softprompt_ext.analysis.readout import (
    Neighbour,
    adapter_info,
    adapter_readout,
    format_readout,
    model_readout,
    nearest_tokens,
    readout_to_dict,
)
from softprompt_ext.prompt_tensor import load_prompt
from softprompt_ext.special_tokens import readout_skip_ids

# Hand-made table [V=6, H=4]: rows of different norms, so only a cosine (not a dot product) ranks them right.
TABLE = torch.tensor(
    [
        [2.0, 0.0, 0.0, 0.0],  # 0
        [0.0, 3.0, 0.0, 0.0],  # 1
        [0.0, 0.0, 1.0, 0.0],  # 2
        [0.0, 0.0, 0.0, 5.0],  # 3
        [1.0, 1.0, 0.0, 0.0],  # 4: between 0 and 1
        [0.0, 0.0, 0.0, 0.0],  # 5: a zero row (scores 0, never NaN)
    ]
)
PROMPT = torch.tensor(
    [
        [7.0, 0.0, 0.0, 0.0],  # cos: row 0 -> 1, row 4 -> 1/sqrt(2)
        [1.0, 2.0, 0.0, 0.0],  # cos: row 4 -> 3/sqrt(10), row 1 -> 2/sqrt(5), row 0 -> 1/sqrt(5)
    ]
)
CAT, SEA, A = 75, 68, 10  # single-token words of the test tokenizer: '▁cat', '▁sea', '▁a'
EOS, SENTINEL = 1, 170  # '</s>' and '<extra_id_2>'


def ids_and_scores(readout):
    return [[n.token_id for n in row] for row in readout], [[n.score for n in row] for row in readout]


# ---------------------------------------------------------------------------------------------- core
def test_nearest_tokens_are_the_hand_computed_cosine_neighbours():
    ids, scores = ids_and_scores(nearest_tokens(PROMPT, TABLE, top_k=3))
    assert ids[0][:2] == [0, 4]
    assert ids[1] == [4, 1, 0]
    assert scores[0][:2] == pytest.approx([1.0, 1 / math.sqrt(2)], abs=1e-6)
    assert scores[1] == pytest.approx([3 / math.sqrt(10), 2 / math.sqrt(5), 1 / math.sqrt(5)], abs=1e-6)


def test_excluded_ids_are_never_returned_and_the_next_best_moves_up():
    readout = nearest_tokens(PROMPT, TABLE, top_k=2, exclude_ids={0, 99})  # 99: outside the table, ignored
    ids, scores = ids_and_scores(readout)
    assert ids[0][0] == 4  # row 0: 0 is gone, 4 is next (the rest tie at 0)
    assert ids[1] == [4, 1]
    assert scores[0][0] == pytest.approx(1 / math.sqrt(2), abs=1e-6)
    assert all(n.token_id != 0 for row in readout for n in row)


def test_top_k_larger_than_the_vocabulary_returns_every_kept_token_with_finite_scores():
    readout = nearest_tokens(PROMPT, TABLE, top_k=50, exclude_ids={3})
    assert [len(row) for row in readout] == [5, 5]
    assert all(math.isfinite(n.score) for row in readout for n in row)  # the zero row scores 0, not NaN
    assert sorted(n.token_id for n in readout[0]) == [0, 1, 2, 4, 5]


def test_without_a_tokenizer_tokens_are_named_by_id():
    assert nearest_tokens(PROMPT, TABLE, top_k=1)[0] == [Neighbour(0, "<id:0>", pytest.approx(1.0))]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"top_k": 0}, r"top_k must be an int >= 1, got 0"),
        ({"top_k": 2, "exclude_ids": set(range(6))}, r"every token of the vocabulary is excluded"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        nearest_tokens(PROMPT, TABLE, **kwargs)


def test_a_prompt_of_another_width_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\) \(P, d_model\).*\(6, 4\) \(V, d_model\)"):
        nearest_tokens(torch.zeros(2, 3), TABLE)


def test_format_and_json_forms():
    readout = nearest_tokens(PROMPT, TABLE, top_k=2)
    assert format_readout(readout).splitlines() == [
        "pos  #1            #2",
        "  0  <id:0> 1.000  <id:4> 0.707",
        "  1  <id:4> 0.949  <id:1> 0.894",
    ]
    data = json.loads(json.dumps(readout_to_dict(readout)))
    assert data[1] == {
        "position": 1,
        "neighbours": [
            {"token_id": 4, "token": "<id:4>", "score": pytest.approx(3 / math.sqrt(10), abs=1e-6)},
            {"token_id": 1, "token": "<id:1>", "score": pytest.approx(2 / math.sqrt(5), abs=1e-6)},
        ],
    }


# ---------------------------------------------------------------------------------------------- on a PeftModel
@pytest.fixture(scope="module")
def saved(tokenizer, tmp_path_factory):
    """A tiny T5 saved with its tokenizer, and a prompt adapter on it whose rows are known vocabulary rows.

    Rows: '▁cat', '▁sea' (class labels), then copies of '</s>' and of the sentinel '<extra_id_2>'.
    """
    root = tmp_path_factory.mktemp("inspection")
    base_dir = str(root / "base")
    tiny_models.build_t5(len(tokenizer)).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    model = get_peft_model(AutoModelForSeq2SeqLM.from_pretrained(base_dir), _label_config(base_dir, ["cat", "sea"]))
    table = model.get_base_model().get_input_embeddings().weight
    with torch.no_grad():
        model.prompt_encoder["default"].embedding.weight[2:] = table[[EOS, SENTINEL]]
    adapter_dir = str(root / "adapter")
    model.save_pretrained(adapter_dir)
    return {"base": base_dir, "adapter": adapter_dir, "model": model, "table": table.detach().clone()}


def _label_config(tokenizer_dir, labels, num_virtual_tokens=4):
    return SoftPromptConfig(
        task_type="SEQ_2_SEQ_LM",
        num_virtual_tokens=num_virtual_tokens,
        prompt_tuning_init="CLASS_LABELS",
        class_labels=labels,
        tokenizer_name_or_path=tokenizer_dir,
        sample_vocab_size=50,
        init_seed=0,
    )


def test_class_label_rows_read_back_as_their_labels_and_specials_are_skipped(saved, tokenizer):
    readout = model_readout(saved["model"], tokenizer, top_k=3)
    assert [row[0].token for row in readout[:2]] == ["▁cat", "▁sea"]
    assert [row[0].token_id for row in readout[:2]] == [CAT, SEA]
    assert [row[0].score for row in readout[:2]] == pytest.approx([1.0, 1.0], abs=1e-5)
    specials = readout_skip_ids(tokenizer, len(tokenizer))
    assert not {n.token_id for row in readout for n in row} & specials
    assert all(row[0].score < 0.999 for row in readout[2:])  # the copies of </s> and the sentinel are skipped


def test_keeping_special_tokens_and_sentinels(saved, tokenizer):
    kept = model_readout(saved["model"], tokenizer, top_k=1, skip_special=False, skip_sentinels=False)
    assert [row[0].token for row in kept[2:]] == ["</s>", "<extra_id_2>"]
    assert [row[0].score for row in kept[2:]] == pytest.approx([1.0, 1.0], abs=1e-5)
    only_sentinels = model_readout(saved["model"], tokenizer, top_k=1, skip_sentinels=False)
    assert only_sentinels[3][0].token_id == SENTINEL
    assert only_sentinels[2][0].token_id != EOS


def test_tokenizer_defaults_to_the_adapters_and_adapter_name_selects(saved, tokenizer):
    model = saved["model"]
    assert model_readout(model, top_k=1)[0][0].token == "▁cat"  # tokenizer from tokenizer_name_or_path
    model.add_adapter("other", _label_config(saved["base"], ["a"], num_virtual_tokens=2))
    try:
        assert model_readout(model, tokenizer, adapter_name="other", top_k=1)[0][0].token_id == A
        assert len(model_readout(model, tokenizer, adapter_name="other")) == 2
        with pytest.raises(ValueError, match=r"adapter_name='nope' is not in this model; it has \['default', 'other'\]"):
            model_readout(model, tokenizer, adapter_name="nope")
    finally:
        model.delete_adapter("other")


def test_a_prefix_tuning_adapter_is_refused(tokenizer):
    model = get_peft_model(
        tiny_models.build_t5(len(tokenizer)), PrefixTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=2)
    )
    with pytest.raises(ValueError, match=r"'default' is a PREFIX_TUNING adapter; .*PROMPT_TUNING"):
        model_readout(model, tokenizer)


# ---------------------------------------------------------------------------------------------- from disk
def test_adapter_readout_matches_the_loaded_model(saved, tokenizer):
    from_model = model_readout(saved["model"], tokenizer, top_k=4)
    from_disk = adapter_readout(saved["adapter"], top_k=4)  # base model from adapter_config.json
    assert ids_and_scores(from_disk)[0] == ids_and_scores(from_model)[0]
    torch.testing.assert_close(torch.tensor(ids_and_scores(from_disk)[1]), torch.tensor(ids_and_scores(from_model)[1]))
    with_table = adapter_readout(saved["adapter"], saved["table"], tokenizer=tokenizer, top_k=4)
    assert ids_and_scores(with_table)[0] == ids_and_scores(from_model)[0]


def test_adapter_without_base_model_asks_for_one(saved, tmp_path):
    shutil.copy(os.path.join(saved["adapter"], "adapter_model.safetensors"), tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4}))
    with pytest.raises(ValueError, match=r"names no base_model_name_or_path; pass base_model= \(CLI: --base\)"):
        adapter_readout(str(tmp_path))
    assert adapter_readout(str(tmp_path), saved["base"], top_k=1)[0][0].token == "▁cat"
    with pytest.raises(ValueError, match=r"no tokenizer could be loaded from '.*nope' \(.*\); pass tokenizer="):
        adapter_readout(str(tmp_path), saved["base"], tokenizer=str(tmp_path / "nope"))


# ---------------------------------------------------------------------------------------------- load_prompt / info
def test_plain_peft_seq2seq_adapters_read_only_the_encoder_rows(tokenizer, tmp_path):
    model = get_peft_model(
        tiny_models.build_t5(len(tokenizer)), PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=3)
    )
    model.save_pretrained(tmp_path)
    weight = model.prompt_encoder["default"].embedding.weight.detach()  # [2P, H]: PEFT's encoder + decoder rows
    assert weight.shape[0] == 6
    assert torch.equal(load_prompt(str(tmp_path)), weight[:3])
    assert torch.equal(load_prompt(model), weight[:3])
    info = adapter_info(str(tmp_path))
    assert (info["num_virtual_tokens"], info["saved_rows"], info["d_model"], info["record"]) == (3, 6, 16, None)


def test_adapter_info_of_a_softprompt_adapter(saved):
    info = adapter_info(saved["adapter"])
    assert info["num_virtual_tokens"] == info["saved_rows"] == 4
    assert info["d_model"] == 16
    assert info["task_type"] == "SEQ_2_SEQ_LM"
    assert info["base_model_name_or_path"] == saved["base"]
    assert info["prompt_tuning_init"] == "CLASS_LABELS"
    assert info["record"]["class_labels"] == ["cat", "sea"]
    on_disk = {f: os.path.getsize(os.path.join(saved["adapter"], f)) for f in os.listdir(saved["adapter"])}
    assert info["files"] == on_disk
    assert info["size_on_disk"] == sum(on_disk.values())
    json.dumps(info)  # JSON-ready


@pytest.mark.parametrize(
    ("source", "error", "message"),
    [
        ("/no/such/adapter", ValueError, r"'/no/such/adapter': no such file or directory"),
        (torch.zeros(3), ValueError, r"must be \[P, d_model\], got shape \(3,\)"),
        (42, TypeError, r"got int"),
    ],
)
def test_load_prompt_refuses_bad_sources(source, error, message):
    with pytest.raises(error, match=message):
        load_prompt(source)
