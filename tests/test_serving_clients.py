"""Third-party clients against a real `softprompt serve` process (127.0.0.1, tiny models, fp32, offline): the
`openai` client, LangChain's `OpenAI()` / `ChatOpenAI()` with their defaults, and lm-evaluation-harness's
`local-completions` model compared sample by sample with its `hf` backend loading the same adapter (`peft=`).

Each needs its package (the `test` extra installs them); a missing one skips its tests with the reason.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from serving_assets import PeftReference, ServerProcess, causal_assets, t5_assets  # noqa: E402

TEXTS = ["the cat sat on the mat", "a ship", "rain falls from dark clouds in the cold season", "the river"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_clients")
    return {"root": root, "causal": causal_assets(root), "t5": t5_assets(root)}


@pytest.fixture(scope="module")
def server(assets):
    srv = ServerProcess(["--base", assets["causal"]["base"], "--adapter", assets["causal"]["folder"]],
                        assets["root"] / "causal.log")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def reference(assets):
    return PeftReference(assets["causal"]["base"], assets["causal"]["folder"])


@pytest.fixture(scope="module")
def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


# ---------------------------------------------------------------------------------------------- openai
def test_openai_stop_logprobs_echo_and_token_ids(client, reference):
    full = client.completions.create(model="p7", prompt=TEXTS[1], max_tokens=24).choices[0]
    assert len(full.text) >= 6, full.text
    stop = full.text[3:5]
    cut = client.completions.create(model="p7", prompt=TEXTS[1], max_tokens=24, stop=[stop]).choices[0]
    assert cut.text == full.text[: full.text.find(stop)] and cut.finish_reason == "stop"

    ids = reference.tokenizer(TEXTS[2])["input_ids"]
    echo = client.completions.create(model="p5", prompt=[ids], max_tokens=0, echo=True, logprobs=1).choices[0]
    scores = reference.token_logprobs("p5", ids)
    assert echo.logprobs.token_logprobs[0] is None
    assert all(abs(got - float(scores[j - 1, ids[j]])) < 1e-4
               for j, got in enumerate(echo.logprobs.token_logprobs) if j > 0)
    assert len(echo.logprobs.text_offset) == len(ids) == len(echo.logprobs.tokens)


def test_openai_seeded_sampling_and_streamed_usage(client):
    kwargs = dict(model="p3", max_tokens=10, temperature=1.0, seed=21)
    first = client.completions.create(prompt=TEXTS[0], **kwargs).choices[0].text
    batched = client.completions.create(prompt=[TEXTS[3], TEXTS[0]], **kwargs).choices[1].text
    assert batched == first
    chunks = list(client.completions.create(prompt=TEXTS[0], stream=True, stream_options={"include_usage": True},
                                            **kwargs))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == first
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1


def test_openai_chat_and_refusals(client, reference):
    openai = pytest.importorskip("openai")
    messages = [{"role": "user", "content": "the cat"}]
    chat = client.chat.completions.create(model="p3", messages=messages, max_tokens=6)
    text = reference.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = reference.tokenizer(text, add_special_tokens=False)["input_ids"]
    same = client.completions.create(model="p3", prompt=ids, max_tokens=6).choices[0].text
    assert chat.choices[0].message.content == same
    streamed = client.chat.completions.create(model="p3", messages=messages, max_tokens=6, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == same
    with pytest.raises(openai.BadRequestError, match="suffix") as caught:
        client.completions.create(model="p3", prompt="x", suffix="y")
    assert caught.value.body["param"] == "suffix"
    with pytest.raises(openai.NotFoundError, match="no route"):
        client.embeddings.create(model="p3", input="x")


# ---------------------------------------------------------------------------------------------- LangChain
def test_langchain_openai_and_chat_openai_with_defaults(server, client, reference):
    """LangChain's `OpenAI()` sends temperature 0.7, top_p 1, both penalties 0, n 1, max_tokens 256;
    `ChatOpenAI()` sends only the model, the messages and stream=false (greedy here)."""
    lc = pytest.importorskip("langchain_openai")
    llm = lc.OpenAI(model="p3", base_url=server.url + "/v1", api_key="unused", max_retries=0)
    assert isinstance(llm.invoke(TEXTS[0]), str)  # sampled: any text, but served (a 422 before)
    greedy = lc.OpenAI(model="p3", base_url=server.url + "/v1", api_key="unused", temperature=0, max_tokens=6)
    assert greedy.invoke(TEXTS[0]) == client.completions.create(model="p3", prompt=TEXTS[0], max_tokens=6).choices[0].text
    chat = lc.ChatOpenAI(model="p3", base_url=server.url + "/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "the cat"}]
    want = client.chat.completions.create(model="p3", messages=messages).choices[0].message.content
    assert chat.invoke("the cat").content == want
    assert "".join(part.content for part in chat.stream("the cat")) == want


# ---------------------------------------------------------------------------------------------- lm-eval
DOCS = [("the cat sat on", ["the mat", "a ship", "the river"], 0), ("rain falls from", ["dark clouds", "the cat"], 0),
        ("a ship on", ["the river", "the mat", "dark clouds"], 1), ("the river", ["runs", "sat", "the cold"], 0)]


def _task(root: Path, name: str, output_type: str) -> Path:
    """A task YAML over a local jsonl under `root / "tasks"` (for `--include_path`)."""
    data = root / f"{name}.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in DOCS))
    folder = root / "tasks"
    folder.mkdir(exist_ok=True)
    kind = ('doc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\nmetric_list:\n  - metric: acc\n'
            if output_type == "multiple_choice" else
            'doc_to_target: "{{choices[answer]}}"\ngeneration_kwargs:\n  until: ["."]\n  max_gen_toks: 8\n'
            '  do_sample: false\nmetric_list:\n  - metric: exact_match\n')
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        f'output_type: {output_type}\ndoc_to_text: "{{{{question}}}}"\n{kind}')
    return folder


def _evaluate(model: str, model_args: str, task: str, include_path: Path) -> list:
    import lm_eval
    from lm_eval.tasks import TaskManager

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    out = lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=[task], log_samples=True,
                                  task_manager=TaskManager(include_path=str(include_path)), batch_size=1)
    return sorted(out["samples"][task], key=lambda s: s["doc_id"])


@pytest.mark.slow
def test_lm_eval_loglikelihood_equals_the_hf_backend(server, assets):
    """Multiple choice (loglikelihood) through `local-completions` (the remote tokenizer, token-id prompts,
    echo + logprobs) equals lm-eval's `hf` backend with `peft=` on the same base, sample by sample."""
    pytest.importorskip("lm_eval")
    folder = _task(assets["root"], "tiny_mc", "multiple_choice")
    causal = assets["causal"]
    served = _evaluate("local-completions", f"model=p7,base_url={server.url}/v1/completions,num_concurrent=1,"
                       "max_retries=1,tokenized_requests=True", "tiny_mc", folder)
    local = _evaluate("hf", f"pretrained={causal['base']},peft={causal['folder']}/p7,dtype=float32,device=cpu,"
                      "add_bos_token=False", "tiny_mc", folder)
    assert len(served) == len(local) == len(DOCS)
    for a, b in zip(served, local, strict=True):
        got, want = [r[0][0] for r in a["resps"]], [r[0][0] for r in b["resps"]]
        assert len(got) == len(want) and all(abs(x - y) < 1e-4 for x, y in zip(got, want, strict=True)), (got, want)
        assert [r[0][1] for r in a["resps"]] == [r[0][1] for r in b["resps"]]  # is_greedy too
        assert a["acc"] == b["acc"]


