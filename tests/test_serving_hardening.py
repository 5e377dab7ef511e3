"""`softprompt serve` under hostile input, each case on a real server process (127.0.0.1, tiny models, fp32):
an adapter that would change other tenants' answers, oversized and malformed bodies, invalid Unicode, clients
that leave, admin loads outside the adapter roots, slow connections, a slow Hub, a killed engine, the demo's
temporary folder. Every answer is OpenAI's error object with a 4xx (or the documented 5xx), of bounded size.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from serving_assets import ServerProcess, causal_assets  # noqa: E402

pytestmark = pytest.mark.slow
TEXTS = ["the cat sat on the mat", "a ship", "rain falls from dark clouds in the cold season"]
PROMPTS = [("p3", TEXTS[0]), ("p7", TEXTS[1]), ("p5", TEXTS[2])]


class Server(ServerProcess):
    """`serving_assets.ServerProcess` with request helpers that can send raw bytes."""

    def post(self, path: str, body=None, content: bytes | None = None, **kwargs):
        if content is not None:
            return httpx.post(self.url + path, content=content, timeout=60,
                              headers={"content-type": "application/json"}, **kwargs)
        return httpx.post(self.url + path, json=body, timeout=60, **kwargs)

    def get(self, path: str):
        return httpx.get(self.url + path, timeout=60)


def error(response, status: int, *needles: str) -> dict:
    """The OpenAI error object of `response`, checked: status, shape, bounded size, each needle in the message."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert len(response.content) < 2000, len(response.content)
    body = response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"} and body["code"] == status
    for needle in needles:
        assert needle in body["message"], (needle, body["message"])
    return body


def engine_pid(pid: int) -> int:
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            for child in f.read().split():
                with open(f"/proc/{child}/cmdline", "rb") as cmd:
                    if b"spawn_main" in cmd.read():
                        return int(child)
    raise AssertionError("no engine process")


def hardening_assets(root: Path) -> dict:
    """The causal assets under `root/served` (the adapter root); `evil`: a prompt adapter with
    `modules_to_save: ["lm_head"]` (a finite head of the right shape, which the strict reader accepts);
    `outside`: an adapter directory outside the root, and `served/link` a symlink to it."""
    import shutil

    import torch
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    served = root / "served"
    served.mkdir()
    causal = causal_assets(served)
    base = AutoModelForCausalLM.from_pretrained(causal["base"], dtype=torch.float32)
    config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, modules_to_save=["lm_head"])
    evil = get_peft_model(base, config)
    with torch.no_grad():
        evil.base_model.lm_head.modules_to_save["default"].weight.mul_(-1.0)
    evil.save_pretrained(served / "evil")
    outside = root / "outside"
    shutil.copytree(Path(causal["folder"]) / "p3", outside)
    os.symlink(outside, served / "link")  # a symlink inside the root to a directory outside it
    return {"root": root, "served": str(served), **causal, "evil": str(served / "evil"), "outside": str(outside)}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return hardening_assets(tmp_path_factory.mktemp("harden"))


@pytest.fixture(scope="module")
def server(assets):
    srv = Server(["--base", assets["base"], "--adapter", assets["folder"], "--adapter-root", str(assets["served"]),
                  "--max-input-tokens", "40", "--max-tokens", "64", "--max-request-bytes", "200000",
                  "--max-input-chars", "2000", "--max-labels", "16", "--max-queue", "64"],
                 assets["root"] / "server.log")
    yield srv
    srv.stop()


def answers(server) -> list:
    """Every adapter's greedy answer with log-probabilities, and a classification (the other tenants)."""
    out = [server.post("/v1/completions", {"model": name, "prompt": text, "max_tokens": 8, "logprobs": 2}).json()
           ["choices"] for name, text in PROMPTS]
    out.append(server.post("/v1/classify", {"model": "p7", "input": TEXTS, "labels": ["cat", "ship"]}).json()["data"])
    return out


# ---------------------------------------------------------------------------------------------- tenants
def test_an_adapter_with_modules_to_save_is_refused_and_changes_nobody(server, assets):
    before = answers(server)
    body = error(server.post("/admin/adapters", {"name": "evil", "source": assets["evil"]}), 422,
                 "modules_to_save", "lm_head")
    assert body["param"] == "modules_to_save"
    assert "evil" not in [m["id"] for m in server.get("/v1/models").json()["data"]]
    error(httpx.delete(server.url + "/admin/adapters/evil", timeout=10), 404)  # nothing half-registered
    good = server.post("/admin/adapters", {"name": "evil", "source": str(Path(assets["folder"]) / "p3")})
    assert good.status_code == 201, good.text
    assert httpx.delete(server.url + "/admin/adapters/evil", timeout=10).status_code == 200
    assert answers(server) == before  # bit-identical: the same JSON floats


