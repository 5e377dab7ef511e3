"""`softprompt serve` end to end: a real uvicorn process on 127.0.0.1, a tiny T5 and prompts saved to disk.

Two servers: the main one (3 adapters in a folder, a budget of 2 resident adapters, an admin token) for every
endpoint and bad input, and a small one (queue of 4 rows, batches of 1, 1.5 s timeout) for back-pressure
(429), timeouts (504) and graceful shutdown. References are computed in this process with PEFT's own
`set_adapter` path on the same files.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

from helpers import free_port, random_prompt_config  # noqa: E402
from peft import PeftModel, get_peft_model  # noqa: E402
from serving_assets import ServerProcess  # noqa: E402

from softprompt_ext import rank_classify, tiny_models  # noqa: E402

TOKEN = "s3cret-token"
# uvicorn (>= 0.29) re-raises the SIGTERM it handled once shutdown is complete, so the process ends "killed by
# SIGTERM" after a clean shutdown; "Application shutdown complete" in the log is what proves the drain
CLEAN_EXIT = (0, -signal.SIGTERM)
TEXTS = ["the cat sat on the mat", "a ship", "rain falls from dark clouds in the cold season", "the river"]


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny T5 + tokenizer directory, adapters a3/a7/a5 in one folder, a9 alone, and broken adapters."""
    root = tmp_path_factory.mktemp("serve")
    tokenizer = tiny_models.build_tokenizer()
    base = tiny_models.build_t5(len(tokenizer))
    with torch.no_grad():
        for p in base.parameters():
            if p.dim() > 1:
                p.mul_(3.0)  # tiny random models otherwise repeat one token
    base.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    model = get_peft_model(base, random_prompt_config("t5", 3, 1), adapter_name="a3")
    for name, length, seed in (("a7", 7, 2), ("a5", 5, 3), ("a9", 9, 4)):
        model.add_adapter(name, random_prompt_config("t5", length, seed))
    model.save_pretrained(root / "folder", selected_adapters=["a3", "a7", "a5"])
    model.save_pretrained(root / "single", selected_adapters=["a9"])
    bad = root / "bad"
    shutil.copytree(root / "folder" / "a3", bad / "pickle")  # pickle-only weights: refused
    (bad / "pickle" / "adapter_model.safetensors").rename(bad / "pickle" / "adapter_model.bin")
    shutil.copytree(root / "folder" / "a3", bad / "truncated")
    weights = bad / "truncated" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])
    wide = get_peft_model(tiny_models.build_t5(len(tokenizer), d_model=8), random_prompt_config("t5", 3, 5))
    wide.save_pretrained(bad / "width")  # a prompt for d_model 8 on a d_model 16 model
    return {"root": root, "base": str(root / "base"), "folder": str(root / "folder"),
            "a9": str(root / "single" / "a9"), "bad": bad}


