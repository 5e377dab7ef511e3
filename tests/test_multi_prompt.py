"""Mixed-task batches and prompt ensembling (`mixed_batches.py`, `ensembles.py`).

The reference for every mixed batch is each example run alone, unpadded, after `model.set_adapter(name)`
through PEFT's own forward. For greedy generation the reference is PEFT's `generate` on T5 and, for
decoder-only models, a cache-free greedy loop over PEFT's forward: with transformers 5.x PEFT 0.21's
causal-LM `generate` re-inserts the prompt at every decoding step (it looks for `past_key_values`, which
generate now calls `cache`), so its tokens differ from the model's after the first one.
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PeftModel, PromptTuningConfig, get_peft_model

from softprompt_ext import SoftPromptConfig
from softprompt_ext.inference.ensembles import (
    answer_key,
    combine_label_scores,
    ensemble_classify,
    ensemble_generate,
    majority_vote,
    score_labels,
)
from softprompt_ext.inference.mixed_batches import mixed_forward, mixed_generate

TASK = {"t5": "SEQ_2_SEQ_LM", "llama": "CAUSAL_LM", "gpt2": "CAUSAL_LM"}
TEXTS = ["the cat sat on the mat", "a ship", "rain falls from dark clouds in the cold season", "the river"]
NAMES = ["p3", "p7", "p7", "p3"]
EOS, PAD = 1, 0
TOL = {"rtol": 1e-4, "atol": 1e-4}


def _config(kind: str, length: int, seed: int) -> SoftPromptConfig:
    return SoftPromptConfig(
        task_type=TASK[kind],
        num_virtual_tokens=length,
        prompt_tuning_init="RANDOM_UNIFORM",
        init_range=1.0,
        init_seed=seed,
    )


def _feature_config() -> SoftPromptConfig:
    return SoftPromptConfig(
        task_type="FEATURE_EXTRACTION", num_virtual_tokens=2, prompt_tuning_init="RANDOM_UNIFORM"
    )


@pytest.fixture
def build(make_model, tmp_path):
    """`build(kind)`: a fresh base model with the prompts p3 (P=3), p7 (P=7), p5 (P=5) loaded through PEFT's
    `PeftModel.from_pretrained` + `load_adapter`. Weights are scaled so that greedy outputs vary."""

    def make(kind: str) -> PeftModel:
        base = make_model(kind)
        with torch.no_grad():
            for p in base.parameters():
                if p.dim() > 1:
                    p.mul_(3.0)  # tiny random models otherwise repeat one token
        trained = get_peft_model(base, _config(kind, 3, 1), adapter_name="p3")
        trained.add_adapter("p7", _config(kind, 7, 2))
        trained.add_adapter("p5", _config(kind, 5, 3))
        trained.save_pretrained(str(tmp_path), selected_adapters=["p3", "p7", "p5"])
        model = PeftModel.from_pretrained(trained.get_base_model(), str(tmp_path / "p3"), adapter_name="p3")
        model.load_adapter(str(tmp_path / "p7"), adapter_name="p7")
        model.load_adapter(str(tmp_path / "p5"), adapter_name="p5")
        return model.eval()

    return make


def _batch(tokenizer, side: str):
    tokenizer.padding_side = side
    try:
        enc = tokenizer(TEXTS, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = "right"
    return enc.input_ids, enc.attention_mask


def _alone_ids(ids: torch.Tensor, mask: torch.Tensor, i: int) -> torch.Tensor:
    return ids[i][mask[i].bool()][None]  # [1, T_i]


def _greedy_alone(model, ids: torch.Tensor, steps: int) -> list[int]:
    """Greedy decoding of a decoder-only PEFT model without a cache: PEFT's forward on the whole sequence."""
    with torch.no_grad():
        for _ in range(steps):
            next_id = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1].argmax(-1)
            ids = torch.cat([ids, next_id[:, None]], 1)
    return ids[0].tolist()


def _until_eos(tokens: list[int]) -> list[int]:
    return tokens[: tokens.index(EOS) + 1] if EOS in tokens else tokens