def test_a_t5_adapter_with_modules_to_save_is_refused_too(tmp_path):
    """The same on an encoder-decoder base: the T5 adapter's answers and classification unchanged."""
    import torch
    from peft import PromptTuningConfig, get_peft_model
    from serving_assets import t5_assets
    from transformers import AutoModelForSeq2SeqLM

    t5 = t5_assets(tmp_path)
    base = AutoModelForSeq2SeqLM.from_pretrained(t5["base"], dtype=torch.float32)
    evil = get_peft_model(base, PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4,
                                                   modules_to_save=["lm_head"]))
    with torch.no_grad():
        evil.base_model.lm_head.modules_to_save["default"].weight.mul_(-1.0)
    evil.save_pretrained(tmp_path / "evil")
    srv = Server(["--base", t5["base"], "--adapter", t5["folder"], "--adapter-root", str(tmp_path)],
                 tmp_path / "t5.log")
    try:
        def answers():
            return [srv.post("/v1/completions", {"model": "t3", "prompt": TEXTS[0], "max_tokens": 8,
                                                 "logprobs": 2}).json()["choices"],
                    srv.post("/v1/classify", {"model": "t3", "input": TEXTS, "labels": ["cat", "ship"]}).json()["data"]]

        before = answers()
        error(srv.post("/admin/adapters", {"name": "evil", "source": str(tmp_path / "evil")}), 422, "modules_to_save")
        assert answers() == before
    finally:
        srv.stop()


# ---------------------------------------------------------------------------------------------- bounds
def test_a_body_over_the_limit_is_413_and_read_no_further(server):
    huge = json.dumps({"model": "p3", "prompt": "x" * 300_000}).encode()
    error(server.post("/v1/completions", content=huge), 413, "--max-request-bytes")
    # a chunked body (no Content-Length) is cut off once it passes the limit
    chunks = (b"x" * 50_000 for _ in range(100))
    error(httpx.post(server.url + "/v1/completions", content=chunks, timeout=60), 413, "--max-request-bytes")
    assert server.get("/health").status_code == 200


def test_cheap_bounds_come_before_tokenising(server):
    error(server.post("/v1/completions", {"model": "p3", "prompt": "a b " * 1500}), 400, "--max-input-chars")
    error(server.post("/v1/completions", {"model": "p3", "prompt": ["x"] * 10_000}), 400, "--max-queue")
    error(server.post("/v1/completions", {"model": "p3", "prompt": [5] * 20_000}), 400, "--max-input-tokens")
    error(server.post("/v1/classify", {"model": "p3", "input": "x", "labels": [f"l{i}" for i in range(100)]}),
          400, "--max-labels")
    error(server.post("/v1/classify", {"model": "p3", "input": "x", "labels": ["the cat " * 100]}), 400,
          "labels[0]", "--max-input-tokens")
    error(server.post("/v1/classify", {"model": "p3", "input": ["x"] * 1000, "labels": ["a"]}), 400, "--max-queue")
    error(server.post("/tokenize", {"prompt": "y" * 5000}), 400, "--max-input-chars")


def test_errors_never_echo_large_inputs(server):
    body = error(server.post("/v1/completions", {"model": "m" * 100_000, "prompt": "x"}), 404, "is not served")
    assert "m" * 100 not in body["message"] and "..." in body["message"]
    error(server.post("/v1/completions", {"model": "p3", "prompt": [[1, "a"] * 10_000]}), 422, "more")


def test_health_stays_small_after_many_refused_loads(server):
    for i in range(40):
        error(server.post("/admin/adapters", {"name": f"gone{i}", "source": "a" * 5000}), 422)
    health = server.get("/health")
    assert health.status_code == 200 and len(health.content) < 32 * 450, len(health.content)


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(("path", "raw", "param"), [
    ("/v1/completions", '{"model": "p3", "prompt": "a \\ud800 b"}', "prompt"),
    ("/v1/completions", '{"model": "p3", "prompt": ["ok", "\\udfff"]}', "prompt"),
    ("/v1/completions", '{"model": "p\\ud800", "prompt": "x"}', "model"),
    ("/v1/completions", '{"model": "p3", "prompt": "x", "stop": ["\\ud800"]}', "stop"),
    ("/v1/classify", '{"model": "p3", "input": "x", "labels": ["a", "\\ud800"]}', "labels"),
    ("/v1/classify", '{"model": "p3", "input": ["\\ud800"], "labels": ["a"]}', "input"),
    ("/v1/chat/completions", '{"model": "p3", "messages": [{"role": "user", "content": "\\ud800"}]}', "messages"),
    ("/tokenize", '{"prompt": "\\ud800"}', "prompt"),
])
def test_lone_surrogates_are_a_400_naming_the_field(server, path, raw, param):
    body = error(server.post(path, content=raw.encode()), 400, "surrogate")
    assert body["param"] == param


