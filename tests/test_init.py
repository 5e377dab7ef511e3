"""Initialisers checked exactly against hand-made embedding tables (row i holds the value i)."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

from softprompt_ext import SoftPromptConfig
from softprompt_ext.init import from_rows, from_sampled_vocab, label_rows, vocab_pool
from softprompt_ext.special_tokens import excluded_token_ids


def prompt_of(model) -> torch.Tensor:
    return model.prompt_encoder["default"].embedding.weight.detach()  # [P, H]


def row_values(prompt: torch.Tensor) -> list[float]:
    """Every dimension of a row holds the same number on an indexed table; return that number per row."""
    assert torch.equal(prompt, prompt[:, :1].expand_as(prompt)), "rows are not constant"
    return prompt[:, 0].tolist()


@pytest.fixture
def ids_of(tokenizer):
    return lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("kind", ["t5", "llama", "gpt2"])
def test_class_labels_mean_of_subtokens_then_sampled_vocab(kind, make_model, tokenizer, tokenizer_dir, ids_of):
    labels = ["positive", "negative", "great"]
    config = SoftPromptConfig(
        task_type="SEQ_2_SEQ_LM" if kind == "t5" else "CAUSAL_LM",
        num_virtual_tokens=8,
        prompt_tuning_init="CLASS_LABELS",
        class_labels=labels,
        tokenizer_name_or_path=tokenizer_dir,
        sample_vocab_size=40,
        init_seed=0,
    )
    values = row_values(prompt_of(get_peft_model(make_model(kind, indexed=True), config)))
    for i, label in enumerate(labels):
        ids = ids_of(label)
        assert 1 not in ids  # no EOS in a label
        assert values[i] == pytest.approx(sum(ids) / len(ids))
    pool = vocab_pool(len(tokenizer), 40, excluded_token_ids(tokenizer)).tolist()
    rest = [int(v) for v in values[len(labels):]]
    assert set(rest) <= set(pool)  # drawn from the 40 most common non-special tokens
    assert len(set(rest)) == len(rest)  # without replacement
    assert not set(rest) & set(tokenizer.all_special_ids)


def test_label_split_in_two_subtokens_averages_exactly():
    table = torch.arange(100, dtype=torch.float32).unsqueeze(1).expand(100, 4)  # [V, H], row i = i
    rows = label_rows(table, [[23, 54], [7]], ["two", "one"])
    assert rows.tolist() == [[38.5] * 4, [7.0] * 4]  # (23 + 54) / 2


def test_more_labels_than_rows_warns_and_drops(make_model, tokenizer_dir, ids_of):
    config = SoftPromptConfig(
        task_type="SEQ_2_SEQ_LM",
        num_virtual_tokens=2,
        prompt_tuning_init="CLASS_LABELS",
        class_labels=["positive", "negative", "great"],
        tokenizer_name_or_path=tokenizer_dir,
    )
    with pytest.warns(UserWarning, match=r"3 class_labels but num_virtual_tokens=2: .*\['great'\] are dropped"):
        model = get_peft_model(make_model("t5", indexed=True), config)
    values = row_values(prompt_of(model))
    assert values == pytest.approx([sum(ids_of(w)) / len(ids_of(w)) for w in ("positive", "negative")])


def test_label_that_tokenises_to_nothing_is_an_error(make_model, tmp_path):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "yes": 3, "no": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Replace("\u200b", "")
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>").save_pretrained(
        str(tmp_path)
    )
    config = SoftPromptConfig(
        task_type="SEQ_2_SEQ_LM",
        num_virtual_tokens=2,
        prompt_tuning_init="CLASS_LABELS",
        class_labels=["yes", "\u200b"],
        tokenizer_name_or_path=str(tmp_path),
    )
    with pytest.raises(ValueError, match=r"class_labels\[1\]='\\u200b' tokenises to no tokens"):
        get_peft_model(make_model("t5"), config)


def test_tokenizer_larger_than_model_is_a_mismatch_error(make_model, tokenizer, tokenizer_dir):
    small = make_model("t5", indexed=True)
    small.resize_token_embeddings(10)  # ids >= 10 now fall outside the table
    config = SoftPromptConfig(
        task_type="SEQ_2_SEQ_LM",
        num_virtual_tokens=4,
        prompt_tuning_init="CLASS_LABELS",
        class_labels=["positive"],
        tokenizer_name_or_path=tokenizer_dir,
    )
    with pytest.raises(ValueError, match=r"class_labels\[0\]='positive' has token ids \[.*\] but the model's embedding table has 10 rows"):
        get_peft_model(small, config)


def test_sample_vocab_lowest_ids_without_specials(make_model, tokenizer, tokenizer_dir):
    config = SoftPromptConfig(
        task_type="SEQ_2_SEQ_LM", num_virtual_tokens=20, tokenizer_name_or_path=tokenizer_dir, sample_vocab_size=20, init_seed=1
    )
    values = sorted(int(v) for v in row_values(prompt_of(get_peft_model(make_model("t5", indexed=True), config))))
    # P == pool size: every pool id exactly once; the pool is ids 3..22 (0, 1, 2 are pad, eos, unk)
    assert values == list(range(3, 23))


def test_default_pool_is_the_whole_vocabulary_when_it_has_fewer_than_5000_tokens(make_model, tokenizer, tokenizer_dir):
    # the official implementation warns and samples the whole table; before, the default raised here
    excluded = excluded_token_ids(tokenizer)
    usable = len(tokenizer) - len(excluded)
    config = SoftPromptConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=usable, tokenizer_name_or_path=tokenizer_dir,
                              init_seed=0)
    with pytest.warns(UserWarning, match=rf"the paper's 5000 most common tokens exceed the {usable} usable tokens"):
        model = get_peft_model(make_model("t5", indexed=True), config)
    values = sorted(int(v) for v in row_values(prompt_of(model)))
    # P == usable: every non-special id of the tokenizer exactly once (drawn without replacement)
    assert values == sorted(set(range(len(tokenizer))) - excluded)


def test_default_pool_is_5000_on_a_large_vocabulary():
    from softprompt_ext.init import default_pool_size

    assert default_pool_size(32_128, set(range(100))) == 5000  # T5: 32,128 rows, the paper's 5,000


def test_explicit_sample_vocab_size_larger_than_vocabulary_is_an_error(make_model, tokenizer, tokenizer_dir):
    config = SoftPromptConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4, tokenizer_name_or_path=tokenizer_dir,
                              sample_vocab_size=5000)
    usable = len(tokenizer) - len(excluded_token_ids(tokenizer))
    with pytest.raises(ValueError, match=rf"sample_vocab_size=5000 is larger than the {usable} usable tokens"):
        get_peft_model(make_model("t5"), config)


def test_sample_vocab_without_tokenizer_uses_lowest_ids(make_model):
    config = SoftPromptConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=5, sample_vocab_size=5, init_seed=0)
    values = sorted(int(v) for v in row_values(prompt_of(get_peft_model(make_model("t5", indexed=True), config))))
    assert values == [0, 1, 2, 3, 4]  # official semantics: ids 0..N-1, specials included


def test_pool_smaller_than_prompt_samples_with_replacement():
    table = torch.arange(10, dtype=torch.float32).unsqueeze(1)  # [V=10, H=1]
    rows = from_sampled_vocab(table, torch.tensor([4, 5]))(6, torch.Generator().manual_seed(0))
    assert rows.shape == (6, 1) and set(rows.flatten().tolist()) <= {4.0, 5.0}


def test_text_init_one_subtoken_per_row_no_eos_then_sampled(make_model, tokenizer_dir, ids_of):
    text = "the cat sat"
    config = SoftPromptConfig(
        task_type="SEQ_2_SEQ_LM",
        num_virtual_tokens=10,
        prompt_tuning_init="TEXT",
        prompt_tuning_init_text=text,
        tokenizer_name_or_path=tokenizer_dir,
        sample_vocab_size=30,
    )
    values = row_values(prompt_of(get_peft_model(make_model("t5", indexed=True), config)))
    ids = ids_of(text)
    assert values[: len(ids)] == [float(i) for i in ids]
    assert 1.0 not in values[: len(ids)]

    short = SoftPromptConfig(**{**config.to_dict(), "num_virtual_tokens": 2, "peft_type": None})
    values = row_values(prompt_of(get_peft_model(make_model("t5", indexed=True), short)))
    assert values == [float(i) for i in ids[:2]]  # truncated


def test_random_uniform_range_and_seed(make_model):
    def make(seed):
        config = SoftPromptConfig(
            task_type="SEQ_2_SEQ_LM", num_virtual_tokens=50, prompt_tuning_init="RANDOM_UNIFORM", init_range=0.25, init_seed=seed
        )
        return prompt_of(get_peft_model(make_model("t5"), config))

    a, b, c = make(3), make(3), make(4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -0.25 and a.max() < 0.25
    assert a.min() < -0.2 and a.max() > 0.2  # the whole range is used, not just [0, r)


@pytest.mark.parametrize("init", ["SAMPLE_VOCAB", "RANDOM", "RANDOM_UNIFORM"])
def test_init_seed_reproducible(init, make_model):
    config = dict(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=6, prompt_tuning_init=init, init_seed=11, sample_vocab_size=50)
    a = prompt_of(get_peft_model(make_model("t5"), SoftPromptConfig(**config)))
    torch.manual_seed(999)  # the global RNG must not matter
    b = prompt_of(get_peft_model(make_model("t5"), SoftPromptConfig(**config)))
    assert torch.equal(a, b)


def test_random_is_standard_normal(make_model):
    config = SoftPromptConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=100, prompt_tuning_init="RANDOM", init_seed=0)
    prompt = prompt_of(get_peft_model(make_model("t5", d_model=32), config))
    assert abs(prompt.mean().item()) < 0.1 and abs(prompt.std().item() - 1.0) < 0.1


def test_from_rows_truncates_or_fills():
    rows = torch.tensor([[1.0], [2.0], [3.0]])
    fill = lambda n, g: torch.full((n, 1), -1.0)  # noqa: E731
    assert from_rows(rows, fill)(2, None).flatten().tolist() == [1.0, 2.0]
    assert from_rows(rows, fill)(5, None).flatten().tolist() == [1.0, 2.0, 3.0, -1.0, -1.0]


def _save_prompt_adapter(model, path, P, d_model):
    config = SoftPromptConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=P, prompt_tuning_init="RANDOM_UNIFORM", init_seed=0)
    peft_model = get_peft_model(model(d_model), config)
    peft_model.save_pretrained(path)
    return prompt_of(peft_model).clone()


@pytest.mark.parametrize("new_p", [3, 5, 8])
def test_saved_prompt_same_truncated_or_filled(new_p, make_model, tmp_path):
    saved = _save_prompt_adapter(lambda d: make_model("t5", d_model=d), str(tmp_path), P=5, d_model=16)
    config = SoftPromptConfig(
        task_type="SEQ_2_SEQ_LM", num_virtual_tokens=new_p, prompt_tuning_init="SAVED_PROMPT",
        init_prompt_path=str(tmp_path), sample_vocab_size=20, init_seed=0,
    )
    prompt = prompt_of(get_peft_model(make_model("t5", indexed=True), config))
    assert torch.equal(prompt[: min(5, new_p)], saved[: min(5, new_p)])
    if new_p > 5:  # filled from the sampled vocabulary of the new model (indexed table)
        assert all(0 <= v < 20 for v in row_values(prompt[5:]))


def test_saved_prompt_from_safetensors_file(make_model, tmp_path):
    saved = _save_prompt_adapter(lambda d: make_model("t5", d_model=d), str(tmp_path), P=4, d_model=16)
    config = SoftPromptConfig(
        task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4, prompt_tuning_init="SAVED_PROMPT",
        init_prompt_path=str(tmp_path / "adapter_model.safetensors"),
    )
    assert torch.equal(prompt_of(get_peft_model(make_model("t5"), config)), saved)


def test_saved_prompt_with_other_d_model_names_both(make_model, tmp_path):
    _save_prompt_adapter(lambda d: make_model("t5", d_model=d), str(tmp_path), P=4, d_model=32)
    config = SoftPromptConfig(
        task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4, prompt_tuning_init="SAVED_PROMPT", init_prompt_path=str(tmp_path)
    )
    with pytest.raises(ValueError, match=r"holds a prompt of d_model 32 but the model's d_model is 16"):
        get_peft_model(make_model("t5", d_model=16), config)


def test_saved_prompt_refuses_pickle(make_model, tmp_path):
    (tmp_path / "adapter_model.bin").write_bytes(b"not read")
    config = SoftPromptConfig(
        task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4, prompt_tuning_init="SAVED_PROMPT",
        init_prompt_path=str(tmp_path / "adapter_model.bin"),
    )
    with pytest.raises(ValueError, match=r"only .safetensors prompts are read"):
        get_peft_model(make_model("t5"), config)


def test_tokenizer_dir_without_tokenizer_files_is_an_error(make_model, tmp_path):
    make_model("t5").save_pretrained(str(tmp_path))  # config + weights, no tokenizer
    config = SoftPromptConfig(
        task_type="SEQ_2_SEQ_LM", num_virtual_tokens=2, prompt_tuning_init="CLASS_LABELS",
        class_labels=["yes"], tokenizer_name_or_path=str(tmp_path),
    )
    with pytest.raises(ValueError, match=r"is a directory without tokenizer files"):
        get_peft_model(make_model("t5"), config)


def test_sample_vocab_uses_base_model_tokenizer_when_saved_with_it(make_model, tokenizer, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    make_model("t5", indexed=True).save_pretrained(str(tmp_path))
    tokenizer.save_pretrained(str(tmp_path))
    base = AutoModelForSeq2SeqLM.from_pretrained(str(tmp_path))
    config = SoftPromptConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=10, sample_vocab_size=10, init_seed=0)
    values = sorted(int(v) for v in row_values(prompt_of(get_peft_model(base, config))))
    assert values == list(range(3, 13))  # specials 0, 1, 2 excluded via the base model's tokenizer