# ---------------------------------------------------------------------------------------------- forward
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("kind", ["t5", "llama", "gpt2"])
def test_forward_equals_each_example_alone(build, tokenizer, kind, side):
    model = build(kind)
    ids, mask = _batch(tokenizer, side)
    if kind == "t5":
        labels = tokenizer(
            ["true", "false and more", "x", "a b c"], return_tensors="pt", padding=True
        ).input_ids
        labels = labels.masked_fill(labels == PAD, -100)
    else:
        labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        out = mixed_forward(model, ids, mask, NAMES, labels=labels)
        alone_losses, counts = [], []
        for i, name in enumerate(NAMES):
            model.set_adapter(name)
            x = _alone_ids(ids, mask, i)
            if kind == "t5":
                y = labels[i : i + 1, : int((labels[i] != -100).sum())]
                ref = model(input_ids=x, attention_mask=torch.ones_like(x), labels=y)
                torch.testing.assert_close(out.logits[i, : y.shape[1]], ref.logits[0], **TOL)
                counts.append(y.shape[1])
            else:
                ref = model(input_ids=x, attention_mask=torch.ones_like(x), labels=x)
                num_virtual = model.peft_config[name].num_virtual_tokens
                # logits come back aligned to input_ids: real positions hold the alone-run logits, pads hold 0
                torch.testing.assert_close(out.logits[i][mask[i].bool()], ref.logits[0, num_virtual:], **TOL)
                assert out.logits[i][~mask[i].bool()].abs().sum() == 0
                counts.append(x.shape[1])  # PEFT scores the first input token from the last prompt position
            alone_losses.append(ref.loss)
    torch.testing.assert_close(out.loss_per_example, torch.stack(alone_losses), **TOL)
    assert out.num_label_tokens.tolist() == counts
    expected_mean = (out.loss_per_example * out.num_label_tokens).sum() / sum(counts)
    torch.testing.assert_close(out.loss, expected_mean)


def test_plain_peft_prompt_with_decoder_rows_uses_encoder_rows(make_model, tokenizer):
    """PEFT's own PromptTuningConfig on T5 allocates 2P rows; like PEFT, only the first P are placed."""
    model = get_peft_model(
        make_model("t5"), PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4)
    )
    model.add_adapter("short", PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=2))
    model.eval()
    assert model.prompt_encoder["default"].embedding.weight.shape[0] == 8
    ids, mask = _batch(tokenizer, "right")
    names = ["default", "short", "default", "short"]
    labels = ids[:, :3]
    with torch.no_grad():
        out = mixed_forward(model, ids, mask, names, labels=labels)
        for i, name in enumerate(names):
            model.set_adapter(name)
            x = _alone_ids(ids, mask, i)
            ref = model(input_ids=x, attention_mask=torch.ones_like(x), labels=labels[i : i + 1])
            torch.testing.assert_close(out.logits[i], ref.logits[0], **TOL)


def test_mixed_batch_trains_every_prompt(build, tokenizer):
    model = build("llama")
    ids, mask = _batch(tokenizer, "left")
    for param in model.prompt_encoder.parameters():
        param.requires_grad_(True)
    mixed_forward(model, ids, mask, NAMES, labels=ids.masked_fill(mask == 0, -100)).loss.backward()
    assert model.prompt_encoder["p3"].embedding.weight.grad.abs().sum() > 0
    assert model.prompt_encoder["p7"].embedding.weight.grad.abs().sum() > 0
    assert model.prompt_encoder["p5"].embedding.weight.grad is None  # not in the batch


# ---------------------------------------------------------------------------------------------- generate
@pytest.mark.parametrize(
    ("kind", "side"), [("t5", "right"), ("t5", "left"), ("llama", "left"), ("gpt2", "right")]
)
def test_greedy_generate_equals_each_example_alone(build, tokenizer, kind, side):
    model = build(kind)
    ids, mask = _batch(tokenizer, side)
    steps = 6
    out = mixed_generate(model, ids, mask, NAMES, max_new_tokens=steps, do_sample=False)
    assert out.shape[0] == len(TEXTS)
    for i, name in enumerate(NAMES):
        model.set_adapter(name)
        x = _alone_ids(ids, mask, i)
        if kind == "t5":
            ref = model.generate(
                input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=steps, do_sample=False
            )
            ref_tokens = ref[0].tolist()
        else:
            ref_tokens = _greedy_alone(model, x, steps)[x.shape[1] :]
        assert _until_eos(out[i].tolist()) == _until_eos(ref_tokens), (kind, i, name)
    # the outputs are not all alike, so the test can tell adapters apart
    assert len({tuple(row) for row in out.tolist()}) > 1