def test_invalid_utf8_bodies_are_a_4xx_in_openai_shape(server):
    response = server.post("/v1/completions", content=b'{"model": "p3", "prompt": "\xff\xfe"}')
    assert 400 <= response.status_code < 500
    error(response, response.status_code)
    assert server.get("/health").status_code == 200


# ---------------------------------------------------------------------------------------------- leaving
def _metric(server, name: str) -> float:
    for line in server.get("/metrics").text.splitlines():
        if line.startswith(name):
            return float(line.split()[-1])
    return 0.0


def test_a_non_streaming_client_that_leaves_stops_its_rows(assets, tmp_path):
    """8 clients ask for 2,000 tokens each (EOS forbidden) and close their connections: the rows leave the
    batch at the next steps instead of decoding to the end (16,000 row-steps)."""
    from transformers import AutoTokenizer

    eos = AutoTokenizer.from_pretrained(assets["base"]).eos_token_id
    srv = Server(["--base", assets["base"], "--adapter", assets["folder"], "--max-tokens", "2000",
                  "--max-input-tokens", "40", "--request-timeout", "600"], tmp_path / "leave.log")
    try:
        request = json.dumps({"model": "p3", "prompt": TEXTS[0], "max_tokens": 2000,
                              "logit_bias": {str(eos): -100}}).encode()
        head = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(request)}\r\n\r\n").encode()
        clients = []
        for _ in range(8):
            s = socket.create_connection(("127.0.0.1", srv.port))
            s.sendall(head + request)
            clients.append(s)
        deadline = time.monotonic() + 30
        while _metric(srv, "softprompt_running_rows") < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _metric(srv, "softprompt_running_rows") == 8
        for s in clients:
            s.close()
        at_close = _metric(srv, 'softprompt_batch_size_sum{kind="generate"}')
        deadline = time.monotonic() + 30
        while _metric(srv, "softprompt_running_rows") > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        after = _metric(srv, 'softprompt_batch_size_sum{kind="generate"}')
        assert _metric(srv, "softprompt_running_rows") == 0
        print(f"\nrow-steps after 8 clients closed: {after - at_close:.0f} (at the close: {at_close:.0f})")
        assert after - at_close < 8 * 200, (at_close, after)  # vs. up to 16,000 row-steps decoded for nobody
    finally:
        srv.stop()


# ---------------------------------------------------------------------------------------------- roots
def test_admin_loads_are_confined_to_the_adapter_roots(server, assets):
    refusals = []
    for source in (assets["outside"], str(Path(assets["served"]) / ".." / "outside"), "/etc",
                   str(Path(assets["served"]) / "link"), "/no/such/place", "../../x"):
        body = error(server.post("/admin/adapters", {"name": "x1", "source": source}), 403, "adapter root")
        refusals.append(body["message"].split(" is not inside")[1])
    assert len(set(refusals)) == 1  # one message: nothing tells a file from a directory from a missing path
    error(server.post("/admin/adapters", {"name": "x1", "source": str(Path(assets["folder"]) / "p3"),
                                          "subfolder": "../../outside"}), 403, "subfolder")
    models = server.get("/v1/models").json()["data"]
    assert models and all("source" not in m for m in models)
    assert assets["folder"] not in server.get("/v1/models").text


def test_slow_and_idle_connections_are_closed(assets, tmp_path):
    srv = Server(["--base", assets["base"], "--adapter", assets["folder"], "--read-timeout", "1",
                  "--timeout-keep-alive", "1"], tmp_path / "slow.log")
    try:
        silent = socket.create_connection(("127.0.0.1", srv.port))
        partial = socket.create_connection(("127.0.0.1", srv.port))
        partial.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        body = socket.create_connection(("127.0.0.1", srv.port))
        body.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"model\"")  # a body that never arrives
        for s in (silent, partial, body):
            s.settimeout(10)
        assert silent.recv(100) == b"" and partial.recv(100) == b""  # closed by the server
        assert b" 408 " in body.recv(1000).split(b"\r\n")[0]
        for s in (silent, partial, body):
            s.close()
        assert srv.get("/health").status_code == 200
    finally:
        srv.stop()


