"""lm-eval `loglikelihood` through the `softprompt` model on a T5 base (`softprompt_ext.inference.lm_eval_seq2seq`):
continuations scored as decoder targets by `softprompt serve`'s `/v1/classify` (`append_eos: false`), compared
sample by sample with lm-eval's own `hf` backend (seq2seq, `peft=`, fp32) on the same requests: the same
log-likelihoods, `is_greedy` and `acc`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("lm_eval")

from serving_assets import ServerProcess, t5_assets  # noqa: E402

from softprompt_ext.inference.lm_eval_seq2seq import seq2seq_loglikelihood, split_pair  # noqa: E402

# the second question ends in a space (moved onto its continuations); the third's choices are another set
DOCS = [("the cat sat on", ["the mat", "a ship", "the river"], 0), ("rain falls from ", ["dark clouds", "the cat"], 0),
        ("a ship on", ["the river", "the mat", "dark clouds"], 1), ("the river", ["the mat", "a ship", "the river"], 2)]


def _task(root: Path, name: str) -> Path:
    """A multiple-choice task YAML over a local jsonl under `root / "tasks"` (for a TaskManager's include_path)."""
    data = root / f"{name}.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in DOCS))
    folder = root / "tasks"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        'output_type: multiple_choice\ndoc_to_text: "{{question}}"\n'
        'doc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\nmetric_list:\n  - metric: acc\n')
    return folder


def _samples(out: dict, task: str) -> list:
    return sorted(out["samples"][task], key=lambda s: s["doc_id"])