# ---------------------------------------------------------------------------------------------- bad input
def test_model_must_be_a_peft_model(make_model, tokenizer):
    ids, mask = _batch(tokenizer, "right")
    with pytest.raises(TypeError, match=r"model must be a peft\.PeftModel .* got T5ForConditionalGeneration"):
        mixed_forward(make_model("t5"), ids, mask, NAMES, labels=ids)


def test_model_of_another_task_type(make_model, tokenizer):
    model = get_peft_model(make_model("t5"), _feature_config())
    ids, mask = _batch(tokenizer, "right")
    with pytest.raises(
        TypeError, match=r"model is a PeftModelForFeatureExtraction; .*'SEQ_2_SEQ_LM' or 'CAUSAL_LM'"
    ):
        mixed_generate(model, ids, mask, ["default"] * 4)


def test_unknown_adapter_lists_the_loaded_ones(build, tokenizer):
    ids, mask = _batch(tokenizer, "right")
    with pytest.raises(
        ValueError,
        match=r"adapter_names\[1\]='sst2' is not loaded in this model; loaded adapters: \['p3', 'p5', 'p7'\]\. "
        r"Load it first with model\.load_adapter\(path, adapter_name='sst2'\)",
    ):
        mixed_forward(build("t5"), ids, mask, ["p3", "sst2", "p3", "p3"], labels=ids)


def test_adapter_that_is_not_a_prompt(make_model, tokenizer):
    model = get_peft_model(make_model("t5"), LoraConfig(task_type="SEQ_2_SEQ_LM", target_modules=["q", "v"]))
    ids, mask = _batch(tokenizer, "right")
    with pytest.raises(
        ValueError, match=r"adapter_names\[0\]='default' is a LORA adapter, not a prompt-tuning"
    ):
        mixed_forward(model, ids, mask, ["default"] * 4, labels=ids)


def test_adapter_count_must_equal_batch_size(build, tokenizer):
    ids, mask = _batch(tokenizer, "right")
    with pytest.raises(ValueError, match=r"len\(adapter_names\)=3 but the batch holds 4 examples; pass one"):
        mixed_generate(build("t5"), ids, mask, ["p3", "p7", "p3"], max_new_tokens=2)


def test_adapter_names_must_be_a_list(build, tokenizer):
    ids, mask = _batch(tokenizer, "right")
    with pytest.raises(
        TypeError, match=r"adapter_names must be a list of adapter names, one per example, got 'p3'"
    ):
        mixed_forward(build("t5"), ids, mask, "p3", labels=ids)


def test_prompts_of_different_d_model(build, tokenizer):
    model = build("llama")
    model.prompt_encoder["p7"].embedding = torch.nn.Embedding(7, 8)  # a prompt made for a narrower model
    ids, mask = _batch(tokenizer, "left")
    with pytest.raises(
        ValueError,
        match=r"adapter 'p7' has a prompt of shape \(7, 8\) \(P, d_model\) but this model's d_model is 16 "
        r"\(prompts so far: \{'p3': \(3, 16\)\}\); prompts of different d_model",
    ):
        mixed_forward(model, ids, mask, NAMES)


def test_other_bad_calls(build, tokenizer):
    t5, llama = build("t5"), build("llama")
    ids, mask = _batch(tokenizer, "right")
    t = ids.shape[1]
    with pytest.raises(
        ValueError, match=rf"attention_mask has shape \(4, 3\) but input_ids has shape \(4, {t}\)"
    ):
        mixed_forward(t5, ids, mask[:, :3], NAMES, labels=ids)
    with pytest.raises(ValueError, match=rf"input_ids must be a \[B, T\] tensor of token ids, got \({t},\)"):
        mixed_forward(t5, ids[0], mask[0], NAMES[:1], labels=ids)
    with pytest.raises(ValueError, match=r"input_ids holds no examples \(batch size 0\)"):
        mixed_forward(t5, ids[:0], mask[:0], [], labels=ids[:0])
    with pytest.raises(ValueError, match=r"a seq2seq forward needs labels or decoder_input_ids"):
        mixed_forward(t5, ids, mask, NAMES)
    with pytest.raises(ValueError, match=rf"labels has shape \(4, 2\) but input_ids has \(4, {t}\)"):
        mixed_forward(llama, ids, mask, NAMES, labels=ids[:, :2])
    with pytest.raises(
        ValueError, match=r"max_length=20 would count virtual tokens and padding.*max_new_tokens"
    ):
        mixed_generate(llama, ids, mask, NAMES, max_length=20)
    with pytest.raises(ValueError, match=r"inputs_embeds is built by mixed_generate"):
        mixed_generate(t5, ids, mask, NAMES, inputs_embeds=torch.zeros(4, t, 16))