# ---------------------------------------------------------------------------------------------- engine
def test_a_slow_hub_load_does_not_hold_other_adapters(assets, tmp_path):
    """An admin load of a Hub id whose Hub never answers runs beside the engine: another adapter's completion
    takes about what it takes with no load in flight."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)  # accepts connections, never answers
    env = {"HF_HUB_OFFLINE": None, "HF_ENDPOINT": f"http://127.0.0.1:{listener.getsockname()[1]}",
           "HF_HUB_ETAG_TIMEOUT": "8", "HF_HUB_DOWNLOAD_TIMEOUT": "8", "HF_HUB_DISABLE_TELEMETRY": "1"}
    srv = Server(["--base", assets["base"], "--adapter", assets["folder"]], tmp_path / "hub.log", env=env)
    body = {"model": "p5", "prompt": TEXTS[2], "max_tokens": 16}

    def timed() -> float:
        start = time.perf_counter()
        assert srv.post("/v1/completions", body).status_code == 200
        return time.perf_counter() - start

    try:
        timed()
        alone = sorted(timed() for _ in range(5))[2]
        with ThreadPoolExecutor(1) as pool:
            load = pool.submit(srv.post, "/admin/adapters", {"name": "remote", "source": "someone/remote-prompt"})
            time.sleep(0.5)
            during = [timed() for _ in range(5)]
            assert not load.done()  # the load was in flight the whole time
            assert 400 <= load.result().status_code < 500
        print(f"\ncompletion alone (median of 5) {alone * 1000:.0f} ms; during the slow Hub load "
              f"{[round(t * 1000) for t in during]} ms")
        assert max(during) < alone + 1.0, (alone, during)
    finally:
        srv.stop()
        listener.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the engine process")
def test_the_engine_exit_message_names_the_signal(assets, tmp_path):
    srv = Server(["--base", assets["base"], "--adapter", assets["folder"]], tmp_path / "killed.log")
    try:
        os.kill(engine_pid(srv.proc.pid), signal.SIGKILL)
        deadline = time.monotonic() + 20
        while srv.get("/health").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        error(srv.post("/v1/completions", {"model": "p3", "prompt": "x", "max_tokens": 2}), 503,
              "killed by signal 9 (SIGKILL)")
    finally:
        srv.stop()


def test_the_demo_removes_its_folder(tmp_path):
    temp = tmp_path / "tmp"
    temp.mkdir()
    srv = Server(["--demo"], tmp_path / "demo.log", env={"TMPDIR": str(temp)}, timeout_s=300)
    try:
        assert [p.name for p in temp.iterdir() if p.name.startswith("softprompt-demo-")]
    finally:
        srv.stop()
    assert not [p for p in temp.iterdir() if p.name.startswith("softprompt-demo-")], srv.log.read_text()[-2000:]


def test_health_answers_while_a_large_request_is_tokenised(server):
    """Tokenising runs beside the event loop: `/health` answers while 64 prompts of 2,000 characters are."""
    body = {"model": "p3", "prompt": ["word " * 399] * 64, "max_tokens": 1}
    stop = threading.Event()
    seen = []

    def probe():
        while not stop.is_set():
            start = time.perf_counter()
            assert server.get("/health").status_code == 200
            seen.append(time.perf_counter() - start)

    thread = threading.Thread(target=probe)
    thread.start()
    try:
        error(server.post("/v1/completions", body), 400, "--max-input-tokens")
    finally:
        stop.set()
        thread.join()
    assert seen and max(seen) < 1.0, seen


def test_a_hub_adapter_is_read_beside_the_engine_and_served_from_its_download(assets, tmp_path):
    """An admin load of a Hub id (a Hub-compatible server on 127.0.0.1): read and downloaded beside the engine,
    then loaded from the downloaded files; it answers as the same adapter loaded from its directory."""
    from hub_server import HubServer, Repo

    folder = Path(assets["folder"]) / "p7"
    with HubServer() as hub:
        repo = Repo("tester/p7", "model")
        hub.repos[("model", "tester/p7")] = repo
        repo.commit({p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}, "the adapter")
        env = {"HF_HUB_OFFLINE": None, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"),
               "HF_HUB_DISABLE_TELEMETRY": "1"}
        srv = Server(["--base", assets["base"], "--adapter", assets["folder"]], tmp_path / "hub_ok.log", env=env)
        try:
            loaded = srv.post("/admin/adapters", {"name": "remote", "source": "tester/p7"})
            assert loaded.status_code == 201, loaded.text
            body = {"prompt": TEXTS[1], "max_tokens": 8, "logprobs": 1}
            remote = srv.post("/v1/completions", {"model": "remote", **body}).json()["choices"]
            local = srv.post("/v1/completions", {"model": "p7", **body}).json()["choices"]
            assert remote == local
        finally:
            srv.stop()