def _hf(t5: dict):
    """lm-eval's plain `hf` backend on the T5 base with adapter t3 (`peft=`, seq2seq, fp32)."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=t5["base"], peft=f"{t5['folder']}/t3", dtype="float32", device="cpu", backend="seq2seq",
                batch_size=1)


@pytest.mark.slow
def test_softprompt_loglikelihood_on_t5_equals_the_hf_seq2seq_backend(tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    import softprompt_ext.inference.lm_eval_model  # noqa: F401  (registers "softprompt")

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    t5 = t5_assets(tmp_path)
    folder = _task(tmp_path, "tiny_t5_mc")
    manager = TaskManager(include_path=str(folder))
    srv = ServerProcess(["--base", t5["base"], "--adapter", t5["folder"]], tmp_path / "t5.log")
    try:
        served = _samples(lm_eval.simple_evaluate(
            model="softprompt", tasks=["tiny_t5_mc"], log_samples=True, task_manager=manager,
            model_args=f"base_url={srv.url}/v1/completions,adapter=t3,num_concurrent=1,max_retries=1,"
                       "tokenizer_backend=None,tokenized_requests=False"), "tiny_t5_mc")
    finally:
        srv.stop()
    # the same through `serve=` (the adapters served in this process) with lm-eval's default tokenizer arguments
    in_process = _samples(lm_eval.simple_evaluate(
        model="softprompt", tasks=["tiny_t5_mc"], log_samples=True, task_manager=manager,
        model_args=f"pretrained={t5['base']},serve={t5['folder']},adapter=t3"), "tiny_t5_mc")
    for a, b in zip(in_process, served, strict=True):
        assert [r[0][1] for r in a["resps"]] == [r[0][1] for r in b["resps"]]
        assert all(abs(x[0][0] - y[0][0]) < 1e-4 for x, y in zip(a["resps"], b["resps"], strict=True))
    local = _samples(lm_eval.simple_evaluate(model=_hf(t5), tasks=["tiny_t5_mc"], log_samples=True,
                                             task_manager=manager), "tiny_t5_mc")
    assert len(served) == len(local) == len(DOCS)
    for a, b in zip(served, local, strict=True):
        got, want = ([r[0][0] for r in s["resps"]] for s in (a, b))
        assert len(got) == len(want) and all(abs(x - y) < 1e-4 for x, y in zip(got, want, strict=True)), (got, want)
        assert [r[0][1] for r in a["resps"]] == [r[0][1] for r in b["resps"]]  # is_greedy
        assert a["acc"] == b["acc"]


def _fake_server(greedy: list[str], calls: list):
    """A `post` answering like `softprompt serve`: word-level token ids, fixed label scores, and from every
    context the greedy words `greedy` then EOS (a completion of `max_tokens` words, "stop" where EOS came first)."""
    vocab: dict[str, int] = {}

    def post(path: str, body: dict):
        calls.append((path, body))
        if path == "/tokenize":
            return {"tokens": [vocab.setdefault(w, len(vocab) + 2) for w in body["prompt"].split()]}
        if path == "/v1/classify":
            return {"data": [{"index": i, "scores": [-1.0 - j for j in range(len(body["labels"]))]}
                             for i in range(len(body["input"]))]}
        assert path == "/v1/completions" and body["temperature"] == 0
        steps = body["max_tokens"]
        finish = "length" if steps <= len(greedy) else "stop"
        return {"choices": [{"index": i, "text": " ".join(greedy[:steps]), "finish_reason": finish}
                            for i in range(len(body["prompt"]))]}

    return post


def test_seq2seq_loglikelihood_batches_per_context_and_checks_greedy_token_by_token():
    calls: list = []
    post = _fake_server(["b", "c"], calls)
    pairs = [("q ", "b c"), ("q ", "b"), ("q ", "b c d"), ("r", "b c"), ("r", "c")]
    out = seq2seq_loglikelihood(pairs, "t3", post)
    # the trailing space of "q " moved onto its continuations; classify once per distinct set of continuations
    classify = [body for path, body in calls if path == "/v1/classify"]
    assert [(b["input"], b["labels"]) for b in classify] == [(["q"], [" b c", " b", " b c d"]),
                                                             (["r"], ["b c", "c"])]
    # the continuation tokens alone are scored, as lm-eval's seq2seq backend scores them
    assert all(b["append_eos"] is False for b in classify)
    # one greedy run per continuation length, of exactly that many tokens, from the contexts that need it
    completions = [body for path, body in calls if path == "/v1/completions"]
    assert [(b["prompt"], b["max_tokens"]) for b in completions] == [(["q", "r"], 1), (["q", "r"], 2), (["q"], 3)]
    assert [score for score, _ in out] == [-1.0, -2.0, -3.0, -1.0, -2.0]
    # greedy "b c" then EOS: a continuation is greedy when it is the greedy tokens' prefix of its length ("b" too:
    # what follows does not matter); "b c d" is not (EOS came third), nor "c"
    assert [greedy for _, greedy in out] == [True, True, False, True, False]
    # greedy "b" then EOS: "b c" is no longer greedy (EOS at its second token)
    short = seq2seq_loglikelihood(pairs, "t3", _fake_server(["b"], []))
    assert [greedy for _, greedy in short] == [False, True, False, False, False]


def test_seq2seq_loglikelihood_refuses_a_whitespace_continuation():
    assert split_pair("q  ", "a") == ("q", "  a")
    with pytest.raises(ValueError, match=r"request 0 has the whitespace-only continuation ' '"):
        seq2seq_loglikelihood([("q", " ")], "t3", _fake_server([], []))


def _cat_forever_t5(t5: dict, root: Path) -> str:
    """A copy of the T5 base whose greedy decoding is "cat cat cat ..." from any input, never EOS: every decoder
    layer's output projections are zeroed, so the decoder state is the previous token's embedding, RMS-normalised
    (unit norm weights), and the (tied) embedding rows make the start token's state and "cat"'s point to "cat"
    (lm-eval's `hf` backend re-ties the output layer, so the embeddings carry it). Returns its directory."""
    import torch
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    tokenizer = AutoTokenizer.from_pretrained(t5["base"])
    (cat,) = tokenizer("cat", add_special_tokens=False)["input_ids"]
    model = T5ForConditionalGeneration.from_pretrained(t5["base"], dtype=torch.float32).eval()
    with torch.no_grad():
        for block in model.decoder.block:
            for layer in block.layer:
                for name in ("SelfAttention", "EncDecAttention"):
                    if hasattr(layer, name):
                        getattr(layer, name).o.weight.zero_()
                if hasattr(layer, "DenseReluDense"):
                    layer.DenseReluDense.wo.weight.zero_()
        model.decoder.final_layer_norm.weight.fill_(1.0)
        table = model.shared.weight  # [V, H]
        table.mul_(0.01)
        e1, e2 = torch.eye(table.shape[1])[:2]  # [H] each
        table[model.config.decoder_start_token_id] = e1  # state ~ e1: logits pad 1, cat 10, EOS 0
        table[cat] = 10 * (e1 + e2)  # state ~ e1 + e2: logits pad 1, cat 20, EOS 5
        table[tokenizer.eos_token_id] = 5 * e2
    model.save_pretrained(root / "t5_cat")
    tokenizer.save_pretrained(root / "t5_cat")
    return str(root / "t5_cat")


@pytest.mark.slow
def test_is_greedy_on_t5_is_true_where_greedy_decoding_gives_the_continuation(tmp_path):
    """On a base whose greedy answer is "cat cat ..." and never ends, "cat" and "cat cat" are greedy (no EOS
    needs to follow), "the cat" and "ship" are not, from the server as from lm-eval's `hf` seq2seq backend."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    import softprompt_ext.inference.lm_eval_model  # noqa: F401  (registers "softprompt")

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    t5 = t5_assets(tmp_path)
    t5 = {"base": _cat_forever_t5(t5, tmp_path), "folder": t5["folder"]}
    data = tmp_path / "cat.jsonl"
    data.write_text(json.dumps({"question": "the dog sat", "choices": ["cat", "cat cat", "the cat", "ship"],
                                "answer": 0}) + "\n")
    folder = tmp_path / "cat_tasks"
    folder.mkdir()
    (folder / "tiny_cat.yaml").write_text(
        f"task: tiny_cat\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        'output_type: multiple_choice\ndoc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\nmetric_list:\n  - metric: acc\n')
    manager = TaskManager(include_path=str(folder))
    served = _samples(lm_eval.simple_evaluate(
        model="softprompt", tasks=["tiny_cat"], log_samples=True, task_manager=manager,
        model_args=f"pretrained={t5['base']},serve={t5['folder']},adapter=t3"), "tiny_cat")
    local = _samples(lm_eval.simple_evaluate(model=_hf(t5), tasks=["tiny_cat"], log_samples=True,
                                             task_manager=manager), "tiny_cat")
    (got,), (want,) = ([r[0] for r in s["resps"]] for s in served), ([r[0] for r in s["resps"]] for s in local)
    assert [g for _, g in got] == [g for _, g in want] == [True, True, False, False], (got, want)
    assert all(abs(x - y) < 1e-4 for (x, _), (y, _) in zip(got, want, strict=True)), (got, want)