# ---------------------------------------------------------------------------------------------- voting
A, B, C = [5, 6, EOS, PAD], [7, EOS, PAD, PAD], [8, 9, 9, EOS]


def _stack(*outputs_per_prompt: list[list[int]]) -> torch.Tensor:
    return torch.tensor(outputs_per_prompt)  # [N, B, L]


@pytest.mark.parametrize(
    ("outputs", "winner", "votes"),
    [
        ([A, B, B], 1, 2),  # plain majority
        ([A, B, B, A], 0, 2),  # tie: the earliest prompt among the tied answers
        ([B, A, A, B], 0, 2),
        ([C, A, B, B, A], 1, 2),  # tie between A (first at 1) and B (first at 2): A wins
        ([A, B, C], 0, 1),  # all different: the first prompt
        ([C], 0, 1),  # N = 1
    ],
)
def test_majority_vote_on_constructed_outputs(outputs, winner, votes):
    got_winner, got_votes = majority_vote(_stack(*[[o] for o in outputs]), eos_token_id=EOS)
    assert got_winner.tolist() == [winner] and got_votes.tolist() == [votes]


def test_majority_vote_ignores_tokens_after_eos_and_votes_per_example():
    same_answer = [[5, EOS, PAD, PAD], [5, EOS, 7, 7]]  # generate pads after EOS; anything there is not voted
    outputs = _stack([same_answer[0], A], [same_answer[1], B], [C, B])  # N=3 prompts, B=2 examples
    winner, votes = majority_vote(outputs, eos_token_id=[EOS, 99])
    assert winner.tolist() == [0, 1] and votes.tolist() == [2, 2]
    assert answer_key([5, 6, EOS, 4], EOS) == (5, 6, EOS)
    assert answer_key([5, 6], None) == (5, 6)


def test_majority_vote_rejects_bad_shapes():
    with pytest.raises(
        ValueError, match=r"sequences must be a \[N, B, L\] tensor with N >= 1 prompts, got \(2, 3\)"
    ):
        majority_vote(torch.zeros(2, 3, dtype=torch.long))


def test_combine_label_scores_vote_and_mean():
    scores = torch.tensor(
        [  # N=3 prompts, B=3 examples, C=3 labels
            [[0.0, 1.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 5.0]],
            [[0.0, 1.0, 0.0], [0.0, 3.0, 0.0], [1.0, 0.0, 0.0]],
            [[9.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]],
        ]
    )
    voted = combine_label_scores(scores, "vote")
    # example 0: votes 1, 1, 0 -> label 1; example 1: 0, 1, 2 all tied -> first prompt's label 0;
    # example 2: 2, 0, 0 -> label 0 with two votes
    assert voted.predictions.tolist() == [1, 0, 0]
    assert voted.support.tolist() == [[1, 2, 0], [1, 1, 1], [2, 0, 1]]
    mean = combine_label_scores(scores, "mean")
    expected = scores.softmax(-1).mean(0)
    torch.testing.assert_close(mean.support, expected)
    assert mean.predictions.tolist() == expected.argmax(-1).tolist() == [0, 1, 2]
    tie = combine_label_scores(torch.zeros(2, 1, 3), "mean")  # all equal: lowest label index
    assert tie.predictions.tolist() == [0]
    with pytest.raises(ValueError, match=r"method='max' is not known; use one of \('vote', 'mean'\)"):
        combine_label_scores(scores, "max")
    with pytest.raises(ValueError, match=r"scores must be a non-empty \[N, B, C\] tensor .* got \(3, 3\)"):
        combine_label_scores(scores[0], "vote")