@pytest.mark.slow
def test_lm_eval_generate_until_on_t5_equals_the_hf_backend(assets):
    """generate_until on a T5 base: `local-completions` sending text (the server adds T5's EOS, as the hf
    backend's tokenizer does) and stopping at the task's `until`, against `hf` with `peft=`."""
    pytest.importorskip("lm_eval")
    t5 = assets["t5"]
    srv = ServerProcess(["--base", t5["base"], "--adapter", t5["folder"]], assets["root"] / "t5.log")
    try:
        folder = _task(assets["root"], "tiny_gen", "generate_until")
        served = _evaluate("local-completions", f"model=t3,base_url={srv.url}/v1/completions,num_concurrent=1,"
                           "max_retries=1,tokenizer_backend=None,tokenized_requests=False", "tiny_gen", folder)
    finally:
        srv.stop()
    local = _evaluate("hf", f"pretrained={t5['base']},peft={t5['folder']}/t3,dtype=float32,device=cpu,"
                      "backend=seq2seq", "tiny_gen", folder)
    # lm-eval's hf backend passes seq2seq models `max_length = context tokens + max_gen_toks`, which T5's
    # generate applies to the decoder alone, so it runs past max_gen_toks where the server stops at 8 new
    # tokens: the served text is the start of the hf text, character for character (or all of it)
    for a, b in zip(served, local, strict=True):
        text, reference = a["filtered_resps"][0], b["filtered_resps"][0]
        assert text and reference.startswith(text), (text, reference)


@pytest.mark.slow
def test_lm_eval_generate_until_on_a_causal_base_equals_peft_greedy(server, assets, reference):
    """generate_until through `local-completions` (token-id prompts via the remote tokenizer, the task's `until`
    as `stop`) equals greedy decoding through PEFT's `set_adapter` path one request at a time, cut at `until`.
    (lm-eval's hf backend is no reference here: PEFT's causal `generate` re-inserts the prompt at every step
    under transformers >= 5.24, the upstream bug `softprompt_ext.generate` works around.)"""
    pytest.importorskip("lm_eval")
    folder = _task(assets["root"], "tiny_gen_causal", "generate_until")
    served = _evaluate("local-completions", f"model=p5,base_url={server.url}/v1/completions,num_concurrent=1,"
                       "max_retries=1,tokenized_requests=True", "tiny_gen_causal", folder)
    tokenizer = reference.tokenizer
    for sample, (question, _, _) in zip(served, DOCS, strict=True):
        ids = tokenizer(question, add_special_tokens=False)["input_ids"]
        text = tokenizer.decode(reference.greedy("p5", ids, 8), skip_special_tokens=True).split(".")[0]
        assert sample["filtered_resps"][0] == text, (sample["filtered_resps"], text)
    assert any(s["filtered_resps"][0] for s in served)