@pytest.fixture(scope="module")
def reference(assets):
    """In-process references: `generate(name, text, n)` and `classify(name, texts, labels)` via set_adapter."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(assets["base"])
    base = AutoModelForSeq2SeqLM.from_pretrained(assets["base"]).eval()
    folder = Path(assets["folder"])
    model = PeftModel.from_pretrained(base, str(folder / "a3"), adapter_name="a3")
    model.load_adapter(str(folder / "a7"), adapter_name="a7")
    model.load_adapter(str(folder / "a5"), adapter_name="a5")
    model.eval()

    def generate(name: str, text: str, max_tokens: int) -> str:
        model.set_adapter(name)
        enc = tokenizer([text], return_tensors="pt")
        out = model.generate(**enc, max_new_tokens=max_tokens, do_sample=False)
        return tokenizer.decode(out[0], skip_special_tokens=True)

    def classify(name: str, texts: list[str], labels: list[str]):
        model.set_adapter(name)
        return rank_classify(model, tokenizer, texts, labels)

    return {"generate": generate, "classify": classify, "tokenizer": tokenizer}


class Server(ServerProcess):
    """A served process (fp32 unless the args say otherwise: the in-process references run fp32, and "auto" would
    run bf16 autocast on a CPU with bf16 units, where a batched greedy decode may take another argmax) with
    request helpers."""

    def post(self, path, body=None, **kwargs):
        return httpx.post(self.url + path, json=body, timeout=30, **kwargs)

    def get(self, path, **kwargs):
        return httpx.get(self.url + path, timeout=30, **kwargs)

    def metric(self, name: str, kind: str | None = None) -> float:
        """Sum of every sample of `name` (all label sets, or those with label kind=`kind`) in /metrics."""
        total = 0.0
        for line in self.get("/metrics").text.splitlines():
            if kind is not None and f'kind="{kind}"' not in line:
                continue
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total


@pytest.fixture(scope="module")
def server(assets):
    srv = Server(["--base", assets["base"], "--adapter", assets["folder"], "--adapter-root", str(assets["root"]),
                  "--admin-token", TOKEN, "--max-adapters", "2", "--max-wait-ms", "50", "--max-input-tokens", "40", "--max-tokens", "32"],
                 assets["root"] / "server.log")
    yield srv
    assert srv.stop() in CLEAN_EXIT, srv.log.read_text()[-3000:]


def _error(response, status: int, *needles: str) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    message = response.json()["error"]["message"]
    assert response.json()["error"]["code"] == status
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}  # OpenAI's error object
    for needle in needles:
        assert needle in message, message
    return message


# ---------------------------------------------------------------------------------------------- endpoints
def test_health_and_models(server):
    health = server.get("/health").json()
    assert health["status"] == "ok" and health["adapters"] == 3 and health["adapters_loaded"] <= 2
    models = server.get("/v1/models").json()
    assert models["object"] == "list"
    assert [(m["id"], m["num_virtual_tokens"]) for m in models["data"]] == [("a3", 3), ("a5", 5), ("a7", 7)]


def test_completion_matches_set_adapter_and_counts_usage(server, reference):
    body = server.post("/v1/completions", {"model": "a7", "prompt": TEXTS[:2], "max_tokens": 6}).json()
    assert body["object"] == "text_completion" and body["model"] == "a7" and body["id"].startswith("cmpl-")
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert [c["text"] for c in body["choices"]] == [reference["generate"]("a7", t, 6) for t in TEXTS[:2]]
    prompt_tokens = sum(len(ids) for ids in reference["tokenizer"](TEXTS[:2]).input_ids)
    usage = body["usage"]
    assert usage["prompt_tokens"] == prompt_tokens
    assert usage["total_tokens"] == prompt_tokens + usage["completion_tokens"]
    assert 0 < usage["completion_tokens"] <= 12
    for choice in body["choices"]:
        assert choice["finish_reason"] in ("stop", "length")


def test_openai_client(server, reference):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    out = client.completions.create(model="a3", prompt=TEXTS[2], max_tokens=5, temperature=0)
    assert out.choices[0].text == reference["generate"]("a3", TEXTS[2], 5)
    assert [m.id for m in client.models.list()] == ["a3", "a5", "a7"]
    with pytest.raises(openai.NotFoundError, match="not served"):
        client.completions.create(model="nope", prompt="x", max_tokens=2)


def _events(response) -> list:
    """The `data:` payloads of a server-sent event stream, JSON-decoded (`[DONE]` kept as the string)."""
    assert response.headers["content-type"].startswith("text/event-stream")
    payloads = [line[len("data: "):] for line in response.text.split("\n\n") if line.startswith("data: ")]
    return [p if p == "[DONE]" else json.loads(p) for p in payloads]


def test_streamed_completion_is_the_completion_in_pieces(server, reference):
    """`stream: true`: chunks per choice whose texts add up to the unstreamed completion, several chunks per
    choice (one per decoding step whose text grew), the finish reason on each choice's last chunk, then [DONE]."""
    body = {"model": "a7", "prompt": TEXTS[2:4], "max_tokens": 8}
    plain = server.post("/v1/completions", body).json()["choices"]
    events = _events(server.post("/v1/completions", {**body, "stream": True}))
    assert events[-1] == "[DONE]" and all(isinstance(e, dict) and "error" not in e for e in events[:-1])
    for choice in plain:
        chunks = [c for e in events[:-1] for c in e["choices"] if c["index"] == choice["index"]]
        assert "".join(c["text"] for c in chunks) == choice["text"] == reference["generate"](
            "a7", TEXTS[2 + choice["index"]], 8)
        assert [c["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
        assert chunks[-1]["finish_reason"] == choice["finish_reason"]
    longest = max(plain, key=lambda c: len(c["text"]))
    assert len(longest["text"].split()) >= 2  # a completion of several words ...
    assert len([c for e in events[:-1] for c in e["choices"] if c["index"] == longest["index"]]) >= 2  # ... streamed
    assert all(e["object"] == "text_completion" and e["model"] == "a7" for e in events[:-1])
    assert len({e["id"] for e in events[:-1]}) == 1
    refused = server.post("/v1/completions", {**body, "model": "nope", "stream": True})
    assert refused.status_code == 404 and "not served" in refused.json()["error"]["message"]


def test_openai_client_streams(server, reference):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    pieces = [c.choices[0].text for c in client.completions.create(model="a3", prompt=TEXTS[2], max_tokens=6,
                                                                      stream=True)]
    assert "".join(pieces) == reference["generate"]("a3", TEXTS[2], 6)


def test_classify_matches_rank_classify(server, reference):
    labels = ["positive", "negative", "the cat"]
    body = server.post("/v1/classify", {"model": "a5", "input": TEXTS, "labels": labels}).json()
    ref = reference["classify"]("a5", TEXTS, labels)
    assert [d["label"] for d in body["data"]] == ref.predicted_labels
    scores = torch.tensor([d["scores"] for d in body["data"]])
    assert torch.allclose(scores, ref.scores, atol=1e-4), (scores, ref.scores)
    single = server.post("/v1/classify", {"model": "a5", "input": TEXTS[0], "labels": labels,
                                          "length_normalize": True}).json()
    normalized = ref.normalized_scores[0]
    assert single["data"][0]["label"] == labels[int(normalized.argmax())]


def test_mixed_concurrent_burst_equals_each_request_alone(server):
    """Any mix of adapters in the running batch: every row's tokens equal the request sent alone; rows are
    admitted in fewer prefill calls than rows, decoding steps mix adapters; with a budget of 2 resident
    adapters for 3, the burst also evicts and reloads."""
    requests = [{"model": name, "prompt": text, "max_tokens": n}
                for i, (name, text, n) in enumerate(
                    (name, text, 4 + (j % 3) * 3) for j, (name, text) in
                    enumerate((n, t) for n in ("a3", "a7", "a5") for t in TEXTS))]
    requests.append({"model": "a7", "prompt": TEXTS[::-1], "max_tokens": 8})
    alone = [server.post("/v1/completions", r).json()["choices"] for r in requests]
    before = {key: server.metric(key, kind) for key, kind in (
        ("softprompt_batch_size_sum", "prefill"), ("softprompt_batch_size_count", "prefill"),
        ("softprompt_batch_adapters_sum", "generate"), ("softprompt_batch_adapters_count", "generate"))}
    barrier = threading.Barrier(len(requests))

    def send(body):
        barrier.wait()
        return server.post("/v1/completions", body)

    with ThreadPoolExecutor(len(requests)) as pool:
        burst = list(pool.map(send, requests))
    assert all(r.status_code == 200 for r in burst), [r.text for r in burst if r.status_code != 200]
    assert [[c["text"] for c in r.json()["choices"]] for r in burst] == [[c["text"] for c in a] for a in alone]
    assert [[c["finish_reason"] for c in r.json()["choices"]] for r in burst] == [
        [c["finish_reason"] for c in a] for a in alone]
    after = {key: server.metric(key, kind) for key, kind in (
        ("softprompt_batch_size_sum", "prefill"), ("softprompt_batch_size_count", "prefill"),
        ("softprompt_batch_adapters_sum", "generate"), ("softprompt_batch_adapters_count", "generate"))}
    rows = after["softprompt_batch_size_sum"] - before["softprompt_batch_size_sum"]
    calls = after["softprompt_batch_size_count"] - before["softprompt_batch_size_count"]
    assert rows == len(requests) + 3 and calls < rows, (rows, calls)  # batched: fewer prefill calls than rows
    adapters = after["softprompt_batch_adapters_sum"] - before["softprompt_batch_adapters_sum"]
    steps = after["softprompt_batch_adapters_count"] - before["softprompt_batch_adapters_count"]
    assert adapters > steps, (adapters, steps)  # decoding steps ran rows of several adapters together
    assert server.metric("softprompt_adapter_evictions_total") > 0
    assert server.metric("softprompt_adapter_reloads_total") > 0
    assert server.metric("softprompt_adapters_loaded") <= 2


def test_metrics(server):
    text = server.get("/metrics").text
    for name in ("softprompt_queue_depth", "softprompt_batch_size_bucket", "softprompt_request_seconds_bucket",
                 "softprompt_adapters_loaded", "softprompt_adapters_registered", "softprompt_adapter_evictions_total",
                 "softprompt_requests_total"):
        assert name in text, name
    assert 'endpoint="/v1/completions"' in text


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("body, needle", [
    ({"prompt": "x"}, "model: Field required"),
    ({"model": "a3", "prompt": []}, "prompt: prompt is an empty list"),
    ({"model": "a3", "prompt": "x", "max_tokens": -1}, "max_tokens: Input should be greater than or equal to 0"),
    ({"model": "a3", "prompt": "x", "temperature": "hot"}, "temperature: Input should be a valid number"),
    ({"model": "a3", "prompt": "x", "functions": []}, "this endpoint has no field 'functions'"),
    ({"model": "a3", "prompt": 3}, "prompt"),
])
def test_malformed_completion_is_422(server, body, needle):
    _error(server.post("/v1/completions", body), 422, needle)


def test_not_json_is_422(server):
    response = httpx.post(server.url + "/v1/completions", content=b"{not json", timeout=10,
                          headers={"content-type": "application/json"})
    _error(response, 422, "JSON")


@pytest.mark.parametrize("body, needle", [
    ({"model": "a3", "input": "x", "labels": []}, "labels: List should have at least 1 item"),
    ({"model": "a3", "input": "x", "labels": ["ok", " "]}, "labels[1]"),
    ({"model": "a3", "labels": ["a"]}, "input: Field required"),
])
def test_malformed_classify_is_422(server, body, needle):
    _error(server.post("/v1/classify", body), 422, needle)


def test_unknown_adapter_is_404(server):
    _error(server.post("/v1/completions", {"model": "zz", "prompt": "x"}), 404, "'zz' is not served", "a3")
    _error(server.post("/v1/classify", {"model": "zz", "input": "x", "labels": ["a"]}), 404, "'zz'")


def test_limits_are_400(server):
    long = " ".join(["the cat sat on the mat"] * 10)
    _error(server.post("/v1/completions", {"model": "a3", "prompt": ["a ship", long]}), 400,
           "prompt[1] has", "limit of 40 (--max-input-tokens)")
    _error(server.post("/v1/classify", {"model": "a3", "input": long, "labels": ["a"]}), 400, "input has")
    _error(server.post("/v1/completions", {"model": "a3", "prompt": "x", "max_tokens": 33}), 400,
           "max_tokens=33", "limit of 32 (--max-tokens)")


# ---------------------------------------------------------------------------------------------- admin
def test_admin_needs_the_token(server, assets):
    body = {"name": "a9", "source": assets["a9"]}
    _error(server.post("/admin/adapters", body), 401, "Authorization: Bearer")
    _error(server.post("/admin/adapters", body, headers={"Authorization": "Bearer wrong"}), 401)
    response = httpx.delete(server.url + "/admin/adapters/a3", timeout=10)
    _error(response, 401)
    assert "a3" in [m["id"] for m in server.get("/v1/models").json()["data"]]


def test_admin_load_use_unload(server, assets, reference):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    before = server.post("/v1/completions", {"model": "a3", "prompt": TEXTS[0], "max_tokens": 6}).json()
    response = server.post("/admin/adapters", {"name": "a9", "source": assets["a9"]}, headers=auth)
    assert response.status_code == 201, response.text
    assert response.json()["id"] == "a9" and response.json()["num_virtual_tokens"] == 9
    assert "a9" in [m["id"] for m in server.get("/v1/models").json()["data"]]
    out = server.post("/v1/completions", {"model": "a9", "prompt": TEXTS[1], "max_tokens": 4})
    assert out.status_code == 200 and out.json()["choices"][0]["text"] != ""
    _error(server.post("/admin/adapters", {"name": "a9", "source": assets["a9"]}, headers=auth), 409,
           "already served")
    gone = httpx.delete(server.url + "/admin/adapters/a9", headers=auth, timeout=10)
    assert gone.status_code == 200 and gone.json() == {"id": "a9", "object": "model", "deleted": True}
    _error(server.post("/v1/completions", {"model": "a9", "prompt": "x"}), 404)
    _error(httpx.delete(server.url + "/admin/adapters/a9", headers=auth, timeout=10), 404, "'a9' is not served")
    after = server.post("/v1/completions", {"model": "a3", "prompt": TEXTS[0], "max_tokens": 6}).json()
    assert after["choices"] == before["choices"]


@pytest.mark.parametrize("folder, needle", [
    ("pickle", "adapter_model.bin"),
    ("truncated", "adapter_model.safetensors"),
    ("width", "d_model"),
    ("missing", "missing"),
])
def test_a_refused_adapter_names_the_problem_and_disturbs_nothing(server, assets, folder, needle):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    before = server.post("/v1/completions", {"model": "a5", "prompt": TEXTS[3], "max_tokens": 5}).json()
    source = str(assets["bad"] / folder)
    message = _error(server.post("/admin/adapters", {"name": f"bad-{folder}", "source": source}, headers=auth),
                     422, "was refused", needle)
    assert "\n" not in message
    assert f"bad-{folder}" not in [m["id"] for m in server.get("/v1/models").json()["data"]]
    assert server.get("/health").json()["refused"][f"bad-{folder}"]
    after = server.post("/v1/completions", {"model": "a5", "prompt": TEXTS[3], "max_tokens": 5}).json()
    assert after["choices"] == before["choices"]


def test_admin_body_is_validated(server):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    _error(server.post("/admin/adapters", {"name": "../x", "source": "y"}, headers=auth), 422, "name")
    _error(server.post("/admin/adapters", {"name": "x"}, headers=auth), 422, "source: Field required")


# ---------------------------------------------------------------------------------------------- back-pressure
def _wait_for(check, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.005)
    return False


def test_queue_full_429_and_timeout_504(assets):
    """Queue of 4 rows, one row per model call, 1.5 s per request: a 4-prompt request of 1,000 tokens each fills
    the queue (another request: 429 with Retry-After) and outlives its timeout (504)."""
    srv = Server(["--base", assets["base"], "--adapter", assets["folder"], "--max-queue", "4",
                  "--max-batch-size", "1", "--max-tokens", "1000", "--request-timeout", "1.5"],
                 assets["root"] / "small.log")
    try:
        _error(srv.post("/v1/completions", {"model": "a3", "prompt": TEXTS + ["x"], "max_tokens": 2}), 400,
               "holds 5 prompts", "--max-queue")
        with ThreadPoolExecutor(1) as pool:
            # 4 rows of 1,000 greedy tokens, one row per call: 250 tokens a row took ~0.6 s on 2 AVX2 cores but
            # all four rows of 250 finished within 1.5 s in fp32 on an AVX-512-BF16 Xeon, so 4x the work
            full = pool.submit(srv.post, "/v1/completions", {"model": "a7", "prompt": TEXTS, "max_tokens": 1000})
            assert _wait_for(lambda: srv.get("/health").json()["queue_depth"] >= 3)
            response = srv.post("/v1/completions", {"model": "a5", "prompt": ["x", "y"], "max_tokens": 2})
            _error(response, 429, "queue is full")
            assert response.headers["Retry-After"] == "1"
            _error(full.result(), 504, "did not finish within 1.5 s")
        assert _wait_for(lambda: srv.get("/health").json()["queue_depth"] == 0)
        # the timed-out rows were abandoned across the process boundary: the engine stops decoding them
        assert _wait_for(lambda: srv.metric("softprompt_running_rows") == 0)
        steps = srv.metric("softprompt_batch_size_count", kind="generate")
        time.sleep(0.5)  # ~0.6 s per row: an engine still decoding them would run about 400 steps meanwhile
        assert srv.metric("softprompt_batch_size_count", kind="generate") == steps
    finally:
        srv.stop()


def test_requests_in_flight_at_sigterm_complete(assets):
    """A long timeout, so that only the shutdown decides: both requests accepted before SIGTERM get 200."""
    srv = Server(["--base", assets["base"], "--adapter", assets["folder"], "--max-batch-size", "1",
                  "--request-timeout", "120"], assets["root"] / "shutdown.log")
    try:
        with ThreadPoolExecutor(2) as pool:
            inflight = [pool.submit(srv.post, "/v1/completions", {"model": m, "prompt": TEXTS[0], "max_tokens": 120})
                        for m in ("a3", "a7")]
            assert _wait_for(lambda: srv.get("/health").json()["queue_depth"] >= 1, 30)  # one runs, one waits
            srv.proc.send_signal(signal.SIGTERM)
            results = [f.result() for f in inflight]
        assert [r.status_code for r in results] == [200, 200], [r.text for r in results]
        assert srv.proc.wait(60) in CLEAN_EXIT
        assert "Application shutdown complete" in srv.log.read_text()
    finally:
        srv.stop()


# ---------------------------------------------------------------------------------------------- in-process
def test_discover_names_adapters(assets, tmp_path):
    from softprompt_ext.inference.serving.registry import discover

    assert discover(assets["folder"]) == [(n, str(Path(assets["folder"]) / n)) for n in ("a3", "a5", "a7")]
    assert discover(assets["a9"]) == [("a9", assets["a9"])]
    assert discover(f"mine={assets['a9']}") == [("mine", assets["a9"])]
    assert discover("someone/sst2-prompt") == [("sst2-prompt", "someone/sst2-prompt")]
    with pytest.raises(ValueError, match="without adapter_config.json and without adapter subdirectories"):
        discover(str(tmp_path))


def test_cli_reports_missing_adapters_folder_in_one_line(tmp_path):
    from softprompt_ext.cli import main

    assert main(["serve", "--adapter", str(tmp_path), "--port", "1"]) == 2


def test_serve_is_public():
    import softprompt_ext

    assert softprompt_ext.serve.__module__ == "softprompt_ext.inference.serving"
    json.dumps(softprompt_ext.__all__)


def test_registry_byte_budget_evicts_least_recently_used_and_reloads(assets):
    from transformers import AutoModelForSeq2SeqLM

    from softprompt_ext.inference.serving.registry import AdapterRegistry, UnknownAdapter

    folder = Path(assets["folder"])
    base = AutoModelForSeq2SeqLM.from_pretrained(assets["base"]).eval()
    store = AdapterRegistry(base, max_adapters=8, max_bytes=(3 + 7) * 16 * 4)  # a3 + a7 fit, a5 does not
    for name in ("a3", "a7", "a5"):
        store.register(name, str(folder / name))
    assert list(store.loaded) == ["a5"] and store.evictions == 2  # a5 (320 B) pushed out a3, then a7
    store.ensure(["a3"])
    assert list(store.loaded) == ["a5", "a3"] and store.reloads == 1 and store.loaded_bytes == (5 + 3) * 64
    store.ensure(["a7"])  # least recently used first: a5 goes, a3 stays
    assert list(store.loaded) == ["a3", "a7"]
    with pytest.raises(ValueError, match="do not fit the budget"):
        store.ensure(["a5", "a7"])
    with pytest.raises(UnknownAdapter, match="'zz' is not served"):
        store.ensure(["zz"])
    with pytest.raises(ValueError, match="already served"):
        store.register("a3", str(folder / "a3"))
    store.unload("a3")
    assert "a3" not in store and list(store.loaded) == ["a7"]


def test_engine_mixed_batch_equals_each_row_alone_on_a_decoder_only_model(make_model, tokenizer, tmp_path):
    """The serving engine on a causal LM (Llama): one mixed batch of rows for 2 adapters with different
    max_new_tokens gives every row the tokens `softprompt_ext.generate` gives it alone after set_adapter."""
    from softprompt_ext import generate
    from softprompt_ext.inference.serving.engine import Engine
    from softprompt_ext.inference.serving.scheduler import Job

    def scaled():
        base = make_model("llama")
        with torch.no_grad():
            for p in base.parameters():
                if p.dim() > 1:
                    p.mul_(3.0)
        return base.eval()

    with warnings.catch_warnings():  # PEFT's causal generate warning: this test uses softprompt_ext.generate
        warnings.simplefilter("ignore", UserWarning)
        trained = get_peft_model(scaled(), random_prompt_config("llama", 3, 1), adapter_name="p3")
    trained.add_adapter("p7", random_prompt_config("llama", 7, 2))
    trained.save_pretrained(str(tmp_path), selected_adapters=["p3", "p7"])
    engine = Engine(scaled(), tokenizer, precision="fp32")  # the rows alone below run fp32 too, on every CPU kind
    for name in ("p3", "p7"):
        engine.registry.register(name, str(tmp_path / name))
    rows = engine.encode(TEXTS)
    jobs = [Job("generate", name, ids, max_new_tokens=n)
            for ids, name, n in zip(rows, ["p3", "p7", "p7", "p3"], [5, 3, 6, 4], strict=True)]
    served = engine.run("generate", jobs)
    assert max(len(out.token_ids) for out in served) >= 2  # not a trivial all-EOS comparison
    trained.eval()
    for job, out in zip(jobs, served, strict=True):
        trained.set_adapter(job.adapter)
        ids = torch.tensor([job.input_ids])
        alone = generate(trained, ids, torch.ones_like(ids), max_new_tokens=job.max_new_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
        eos = tokenizer.eos_token_id
        expected = alone[: alone.index(eos)] if eos in alone else alone
        assert out.token_ids == expected and out.finished == (eos in alone)
    scores = engine.run("classify", [Job("classify", "p7", rows[0], label_ids=engine.encode_labels(["a ship", "rain"]))])
    assert len(scores[0]) == 2 and all(s < 0 for s in scores[0])


# ---------------------------------------------------------------------------------------------- engine process
def _engine_pids(pid: int) -> list[int]:
    """The server's engine process: its child processes running multiprocessing's spawn entry point."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            for child in f.read().split():
                with open(f"/proc/{child}/cmdline", "rb") as cmd:
                    if b"spawn_main" in cmd.read():
                        found.append(int(child))
    return found


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":  # exited, not yet reaped
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the engine process")
def test_the_model_runs_in_its_own_process_and_answers_as_in_process(server, assets):
    """`serve`'s default puts the engine in a child process; `--engine-in-process` keeps it in a worker thread.
    Both answer the same requests with the same tokens."""
    assert server.get("/health").json()["engine"] == "process"
    assert len(_engine_pids(server.proc.pid)) == 1
    srv = Server(["--base", assets["base"], "--adapter", assets["folder"], "--engine-in-process", "--max-tokens", "32"],
                 assets["root"] / "thread.log")
    try:
        assert srv.get("/health").json()["engine"] == "thread" and _engine_pids(srv.proc.pid) == []
        for name in ("a3", "a7"):
            body = {"model": name, "prompt": TEXTS, "max_tokens": 12}
            texts = [c["text"] for c in srv.post("/v1/completions", body).json()["choices"]]
            assert texts == [c["text"] for c in server.post("/v1/completions", body).json()["choices"]]
    finally:
        assert srv.stop() in CLEAN_EXIT


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the engine process")
def test_a_dead_engine_fails_requests_with_503_and_health_says_so(assets):
    """The engine process killed (out of memory, a crash): the waiting request and every later one get 503
    naming the engine process, `/health` turns 503, and the HTTP process still shuts down cleanly."""
    srv = Server(["--base", assets["base"], "--adapter", assets["folder"], "--max-batch-size", "1",
                  "--request-timeout", "120"], assets["root"] / "dead.log")
    try:
        (engine,) = _engine_pids(srv.proc.pid)
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(srv.post, "/v1/completions", {"model": "a3", "prompt": TEXTS, "max_tokens": 200})
            assert _wait_for(lambda: srv.get("/health").json()["queue_depth"] >= 1, 30)
            os.kill(engine, signal.SIGKILL)
            _error(waiting.result(), 503, "engine process exited")
        _error(srv.post("/v1/completions", {"model": "a3", "prompt": "x", "max_tokens": 2}), 503, "engine process")
        health = srv.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "engine_exited"
    finally:
        assert srv.stop() in CLEAN_EXIT


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the engine process")
def test_the_engine_process_never_outlives_the_server(assets):
    """The HTTP process killed without a chance to clean up: the engine sees its pipe close and exits."""
    srv = Server(["--base", assets["base"], "--adapter", assets["folder"]], assets["root"] / "orphan.log")
    (engine,) = _engine_pids(srv.proc.pid)
    srv.proc.kill()
    srv.proc.wait()
    assert _gone(engine, 30)


def test_ctrl_c_drains_the_engine_too(assets):
    """Ctrl-C reaches the whole process group, engine included: the engine ignores it and the HTTP process
    drains it, so the request in flight still gets its answer."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    log = assets["root"] / "sigint.log"
    proc = subprocess.Popen([sys.executable, "-m", "softprompt_ext", "serve", "--port", str(port), "--base",
                             assets["base"], "--adapter", assets["folder"], "--max-batch-size", "1"],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        assert _wait_for(lambda: _healthy(url), 120), log.read_text()[-3000:]
        with ThreadPoolExecutor(2) as pool:
            inflight = [pool.submit(httpx.post, url + "/v1/completions", timeout=60,
                                    json={"model": m, "prompt": TEXTS[0], "max_tokens": 120}) for m in ("a3", "a7")]
            assert _wait_for(lambda: httpx.get(url + "/health").json()["queue_depth"] >= 1, 30)
            os.killpg(proc.pid, signal.SIGINT)
            results = [f.result() for f in inflight]
        assert [r.status_code for r in results] == [200, 200], [r.text for r in results]
        assert proc.wait(60) in (0, -signal.SIGINT)
        assert "Application shutdown complete" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_base_that_fails_to_load_ends_the_server_with_its_message(tmp_path):
    """The engine process cannot load the base model: `serve` exits non-zero with the loader's message."""
    missing = tmp_path / "no-such-model"
    out = subprocess.run([sys.executable, "-m", "softprompt_ext", "serve", "--base", str(missing), "--port", "1"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert out.returncode != 0
    assert str(missing) in out.stderr + out.stdout