# ---------------------------------------------------------------------------------------------- ensembles
@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_ensemble_generate_votes_over_one_batch(build, tokenizer, kind, tmp_path):
    model = build(kind)
    # the same prompt twice: two votes that always agree
    model.load_adapter(str(tmp_path / "p3"), adapter_name="p3_again")
    ids, mask = _batch(tokenizer, "left" if kind != "t5" else "right")
    names = ["p7", "p3", "p5", "p3_again"]
    out = ensemble_generate(model, ids, mask, names, tokenizer=tokenizer, max_new_tokens=4, do_sample=False)
    assert out.candidates.shape[:2] == (4, len(TEXTS))
    # candidate n is what adapter n generates: the same rows in another batch order give the same tokens
    order = [(n, b) for n in reversed(range(len(names))) for b in range(len(TEXTS))]
    rows = torch.tensor([b for _, b in order])
    again = mixed_generate(
        model, ids[rows], mask[rows], [names[n] for n, _ in order], max_new_tokens=4, do_sample=False
    )
    for row, (n, b) in enumerate(order):
        assert _until_eos(out.candidates[n, b].tolist()) == _until_eos(again[row].tolist())
    winner, votes = majority_vote(out.candidates, EOS)
    assert out.winner.tolist() == winner.tolist() and out.votes.tolist() == votes.tolist()
    assert all(v >= 2 for v in out.votes.tolist())  # p3 and p3_again always agree
    for b in range(len(TEXTS)):
        assert out.sequences[b].tolist() == out.candidates[out.winner[b], b].tolist()
    assert out.texts == tokenizer.batch_decode(out.sequences, skip_special_tokens=True)


def test_ensemble_bad_adapter_lists(build, tokenizer):
    model = build("t5")
    ids, mask = _batch(tokenizer, "right")
    with pytest.raises(
        ValueError, match=r"adapter_names repeats \['p3'\]; an ensemble gives every prompt one vote"
    ):
        ensemble_generate(model, ids, mask, ["p3", "p7", "p3"], max_new_tokens=2)
    with pytest.raises(ValueError, match=r"adapter_names is empty; pass the N >= 1 prompt adapters"):
        ensemble_generate(model, ids, mask, [], max_new_tokens=2)
    with pytest.raises(ValueError, match=r"adapter_names\[0\]='nope' is not loaded"):
        ensemble_classify(model, ids, mask, ["nope"], [[5, EOS]])


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_score_labels_equals_alone_log_likelihood(build, tokenizer, kind):
    model = build(kind)
    ids, mask = _batch(tokenizer, "right")
    label_ids = [[5, EOS], [7, 8, 9, EOS], [11]]
    with torch.no_grad():
        scores = score_labels(model, ids, mask, NAMES, label_ids)  # [B, C]
        assert scores.shape == (4, 3)
        for b, name in enumerate(NAMES):
            model.set_adapter(name)
            x = _alone_ids(ids, mask, b)
            for c, label in enumerate(label_ids):
                y = torch.tensor([label])
                if kind == "t5":
                    loss = model(input_ids=x, attention_mask=torch.ones_like(x), labels=y).loss
                else:  # the label continues the input: the EOS the tokenizer appended is dropped
                    x = x[:, :-1] if x[0, -1] == EOS else x
                    full = torch.cat([x, y], 1)
                    loss = model(input_ids=full, labels=torch.cat([torch.full_like(x, -100), y], 1)).loss
                torch.testing.assert_close(scores[b, c], -loss * len(label), **TOL)
        ensemble = ensemble_classify(model, ids, mask, ["p3", "p7", "p5"], label_ids, method="mean")
    assert ensemble.scores.shape == (3, 4, 3)
    for n, name in enumerate(["p3", "p7", "p5"]):
        with torch.no_grad():
            torch.testing.assert_close(
                ensemble.scores[n], score_labels(model, ids, mask, [name] * 4, label_ids), **TOL
            )
    assert ensemble.predictions.tolist() == combine_label_scores(ensemble.scores, "mean").predictions.tolist()
    with pytest.raises(
        ValueError, match=r"label_ids must be a non-empty list of non-empty token-id lists, got \[\]"
    ):
        score_labels(model, ids, mask, NAMES, [])
