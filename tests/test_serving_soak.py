"""A hostile soak of `softprompt serve`: well-formed requests mixed with every attack the hardening answers
(`test_serving_hardening.py` pins each one alone), against one server process on 127.0.0.1 (tiny Llama, fp32).

Asserts: every good request answered, with the text and token count of the same request sent alone before
the soak; every attack refused with its 4xx; `/health` under 1 s throughout; the resident memory of both
processes (HTTP and engine) back within `RSS_MARGIN_MB` of where it started. Bounded: `ROUNDS` rounds of every
attack and `GOOD` good requests per round, a few dozen seconds on 2 cores. Prints its numbers (`pytest -s`).
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from test_serving_hardening import PROMPTS, Server, engine_pid, hardening_assets  # noqa: E402

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for memory")]
ROUNDS = 3
GOOD = 12
RSS_MARGIN_MB = 64


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """The hardening assets plus adapters the strict reader refuses (pickle-only, truncated weights)."""
    root = hardening_assets(tmp_path_factory.mktemp("soak"))
    bad = Path(root["served"]) / "bad"
    shutil.copytree(Path(root["folder"]) / "p3", bad / "pickle")
    (bad / "pickle" / "adapter_model.safetensors").rename(bad / "pickle" / "adapter_model.bin")
    shutil.copytree(Path(root["folder"]) / "p3", bad / "truncated")
    weights = bad / "truncated" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])
    return {**root, "bad": bad}


def attacks(url: str, port: int, assets: dict) -> list:
    """`(name, call)` pairs; each call returns the HTTP status it got (None: the connection was closed)."""

    def post(path, body=None, content=None, timeout=60):
        if content is not None:
            return httpx.post(url + path, content=content, timeout=timeout,
                              headers={"content-type": "application/json"}).status_code
        return httpx.post(url + path, json=body, timeout=timeout).status_code

    def raw(data: bytes, wait_s: float, read: bool = True):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(data)
            time.sleep(wait_s)
            if not read:
                return None
            s.settimeout(10)
            line = s.recv(100).split(b"\r\n")[0]
            return int(line.split()[1]) if line else None

    leave = json.dumps({"model": "p3", "prompt": "the cat", "max_tokens": 64}).encode()
    leave_head = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(leave)}\r\n\r\n").encode()
    return [
        ("modules_to_save", lambda: post("/admin/adapters", {"name": "evil", "source": assets["evil"]})),
        ("body over the limit", lambda: post("/v1/completions", content=json.dumps(
            {"model": "p3", "prompt": "x" * 300_000}).encode())),
        ("10,000 prompts", lambda: post("/v1/completions", {"model": "p3", "prompt": ["x"] * 10_000})),
        ("20,000 token ids", lambda: post("/v1/completions", {"model": "p3", "prompt": [5] * 20_000})),
        ("surrogate prompt", lambda: post("/v1/completions", content=b'{"model": "p3", "prompt": "\\ud800"}')),
        ("surrogate label", lambda: post("/v1/classify", content=b'{"model": "p3", "input": "x", '
                                         b'"labels": ["\\ud800"]}')),
        ("invalid UTF-8", lambda: post("/v1/completions", content=b'{"model": "p3", "prompt": "\xff"}')),
        ("many labels", lambda: post("/v1/classify", {"model": "p3", "input": "x", "labels": ["a"] * 100})),
        ("long label", lambda: post("/v1/classify", {"model": "p3", "input": "x", "labels": ["the cat " * 100]})),
        ("100 kB model name", lambda: post("/v1/completions", {"model": "m" * 100_000, "prompt": "x"})),
        ("load outside the root", lambda: post("/admin/adapters", {"name": "o1", "source": assets["outside"]})),
        ("load through ..", lambda: post("/admin/adapters", {"name": "o2",
                                                             "source": assets["served"] + "/../outside"})),
        ("load through a symlink", lambda: post("/admin/adapters", {"name": "o3",
                                                                    "source": assets["served"] + "/link"})),
        ("refused load, 5 kB source", lambda: post("/admin/adapters", {"name": "big", "source": "a" * 5000})),
        ("pickle weights", lambda: post("/admin/adapters", {"name": "pk", "source": str(assets["bad"] / "pickle")})),
        ("truncated weights", lambda: post("/admin/adapters", {"name": "tr",
                                                               "source": str(assets["bad"] / "truncated")})),
        ("headers never finished", lambda: raw(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n", 0.1)),
        ("non-streaming client leaves", lambda: raw(leave_head + leave, 0.3, read=False)),
    ]


EXPECTED = {"modules_to_save": 422, "body over the limit": 413, "10,000 prompts": 400, "20,000 token ids": 400,
            "surrogate prompt": 400, "surrogate label": 400, "invalid UTF-8": 400, "many labels": 400,
            "long label": 400, "100 kB model name": 404, "load outside the root": 403, "load through ..": 403,
            "load through a symlink": 403, "refused load, 5 kB source": 422, "pickle weights": 422,
            "truncated weights": 422, "headers never finished": None, "non-streaming client leaves": None}


def test_hostile_soak(assets, tmp_path):
    srv = Server(["--base", assets["base"], "--adapter", assets["folder"], "--adapter-root", assets["served"],
                  "--max-input-tokens", "40", "--max-tokens", "64", "--max-request-bytes", "200000",
                  "--max-input-chars", "2000", "--max-labels", "16", "--max-queue", "64", "--read-timeout", "2"],
                 tmp_path / "soak.log")
    try:
        engine = engine_pid(srv.proc.pid)
        good = [{"model": name, "prompt": text + suffix, "max_tokens": 12}
                for name, text in PROMPTS for suffix in ("", " again", " and more", " once")]
        alone = {i: srv.post("/v1/completions", body).json()["choices"][0] for i, body in enumerate(good)}
        rss_start = {"http": rss_mb(srv.proc.pid), "engine": rss_mb(engine)}

        health, stop = [], threading.Event()

        def probe():
            while not stop.is_set():
                start = time.perf_counter()
                code = httpx.get(srv.url + "/health", timeout=5).status_code
                health.append((time.perf_counter() - start, code))
                time.sleep(0.05)

        prober = threading.Thread(target=probe)
        prober.start()
        rows = attacks(srv.url, srv.port, assets)
        got_attacks, got_good = [], []
        started = time.perf_counter()
        try:
            with ThreadPoolExecutor(6) as pool:
                for _ in range(ROUNDS):
                    futures = [(name, pool.submit(call)) for name, call in rows]
                    goods = [(i % len(good), pool.submit(srv.post, "/v1/completions", good[i % len(good)]))
                             for i in range(GOOD)]
                    got_attacks += [(name, f.result()) for name, f in futures]
                    got_good += [(i, f.result()) for i, f in goods]
        finally:
            stop.set()
            prober.join()
        seconds = time.perf_counter() - started
        time.sleep(1.0)
        rss_end = {"http": rss_mb(srv.proc.pid), "engine": rss_mb(engine)}
        print(f"\nsoak: {ROUNDS} rounds x ({len(rows)} attacks + {GOOD} good) in {seconds:.1f} s; "
              f"/health max {max(t for t, _ in health) * 1000:.0f} ms over {len(health)} probes; "
              f"RSS MB start {rss_start} end {rss_end}")
        for name, status in got_attacks:
            assert status == EXPECTED[name], (name, status)
        for i, response in got_good:
            assert response.status_code == 200, response.text[:300]
            choice = response.json()["choices"][0]
            assert (choice["text"], choice["finish_reason"]) == (alone[i]["text"], alone[i]["finish_reason"])
        assert all(code == 200 for _, code in health) and max(t for t, _ in health) < 1.0
        for side in ("http", "engine"):
            assert rss_end[side] < rss_start[side] + RSS_MARGIN_MB, (side, rss_start, rss_end)
        assert len(srv.get("/health").content) < 32 * 450
        assert "evil" not in [m["id"] for m in srv.get("/v1/models").json()["data"]]
    finally:
        srv.stop()


def test_the_largest_requests_with_default_limits(tmp_path):
    """The largest requests of the attack pass against a server with the default limits: each refused in well
    under a second, with an error body of a few hundred bytes, and both processes' memory flat."""
    from serving_assets import causal_assets

    assets = causal_assets(tmp_path)
    srv = Server(["--base", assets["base"], "--adapter", assets["folder"]], tmp_path / "defaults.log")
    try:
        engine = engine_pid(srv.proc.pid)
        start = {"http": rss_mb(srv.proc.pid), "engine": rss_mb(engine)}
        rows = [("50 MB prompt", "/v1/completions", {"model": "p3", "prompt": "x " * 25_000_000}, 413),
                ("100,000 prompts", "/v1/completions", {"model": "p3", "prompt": ["a cat"] * 100_000}, 400),
                ("10^6 token ids", "/v1/completions", {"model": "p3", "prompt": [5] * 1_000_000}, 413),
                ("1 MB model name", "/v1/completions", {"model": "m" * 1_000_000, "prompt": "x"}, 404),
                ("20,000 labels", "/v1/classify", {"model": "p3", "input": "x", "labels": ["a"] * 20_000}, 400)]
        for name, path, body, status in rows:
            data = json.dumps(body).encode()
            began = time.perf_counter()
            response = httpx.post(srv.url + path, content=data, headers={"content-type": "application/json"},
                                  timeout=300)
            print(f"\n{name}: {response.status_code} after {time.perf_counter() - began:.3f} s, "
                  f"error body {len(response.content)} bytes")
            assert response.status_code == status and len(response.content) < 1000, (name, response.text[:300])
        end = {"http": rss_mb(srv.proc.pid), "engine": rss_mb(engine)}
        print(f"RSS MB start {start} end {end}")
        for side in ("http", "engine"):
            assert end[side] < start[side] + RSS_MARGIN_MB, (side, start, end)
    finally:
        srv.stop()