@pytest.mark.slow
def test_the_softprompt_lm_eval_model_evaluates_one_adapter_per_task_in_one_run(server, assets):
    """`--model softprompt` with `adapters=tiny_a:p7+tiny_b:p3`: two tasks, each scored with its own adapter in
    one run, equal per sample to lm-eval's `hf` backend loading that adapter with `peft=`."""
    pytest.importorskip("lm_eval")
    import lm_eval
    from lm_eval.tasks import TaskManager

    from softprompt_ext.inference.lm_eval_model import parse_adapters

    with pytest.raises(ValueError, match="adapters entry 'tiny_a' is not TASK:ADAPTER"):
        parse_adapters("tiny_a")
    _task(assets["root"], "tiny_a", "multiple_choice")
    folder = _task(assets["root"], "tiny_b", "multiple_choice")
    out = lm_eval.simple_evaluate(
        model="softprompt", tasks=["tiny_a", "tiny_b"], log_samples=True, batch_size=1,
        model_args=f"base_url={server.url}/v1/completions,adapters=tiny_a:p7+tiny_b:p3,num_concurrent=2,"
                   "max_retries=1,tokenized_requests=True", task_manager=TaskManager(include_path=str(folder)))
    causal = assets["causal"]
    for task, adapter in (("tiny_a", "p7"), ("tiny_b", "p3")):
        served = sorted(out["samples"][task], key=lambda s: s["doc_id"])
        local = _evaluate("hf", f"pretrained={causal['base']},peft={causal['folder']}/{adapter},dtype=float32,"
                          "device=cpu,add_bos_token=False", task, folder)
        for a, b in zip(served, local, strict=True):
            got, want = [r[0][0] for r in a["resps"]], [r[0][0] for r in b["resps"]]
            assert all(abs(x - y) < 1e-4 for x, y in zip(got, want, strict=True)), (task, got, want)


@pytest.mark.slow
def test_lm_eval_command_line_with_include_path(server, assets, tmp_path):
    """lm-eval's own command line, through `python -m softprompt_ext.inference.lm_eval_model` (which registers
    `softprompt`): a task YAML over a local jsonl found with `--include_path`, results written as JSON."""
    pytest.importorskip("lm_eval")
    import subprocess
    import sys

    folder = _task(assets["root"], "tiny_a", "multiple_choice")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "softprompt_ext.inference.lm_eval_model", "run", "--model",
                           "softprompt", "--include_path", str(folder), "--tasks", "tiny_a", "--output_path",
                           str(tmp_path), "--model_args", f"base_url={server.url}/v1/completions,adapter=p7,"
                           "tokenized_requests=True"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (results,) = tmp_path.rglob("results_*.json")
    assert 0.0 <= json.loads(results.read_text())["results"]["tiny_a"]["acc,none"] <= 1.0


@pytest.mark.slow
def test_the_softprompt_lm_eval_model_serves_in_process(assets):
    """Without `base_url`, `serve=FOLDER` serves the adapters in the evaluating process: the scores equal the
    hf backend's, sample by sample."""
    pytest.importorskip("lm_eval")
    import lm_eval
    from lm_eval.tasks import TaskManager

    import softprompt_ext.inference.lm_eval_model  # noqa: F401  (registers "softprompt")

    folder = _task(assets["root"], "tiny_a", "multiple_choice")
    causal = assets["causal"]
    with pytest.raises(ValueError, match="needs base_url=.* or serve=ADAPTER_FOLDER"):
        lm_eval.simple_evaluate(model="softprompt", model_args="adapter=p7", tasks=["tiny_a"],
                                task_manager=TaskManager(include_path=str(folder)))
    out = lm_eval.simple_evaluate(
        model="softprompt", tasks=["tiny_a"], log_samples=True, batch_size=1,
        model_args=f"pretrained={causal['base']},serve={causal['folder']},adapter=p5,tokenized_requests=True",
        task_manager=TaskManager(include_path=str(folder)))
    local = _evaluate("hf", f"pretrained={causal['base']},peft={causal['folder']}/p5,dtype=float32,device=cpu,"
                      "add_bos_token=False", "tiny_a", folder)
    served = sorted(out["samples"]["tiny_a"], key=lambda s: s["doc_id"])
    for a, b in zip(served, local, strict=True):
        got, want = [r[0][0] for r in a["resps"]], [r[0][0] for r in b["resps"]]
        assert all(abs(x - y) < 1e-4 for x, y in zip(got, want, strict=True)), (got, want)

