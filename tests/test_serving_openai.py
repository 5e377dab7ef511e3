"""OpenAI semantics of `softprompt serve`, in process (FastAPI's TestClient over `build_app`, tiny models, fp32).

Log-probabilities, echo, stop strings, seeded sampling, penalties, logit bias, token-id prompts, usage in
streams, chat, the tokenizer endpoints, and every refusal (a 4xx naming the field). References are PEFT's own
`set_adapter` path on the same adapter files, one request alone (`serving_assets.PeftReference`).
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from serving_assets import PeftReference, causal_assets, t5_assets  # noqa: E402

from softprompt_ext.inference.serving import build_app  # noqa: E402
from softprompt_ext.inference.serving.errors import ApiError  # noqa: E402
from softprompt_ext.inference.serving.output import TextStream, cut_at_stop, held_back  # noqa: E402
from softprompt_ext.inference.serving.sampling import RowOptions, choose  # noqa: E402

TEXTS = ["the cat sat on the mat", "a ship", "rain falls from dark clouds in the cold season", "the river"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_openai")
    return {"causal": causal_assets(root), "t5": t5_assets(root)}


@pytest.fixture(scope="module")
def causal(assets):
    app = build_app(assets["causal"]["base"], [assets["causal"]["folder"]], device="cpu", precision="fp32",
                    max_tokens=64, max_n=4, max_wait_ms=20)
    with TestClient(app) as client:
        yield client


@pytest.fixture(scope="module")
def t5(assets):
    app = build_app(assets["t5"]["base"], [assets["t5"]["folder"]], device="cpu", precision="fp32")
    with TestClient(app) as client:
        yield client


@pytest.fixture(scope="module")
def reference(assets):
    return PeftReference(assets["causal"]["base"], assets["causal"]["folder"])


def _ok(response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def _refused(response, status: int, param: str | None, *needles: str) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == status
    assert error["param"] == param, error
    for needle in needles:
        assert needle in error["message"], error["message"]
    return error["message"]


def _events(response) -> list:
    payloads = [line[len("data: "):] for line in response.text.split("\n\n") if line.startswith("data: ")]
    return [p if p == "[DONE]" else json.loads(p) for p in payloads]


# ---------------------------------------------------------------------------------------------- log-probabilities
def test_echo_scores_the_prompt_as_peft_does(causal, reference):
    """echo + logprobs + max_tokens 0 (lm-eval's loglikelihood shape with token ids): each prompt token's
    log-probability given the soft prompt and the tokens before it; the first is None."""
    ids = reference.tokenizer(TEXTS[2])["input_ids"]
    body = _ok(causal.post("/v1/completions", json={"model": "p7", "prompt": [ids], "max_tokens": 0, "echo": True,
                                                     "logprobs": 2}))
    lp = body["choices"][0]["logprobs"]
    assert len(lp["token_logprobs"]) == len(ids) and lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    expected = reference.token_logprobs("p7", ids)
    want = [float(expected[j - 1, ids[j]]) for j in range(1, len(ids))]
    assert torch.allclose(torch.tensor(lp["token_logprobs"][1:]), torch.tensor(want), atol=1e-4)
    assert all(len(top) >= 2 for top in lp["top_logprobs"][1:])
    assert lp["text_offset"] == sorted(lp["text_offset"]) and lp["text_offset"][0] == 0
    assert body["choices"][0]["text"] == reference.tokenizer.decode(ids, skip_special_tokens=True)
    assert body["usage"]["completion_tokens"] == 0


def test_lm_eval_loglikelihood_request(causal, reference):
    """lm-eval's exact request: `{prompt: [[ids]], max_tokens: 1, logprobs: 1, echo: true, temperature: 0}`;
    it reads `token_logprobs[ctxlen:-1]` (the continuation) and checks greediness against `top_logprobs`."""
    context = reference.tokenizer("the cat sat on", add_special_tokens=False)["input_ids"]
    continuation = reference.tokenizer(" the mat", add_special_tokens=False)["input_ids"]
    ids = context + continuation
    body = _ok(causal.post("/v1/completions", json={"model": "p3", "prompt": [ids, ids[:3]], "max_tokens": 1,
                                                     "logprobs": 1, "echo": True, "temperature": 0, "seed": 1234}))
    choice = body["choices"][0]
    assert len(choice["logprobs"]["token_logprobs"]) == len(ids) + 1  # the prompt, then the one new token
    got = sum(choice["logprobs"]["token_logprobs"][len(context):-1])
    expected = reference.token_logprobs("p3", ids)
    want = sum(float(expected[j - 1, ids[j]]) for j in range(len(context), len(ids)))
    assert abs(got - want) < 1e-4
    greedy = all(float(expected[j - 1].max()) == float(expected[j - 1, ids[j]]) for j in range(len(context), len(ids)))
    tops = choice["logprobs"]["top_logprobs"][len(context):-1]
    values = choice["logprobs"]["token_logprobs"][len(context):-1]
    assert greedy == all(v == max(top.values()) for v, top in zip(values, tops, strict=True))


def test_generated_logprobs_are_the_models_own(causal, reference):
    ids = reference.tokenizer(TEXTS[0])["input_ids"]
    body = _ok(causal.post("/v1/completions", json={"model": "p5", "prompt": TEXTS[0], "max_tokens": 6,
                                                     "logprobs": 3}))
    choice = body["choices"][0]
    tokens = reference.greedy("p5", ids, 6)
    assert choice["text"] == reference.tokenizer.decode(tokens, skip_special_tokens=True)
    scores = reference.token_logprobs("p5", ids + tokens)
    want = [float(scores[len(ids) - 1 + k, t]) for k, t in enumerate(tokens)]
    assert torch.allclose(torch.tensor(choice["logprobs"]["token_logprobs"]), torch.tensor(want), atol=1e-4)
    assert all(1 <= len(top) <= 4 for top in choice["logprobs"]["top_logprobs"])
    assert "".join(choice["logprobs"]["tokens"]).startswith(choice["text"].strip()[:1])


# ---------------------------------------------------------------------------------------------- stop strings
def test_stop_ends_the_text_before_the_stop_string(causal):
    full = _ok(causal.post("/v1/completions", json={"model": "p7", "prompt": TEXTS[1], "max_tokens": 24}))
    text = full["choices"][0]["text"]
    assert len(text) >= 6, text
    stop = text[3:5]
    cut = text[: text.find(stop)]
    body = _ok(causal.post("/v1/completions", json={"model": "p7", "prompt": TEXTS[1], "max_tokens": 24,
                                                     "stop": [stop, "never-seen"]}))
    assert body["choices"][0]["text"] == cut and body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] < full["usage"]["completion_tokens"]  # decoding stopped early
    streamed = _events(causal.post("/v1/completions", json={"model": "p7", "prompt": TEXTS[1], "max_tokens": 24,
                                                             "stop": stop, "stream": True}))
    chunks = [c for e in streamed[:-1] for c in e["choices"]]
    assert "".join(c["text"] for c in chunks) == cut and chunks[-1]["finish_reason"] == "stop"


def test_a_stream_holds_back_a_possible_stop_string():
    class Chars:  # a codec whose tokens are characters
        tokenizer = None

        def decode(self, ids):
            return "".join(chr(i) for i in ids)

    stream = TextStream(Chars(), (" a!",))
    sent = [stream.update([ord(c) for c in "xy z a"[: k + 1]]) for k in range(6)]
    assert sent == ["x", "y", "", " z", "", ""]  # " " and " a" wait: they may start " a!"
    assert stream.update([ord(c) for c in "xy z ab"]) == " ab"  # not the stop string after all
    assert stream.finish([ord(c) for c in "xy z ab a!tail"]) == ""  # the stop string: nothing past it
    assert cut_at_stop("ab a!c", (" a!", "b")) == ("a", True) and held_back("xx a", (" a!",)) == 2


# ---------------------------------------------------------------------------------------------- sampling
def test_a_seed_gives_the_same_text_alone_or_batched(causal):
    one = {"model": "p3", "max_tokens": 12, "temperature": 1.0, "top_p": 0.95, "seed": 11}
    alone = _ok(causal.post("/v1/completions", json={**one, "prompt": TEXTS[0]}))["choices"][0]["text"]
    batched = _ok(causal.post("/v1/completions", json={**one, "prompt": [TEXTS[1], TEXTS[0], TEXTS[2]]}))
    assert batched["choices"][1]["text"] == alone
    two = _ok(causal.post("/v1/completions", json={**one, "prompt": TEXTS[0], "n": 2, "best_of": 2}))
    assert [c["index"] for c in two["choices"]] == [0, 1] and two["choices"][0]["text"] == alone
    seed12 = _ok(causal.post("/v1/completions", json={**one, "seed": 12, "prompt": TEXTS[0]}))["choices"][0]["text"]
    assert two["choices"][1]["text"] == seed12  # choice j samples with seed + j
    greedy = _ok(causal.post("/v1/completions", json={"model": "p3", "max_tokens": 12, "prompt": TEXTS[0]}))
    texts = {alone, seed12, greedy["choices"][0]["text"]}
    assert len(texts) >= 2, texts  # sampling is not greedy decoding in disguise


def test_choose_applies_each_rows_options():
    """Hand-made logits `[3, 5]`: greedy row, a biased row, a penalised row; exact expectations."""
    class R:
        def __init__(self, options, tokens=()):
            self.options, self.tokens, self.generator, self.logprobs, self.max_new_tokens = \
                options, list(tokens), None, [], 4

    logits = torch.tensor([[0.0, 1.0, 3.0, 2.0, 0.5]] * 3)
    rows = [R(None), R(RowOptions(logit_bias=((4, 10.0),), logprobs=1)),
            R(RowOptions(frequency_penalty=1.0, presence_penalty=0.5), tokens=[2, 2])]
    assert choose(logits, rows).tolist() == [2, 4, 3]  # 3 - 2*1 - 0.5 = 0.5 < 2
    (value, top), = rows[1].logprobs  # the model's own log-probabilities, before the bias
    assert abs(value - float(torch.log_softmax(logits[0], -1)[4])) < 1e-6 and top[0][0] == 2
    sampled = R(RowOptions(temperature=1.0, top_k=1, seed=3))
    sampled.generator = sampled.options.generator("cpu")
    assert choose(logits[:1], [sampled]).tolist() == [2]  # top_k 1 leaves only the argmax
    nucleus = R(RowOptions(temperature=5.0, top_p=0.01, seed=3))
    nucleus.generator = nucleus.options.generator("cpu")
    assert choose(logits[:1], [nucleus]).tolist() == [2]


def test_logit_bias_and_penalties_are_served(causal, reference):
    forced = reference.tokenizer("cat", add_special_tokens=False)["input_ids"][0]
    body = _ok(causal.post("/v1/completions", json={"model": "p3", "prompt": TEXTS[0], "max_tokens": 5,
                                                     "logit_bias": {str(forced): 100}}))
    assert body["choices"][0]["text"] == reference.tokenizer.decode([forced] * 5)
    plain = _ok(causal.post("/v1/completions", json={"model": "p3", "prompt": TEXTS[3], "max_tokens": 16}))
    penalised = _ok(causal.post("/v1/completions", json={"model": "p3", "prompt": TEXTS[3], "max_tokens": 16,
                                                          "frequency_penalty": 2.0, "presence_penalty": 2.0}))
    assert penalised["choices"][0]["text"] != plain["choices"][0]["text"]


# ---------------------------------------------------------------------------------------------- prompts, usage
def test_token_id_prompts_equal_text_prompts(causal):
    ids = _ok(causal.post("/tokenize", json={"prompt": TEXTS[2]}))["tokens"]
    by_text = _ok(causal.post("/v1/completions", json={"model": "p5", "prompt": TEXTS[2], "max_tokens": 8}))
    by_ids = _ok(causal.post("/v1/completions", json={"model": "p5", "prompt": ids, "max_tokens": 8}))
    by_lists = _ok(causal.post("/v1/completions", json={"model": "p5", "prompt": [ids, ids], "max_tokens": 8}))
    assert by_ids["choices"][0]["text"] == by_text["choices"][0]["text"] == by_lists["choices"][1]["text"]
    assert _ok(causal.post("/detokenize", json={"tokens": ids}))["prompt"].startswith(TEXTS[2])
    info = _ok(causal.get("/tokenizer_info"))
    assert info["eos_token"] == "</s>" and "assistant" in info["chat_template"]
    no_specials = _ok(causal.post("/tokenize", json={"prompt": "</s>", "add_special_tokens": False}))
    assert no_specials["tokens"] == [1]  # lm-eval's eos_token_id probe


def test_stream_with_usage(causal):
    events = _events(causal.post("/v1/completions", json={
        "model": "p7", "prompt": TEXTS[:2], "max_tokens": 5, "stream": True,
        "stream_options": {"include_usage": True}}))
    assert events[-1] == "[DONE]" and events[-2]["choices"] == [] and events[-2]["usage"]["prompt_tokens"] > 0
    assert all(e["usage"] is None for e in events[:-2])
    plain = _ok(causal.post("/v1/completions", json={"model": "p7", "prompt": TEXTS[:2], "max_tokens": 5}))
    assert events[-2]["usage"] == plain["usage"]


# ---------------------------------------------------------------------------------------------- chat
def test_chat_renders_the_template_and_completes(causal, reference):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the cat"}]
    body = _ok(causal.post("/v1/chat/completions", json={"model": "p3", "messages": messages, "max_tokens": 6}))
    text = reference.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = reference.tokenizer(text, add_special_tokens=False)["input_ids"]
    same = _ok(causal.post("/v1/completions", json={"model": "p3", "prompt": ids, "max_tokens": 6}))
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["message"]["content"] == same["choices"][0]["text"]
    events = _events(causal.post("/v1/chat/completions", json={"model": "p3", "messages": messages,
                                                                "max_tokens": 6, "stream": True}))
    pieces = [c["delta"].get("content", "") for e in events[:-1] for c in e["choices"]]
    assert "".join(pieces) == same["choices"][0]["text"] and events[-1] == "[DONE]"
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"


def test_chat_without_a_template_is_400(t5):
    _refused(t5.post("/v1/chat/completions", json={"model": "t3", "messages": [{"role": "user", "content": "x"}]}),
             400, "messages", "no chat template", "/v1/completions")


# ---------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("extra, status, param, needle", [
    ({"suffix": "tail"}, 400, "suffix", "suffix='tail' is not served"),
    ({"best_of": 3}, 400, "best_of", "best_of=3 differs from n=1"),
    ({"n": 5, "temperature": 1}, 400, "n", "n=5 is out of range: 1 to 4 (--max-n)"),
    ({"logprobs": 6}, 400, "logprobs", "logprobs=6 is out of range"),
    ({"temperature": 2.5}, 400, "temperature", "temperature=2.5 is out of range"),
    ({"top_p": 0}, 400, "top_p", "top_p=0.0 is out of range"),
    ({"presence_penalty": 3}, 400, "presence_penalty", "presence_penalty=3.0 is out of range"),
    ({"logit_bias": {"x": 1}}, 400, "logit_bias", "logit_bias key 'x' is not a token id"),
    ({"logit_bias": {"99999": 1}}, 400, "logit_bias", "outside the vocabulary"),
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "stop holds 5 strings, more than 4"),
    ({"stop": [""]}, 400, "stop", "stop[0] is empty"),
    ({"max_tokens": 0}, 400, "max_tokens", "max_tokens=0 generates nothing"),
    ({"max_tokens": 65}, 400, "max_tokens", "limit of 64 (--max-tokens)"),
    ({"prompt": [[3, 99999]]}, 400, "prompt", "token id 99999, outside the vocabulary"),
    ({"stream": True, "logprobs": 1}, 400, "logprobs", "logprobs with stream=true is not served"),
    ({"stream_options": {"include_usage": True}}, 400, "stream_options", "only for stream=true"),
    ({"tools": []}, 422, "tools", "this endpoint has no field 'tools'"),
    ({"stream_options": {"continuous_usage_stats": True}}, 422, "stream_options", "continuous_usage_stats"),
])
def test_every_field_is_honoured_or_refused(causal, extra, status, param, needle):
    body = {"model": "p3", "prompt": "the cat", "max_tokens": 4, **extra}
    _refused(causal.post("/v1/completions", json=body), status, param, needle)


def test_echo_on_t5_is_refused_with_the_reason(t5):
    message = _refused(t5.post("/v1/completions", json={"model": "t3", "prompt": "x", "echo": True, "max_tokens": 1}),
                       400, "echo", "encoder-decoder base (T5)", "/v1/classify")
    assert "predicts no token of it" in message
    generated = _ok(t5.post("/v1/completions", json={"model": "t3", "prompt": "the cat", "max_tokens": 3,
                                                      "logprobs": 2}))  # generated tokens have log-probabilities
    assert len(generated["choices"][0]["logprobs"]["token_logprobs"]) >= 1


def test_unknown_routes_and_methods_are_openai_errors(causal):
    _refused(causal.post("/v1/embeddings", json={}), 404, None, "no route POST /v1/embeddings")
    _refused(causal.get("/v1/completions"), 405, None, "GET is not allowed")
    _refused(causal.post("/v1/completions", json={"model": "zz", "prompt": "x"}), 404, "model", "'zz' is not served")


def test_validation_errors_are_api_errors_without_http():
    """The validation module raises `ApiError` without HTTP: the bounds (and later ones) live there."""
    from softprompt_ext.inference.serving.schemas import CompletionRequest
    from softprompt_ext.inference.serving.settings import ServeSettings
    from softprompt_ext.inference.serving.validation import Capabilities, check_cheap

    caps = Capabilities(encoder_decoder=False, batching="mixed", vocab_size=10)
    with pytest.raises(ApiError, match="seed needs continuous batching .* --batching mixed"):
        check_cheap(CompletionRequest(model="a", prompt="x", temperature=0.5, seed=3), ServeSettings(), caps)
    with pytest.raises(ApiError, match="stop needs continuous batching"):
        check_cheap(CompletionRequest(model="a", prompt="x", stop="."), ServeSettings(), caps)
    check_cheap(CompletionRequest(model="a", prompt="x", temperature=0, seed=3, logprobs=2), ServeSettings(), caps)
    with pytest.raises(TypeError, match=r"unknown serve setting\(s\) \['max_adapter'\]"):
        ServeSettings.from_kwargs(max_adapter=3)
    with pytest.raises(ValueError, match="max_n=0 must be a positive integer"):
        ServeSettings(max_n=0)


def test_batch_modes_serve_sampling_and_logprobs_by_grouping(assets, causal):
    """`--batching per-adapter` (the benchmark's baseline) serves temperature/top_p and logprobs through one
    `generate` call per group of equal settings; its greedy log-probabilities equal the running batch's."""
    app = build_app(assets["causal"]["base"], [assets["causal"]["folder"]], device="cpu", precision="fp32",
                    batching="per_adapter")
    body = {"model": "p7", "prompt": TEXTS[:2], "max_tokens": 5, "logprobs": 2}
    with TestClient(app) as grouped:
        got = _ok(grouped.post("/v1/completions", json=body))
        sampled = _ok(grouped.post("/v1/completions", json={**body, "temperature": 0.9, "top_p": 0.9}))
        _refused(grouped.post("/v1/completions", json={**body, "stop": "x"}), 400, "stop", "needs continuous")
    want = _ok(causal.post("/v1/completions", json=body))
    for a, b in zip(got["choices"], want["choices"], strict=True):
        assert a["text"] == b["text"]
        assert torch.allclose(torch.tensor(a["logprobs"]["token_logprobs"]), torch.tensor(b["logprobs"]["token_logprobs"]),
                              atol=1e-4)
    assert all(len(c["logprobs"]["token_logprobs"]) >= 1 for c in sampled["choices"])



def test_echo_without_the_prefix_cache(assets, reference):
    """`--no-prefix-cache` prefills the prompt with the rows (left-padded, different lengths in one call): the
    echoed log-probabilities are still each row's own."""
    app = build_app(assets["causal"]["base"], [assets["causal"]["folder"]], device="cpu", precision="fp32",
                    prefix_cache=False, max_wait_ms=50)
    rows = [reference.tokenizer(text)["input_ids"] for text in TEXTS[:3]]
    with TestClient(app) as client:
        body = _ok(client.post("/v1/completions", json={"model": "p7", "prompt": rows, "max_tokens": 1, "echo": True,
                                                         "logprobs": 0}))
    for ids, choice in zip(rows, body["choices"], strict=True):
        expected = reference.token_logprobs("p7", ids)
        want = [float(expected[j - 1, ids[j]]) for j in range(1, len(ids))]
        got = choice["logprobs"]["token_logprobs"][1: len(ids)]
        assert torch.allclose(torch.tensor(got), torch.tensor(want), atol=1e-4)
        assert len(choice["logprobs"]["token_logprobs"]) == len(ids) + 1


def test_t5_rows_sample_with_their_seed_and_stop(t5):
    """The seq2seq running batch applies the same per-row options: a seeded row alone or beside others, and a
    stop string cutting a greedy completion."""
    one = {"model": "t3", "max_tokens": 10, "temperature": 1.0, "seed": 5}
    alone = _ok(t5.post("/v1/completions", json={**one, "prompt": TEXTS[2]}))["choices"][0]["text"]
    batched = _ok(t5.post("/v1/completions", json={**one, "prompt": [TEXTS[0], TEXTS[2]]}))["choices"][1]["text"]
    assert batched == alone
    full = _ok(t5.post("/v1/completions", json={"model": "t3", "prompt": TEXTS[0], "max_tokens": 16}))
    text = full["choices"][0]["text"]
    assert len(text) >= 4, text
    cut = _ok(t5.post("/v1/completions", json={"model": "t3", "prompt": TEXTS[0], "max_tokens": 16,
                                                "stop": text[2:4]}))["choices"][0]
    assert cut["text"] == text[: text.find(text[2:4])] and cut["finish_reason"] == "stop"


def test_classify_append_eos_false_scores_each_labels_own_tokens_on_t5(assets, t5, causal):
    """`append_eos: false` on the T5 base: each label's summed log-probability of its own tokens (lm-eval's
    seq2seq log-likelihood); the default scores the label + EOS, log p(EOS | input, label) lower. Reference:
    `score_label_ids` on PEFT's model with the same adapter, labels with and without EOS."""
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from softprompt_ext.inference.scoring import score_label_ids

    tokenizer = AutoTokenizer.from_pretrained(assets["t5"]["base"])
    base = AutoModelForSeq2SeqLM.from_pretrained(assets["t5"]["base"], dtype=torch.float32).eval()
    model = PeftModel.from_pretrained(base, f"{assets['t5']['folder']}/t3", adapter_name="t3").eval()
    labels = ["the mat", "a ship", "rain falls"]
    bare = [list(ids) for ids in tokenizer(labels, add_special_tokens=False)["input_ids"]]
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    want_bare = score_label_ids(model, batch["input_ids"], batch["attention_mask"], bare)
    want_eos = score_label_ids(model, batch["input_ids"], batch["attention_mask"],
                               [ids + [tokenizer.eos_token_id] for ids in bare])
    body = {"model": "t3", "input": TEXTS, "labels": labels}
    got_bare = torch.tensor([row["scores"] for row in _ok(t5.post("/v1/classify",
                                                                   json={**body, "append_eos": False}))["data"]])
    got_eos = torch.tensor([row["scores"] for row in _ok(t5.post("/v1/classify", json=body))["data"]])
    assert torch.allclose(got_bare, want_bare.scores.float(), atol=1e-4), (got_bare, want_bare.scores)
    assert torch.allclose(got_eos, want_eos.scores.float(), atol=1e-4), (got_eos, want_eos.scores)
    # the default appends EOS: it differs from the bare score by exactly log p(EOS | input, label), a real term
    lengths = torch.tensor([len(ids) for ids in bare])  # [C]
    eos_term = want_eos.token_log_probs.float()[:, torch.arange(len(bare)), lengths]  # [B, C]
    assert torch.allclose(got_eos - got_bare, eos_term, atol=1e-4)
    assert bool((eos_term < -1e-3).all()), eos_term
    # a decoder-only base has no EOS to leave out: the field changes nothing there
    plain = {"model": "p7", "input": TEXTS, "labels": labels}
    assert (_ok(causal.post("/v1/classify", json={**plain, "append_eos": False}))["data"]
            == _ok(causal.post("/v1/classify", json=plain))["data"])
