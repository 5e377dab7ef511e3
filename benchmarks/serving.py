"""Benchmark: `softprompt serve` under concurrent load, continuous mixed-adapter batching against baselines.

Lester et al. (2021), section 6: one frozen model serves many tasks, and a batch may mix them. Real server
processes (uvicorn on 127.0.0.1, loopback only) serve K=8 prompt adapters (random-uniform prompts, P cycling
10/20/30; nothing is downloaded) on two bases: the embedded LM-adapted T5, and a decoder-only Llama-shaped
model with random weights built here (d_model 256, 4 layers, the offline tiny tokenizer). Variants:

* `continuous` -- the default: iteration-level batching (rows of any adapters join and leave the running
  batch between decoding steps); on the decoder-only base each adapter's prompt keys/values are computed once
  (prefix cache). The model runs in an engine process of its own, as in every variant below but the next.
* `engine_thread` -- `--engine-in-process`: the same, with the model in a worker thread of the HTTP process
  (what the engine process buys).
* `no_prefix_cache` (decoder-only only) -- `--no-prefix-cache`: the same, with the prompt prefilled per request.
* `mixed` -- `--batching mixed`: one batch at a time, any adapters (`mixed_generate`).
* `per_adapter` -- `--batching per-adapter`: each batch holds one adapter and runs PEFT's own
  `set_adapter` + `generate` (grouping by adapter, the way PEFT serves several adapters).
* `serial` -- `--max-batch-size 1`: one request at a time.

Every server first answers the whole workload once, unmeasured (warm-up: each batch shape of the load has
then been through the kernels and allocator pools). Each round sends the same N requests (adapters in a
seeded random order, greedy, `max_tokens` 8) from C
concurrent closed-loop clients (one keep-alive `http.client` connection each: a load generator that costs
about 1 ms of CPU per request, so it leaves the cores to the server) to each server in turn, the order
rotating between rounds so machine load hits every variant alike. Reported per variant: throughput
(requests/s), p50 and p99 client-side latency, the server process's CPU seconds, medians over rounds; and the
ratio of each variant's time to `continuous`, paired within a round. Every request's text must be identical
across variants and rounds (greedy rows do not depend on their batch): the script fails otherwise.

Then, on the decoder-only base: the server's resident memory over `--memory-requests` (10,000) requests of
`continuous`; memory per adapter (server RSS with 8 adapters vs `--many-adapters` (1,000) more, and the bytes
of prompt weights and cached prefixes); and the cost of a cold adapter (one client, requests alternating
between two adapters with `--max-adapters 1`, so every request reloads its adapter from disk, against
requests to one resident adapter). A PNG of throughput per variant is written when matplotlib is installed.

Servers run one torch thread (`OMP_NUM_THREADS=1`), as the other benchmarks here, so that the idle servers do
not fight over a 2-core machine; only one server is under load at a time.

    python -m benchmarks.serving            # N=64 requests, C=16 clients, 3 rounds, 10,000-request memory run
    python -m benchmarks.serving --quick    # N=16, C=8, 1 round, 500-request memory run, 100 extra adapters
    python -m benchmarks.serving --rerender # results/serving/serving.md again from its serving.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from benchmarks.common import RESULTS, free_port, run_info, write_json, write_text

OUT = os.path.join(RESULTS, "serving")
VARIANTS = {
    "continuous": [],
    "engine_thread": ["--engine-in-process"],
    "no_prefix_cache": ["--no-prefix-cache"],
    "mixed": ["--batching", "mixed"],
    "per_adapter": ["--batching", "per-adapter"],
    "serial": ["--max-batch-size", "1", "--batching", "mixed"],
}
BASES = {"t5": "embedded LM-adapted T5 (t5-wordnet-lm-adapt)", "decoder": "Llama-shaped, random weights, d_model 256, 4 layers"}
NUM_ADAPTERS, PROMPT_LENGTHS, MAX_TOKENS = 8, (10, 20, 30), 8


def variants_for(base: str) -> list[str]:
    return [v for v in VARIANTS if base == "decoder" or v != "no_prefix_cache"]


def make_decoder_base(root: str) -> str:
    """A Llama-shaped causal LM (random weights, scaled so that it does not repeat one token) and the offline
    tiny tokenizer, saved under `root`; returns the directory."""
    import torch

    from softprompt_ext import tiny_models

    tokenizer = tiny_models.build_tokenizer()
    model = tiny_models.build_llama(len(tokenizer), d_model=256, num_layers=4, num_heads=4, seed=0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(3.0)
    model.save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


def load_base(base: str, folder: str | None):
    import torch

    if base == "t5":
        from softprompt_ext import default_model_and_tokenizer

        return default_model_and_tokenizer()[0], "SEQ_2_SEQ_LM"
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), "CAUSAL_LM"


def make_adapters(root: str, base: str, base_folder: str | None, count: int = NUM_ADAPTERS,
                  prefix: str = "task") -> list[str]:
    """`count` prompt adapters for `base` under `root`; returns their names."""
    from peft import get_peft_model

    from softprompt_ext import SoftPromptConfig

    model, task = load_base(base, base_folder)
    names = [f"{prefix}{k}" for k in range(count)]
    peft_model = None
    for k, name in enumerate(names):
        config = SoftPromptConfig(task_type=task, num_virtual_tokens=PROMPT_LENGTHS[k % 3],
                                  prompt_tuning_init="RANDOM_UNIFORM", init_range=0.5, init_seed=k,
                                  warn_if_not_lm_adapted=False)
        if peft_model is None:
            peft_model = get_peft_model(model, config, adapter_name=name)
        else:
            peft_model.add_adapter(name, config)
    assert peft_model is not None
    peft_model.save_pretrained(root, selected_adapters=names)
    return names


def workload(names: list[str], n: int, seed: int = 0) -> list[dict]:
    from softprompt_ext.tiny_models import _CORPUS

    rng = random.Random(seed)
    texts = [line for line in _CORPUS if line.strip()]
    return [{"model": rng.choice(names), "prompt": rng.choice(texts), "max_tokens": MAX_TOKENS} for _ in range(n)]


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (the server's HTTP process and its engine process)."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:  # exited meanwhile
            continue
    return pids


def _cpu_seconds(pid: int) -> float:
    """utime + stime of the server's process tree."""
    total = 0.0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _rss_mb(pid: int) -> float:
    """Resident memory of the server's process tree (the multiprocessing resource tracker included)."""
    total = 0.0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
        except (OSError, StopIteration):
            continue
    return total


def start_server(adapters: list[str], extra: list[str], log_path: str, base_folder: str | None = None,
                 timeout: float = 300) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "softprompt_ext", "serve", "--port", str(port), "--max-wait-ms", "5",
               "--log-level", "warning"]
    for folder in adapters:
        command += ["--adapter", folder]
    if base_folder is not None:
        command += ["--base", base_folder]
    proc = subprocess.Popen(command + extra, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {open(log_path).read()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


def stop_servers(servers) -> None:
    for proc, _ in servers:
        proc.send_signal(signal.SIGTERM)
    for proc, _ in servers:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def run_load(url: str, requests: list[dict], clients: int, on_done=None) -> dict:
    """Send `requests` from `clients` closed-loop threads; texts in request order, latencies, and the CPU time
    this (client) process spent. `on_done(k)` is called (under a lock) after the k-th response.

    Each client is the standard library's `http.client` on one keep-alive connection: the load generator shares
    the machine's cores with the server, so it must cost little (measured on this 2-core machine: about 1 ms of
    client CPU per request, against about 13 ms with one `httpx.Client` per thread)."""
    import http.client
    from urllib.parse import urlsplit

    where = urlsplit(url)
    texts: list[str | None] = [None] * len(requests)
    latencies: list[float] = [0.0] * len(requests)
    cursor = iter(range(len(requests)))
    lock = threading.Lock()
    done = [0]
    headers = {"Content-Type": "application/json"}

    def client() -> None:
        connection = http.client.HTTPConnection(where.hostname, where.port, timeout=120)
        try:
            while True:
                with lock:
                    i = next(cursor, None)
                if i is None:
                    return
                body = json.dumps(requests[i])
                start = time.perf_counter()
                connection.request("POST", "/v1/completions", body, headers)
                response = connection.getresponse()
                data = response.read()
                latencies[i] = time.perf_counter() - start
                if response.status != 200:
                    raise RuntimeError(f"request {i}: HTTP {response.status}: {data[:500]!r}")
                texts[i] = json.loads(data)["choices"][0]["text"]
                if on_done is not None:
                    with lock:
                        done[0] += 1
                        on_done(done[0])
        finally:
            connection.close()

    cpu, start = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client) for _ in range(clients)]:
            f.result()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    ordered = sorted(latencies)
    return {"wall_s": wall, "throughput_rps": len(requests) / wall, "p50_s": _quantile(ordered, 0.5),
            "p99_s": _quantile(ordered, 0.99), "client_cpu_s": cpu, "texts": texts}


def _quantile(ordered: list[float], q: float) -> float:
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def compare_variants(base: str, folder: str, base_folder: str | None, requests: list[dict], clients: int,
                     rounds: int, work: str) -> dict:
    """Every variant's server on `base`, the same requests in interleaved rounds; summary, ratios, identity."""
    names = variants_for(base)
    servers = {}
    try:
        for variant in names:
            servers[variant] = start_server([folder], VARIANTS[variant], os.path.join(work, f"{base}-{variant}.log"),
                                            base_folder)
        for _, url in servers.values():  # warm-up: one whole pass, so that every batch shape of the measured load
            run_load(url, requests, clients)  # has been through the kernels and allocator pools once
        samples: dict[str, list[dict]] = {v: [] for v in names}
        for r in range(rounds):
            for variant in names[r % len(names):] + names[: r % len(names)]:
                proc, url = servers[variant]
                cpu0, busy0 = _cpu_seconds(proc.pid), _busy_seconds(url)
                result = run_load(url, requests, clients)
                result["server_cpu_s"] = _cpu_seconds(proc.pid) - cpu0
                result["worker_busy"] = (_busy_seconds(url) - busy0) / result["wall_s"]  # model calls / wall
                samples[variant].append(result)
                print(f"{base:8} round {r + 1} {variant:16} {result['throughput_rps']:7.1f} req/s  p50 "
                      f"{result['p50_s']:.3f} s  p99 {result['p99_s']:.3f} s  server CPU {result['server_cpu_s']:.2f} s  "
                      f"worker busy {result['worker_busy']:.0%}",
                      flush=True)
    finally:
        stop_servers(servers.values())
    reference = samples["continuous"][0]["texts"]
    identical = all(s["texts"] == reference for runs in samples.values() for s in runs)
    summary = {variant: {key: statistics.median(s[key] for s in runs)
                         for key in ("throughput_rps", "p50_s", "p99_s", "wall_s", "server_cpu_s", "worker_busy", "client_cpu_s")}
               for variant, runs in samples.items()}
    ratios = {}
    for variant in names[1:]:
        paired = [b["wall_s"] / m["wall_s"] for b, m in zip(samples[variant], samples["continuous"], strict=True)]
        cpu = [b["server_cpu_s"] / m["server_cpu_s"] for b, m in zip(samples[variant], samples["continuous"], strict=True)]
        p99 = [b["p99_s"] / m["p99_s"] for b, m in zip(samples[variant], samples["continuous"], strict=True)]
        ratios[f"{variant}/continuous"] = {"time": statistics.median(paired), "min": min(paired), "max": max(paired),
                                           "server_cpu": statistics.median(cpu), "p99": statistics.median(p99)}
    return {"summary": summary, "ratios": ratios, "identical_tokens": identical,
            "rounds": {v: [{k: x for k, x in s.items() if k != "texts"} for s in runs] for v, runs in samples.items()}}


def in_process(base: str, folder: str, base_folder: str | None, names: list[str], requests: list[dict],
               clients: int, rounds: int) -> dict:
    """The same comparison without HTTP: an `Engine` and its `Scheduler` in this process, `clients` threads
    submitting jobs (closed loop). What batching alone buys, without the HTTP server's per-request cost."""
    import torch

    from softprompt_ext.inference.serving.engine import Engine
    from softprompt_ext.inference.serving.engine import load_base as load_served
    from softprompt_ext.inference.serving.scheduler import Job, Scheduler

    model, tokenizer = load_served(base_folder, "cpu")
    engines = {}
    for variant in [v for v in variants_for(base) if v != "engine_thread"]:  # no HTTP process here
        batching = {"continuous": "continuous", "no_prefix_cache": "continuous", "per_adapter": "per_adapter"}.get(
            variant, "mixed")
        engine = Engine(model, tokenizer, batching=batching, prefix_cache=variant != "no_prefix_cache")
        for name in names:
            engine.registry.register(name, os.path.join(folder, name))
        engines[variant] = engine
    inputs = [tokenizer(r["prompt"])["input_ids"] for r in requests]

    def run(variant: str) -> dict:
        engine = engines[variant]
        scheduler = Scheduler(engine.run, max_batch_size=1 if variant == "serial" else 32,
                              max_adapters=1 if variant == "per_adapter" else 64,
                              stepper=engine if engine.batching == "continuous" else None)
        scheduler.start()
        tokens: list = [None] * len(requests)
        cursor, lock = iter(range(len(requests))), threading.Lock()

        def client() -> None:
            while True:
                with lock:
                    i = next(cursor, None)
                if i is None:
                    return
                (future,) = scheduler.submit([Job("generate", requests[i]["model"], inputs[i], MAX_TOKENS)])
                tokens[i] = future.result().token_ids

        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            for f in [pool.submit(client) for _ in range(clients)]:
                f.result()
        wall = time.perf_counter() - start
        scheduler.stop()
        return {"wall_s": wall, "throughput_rps": len(requests) / wall, "tokens": tokens}

    with torch.no_grad():
        for variant in engines:
            run(variant)  # warm-up
        samples: dict[str, list[dict]] = {v: [] for v in engines}
        order = list(engines)
        for r in range(rounds):
            for variant in order[r % len(order):] + order[: r % len(order)]:
                samples[variant].append(run(variant))
    identical = all(s["tokens"] == samples["continuous"][0]["tokens"] for runs in samples.values() for s in runs)
    summary = {v: {"throughput_rps": statistics.median(s["throughput_rps"] for s in runs)} for v, runs in samples.items()}
    ratios = {f"{v}/continuous": statistics.median(b["wall_s"] / m["wall_s"] for b, m in
                                                  zip(samples[v], samples["continuous"], strict=True))
              for v in order[1:]}
    for v in order:
        print(f"{base:8} in process {v:16} {summary[v]['throughput_rps']:7.1f} req/s", flush=True)
    return {"summary": summary, "ratios": ratios, "identical_tokens": identical}


def memory_over_requests(folder: str, base_folder: str, names: list[str], total: int, clients: int, work: str) -> dict:
    """Server RSS (MB) every `total // 10` requests of the continuous server."""
    proc, url = start_server([folder], [], os.path.join(work, "memory.log"), base_folder)
    try:
        run_load(url, workload(names, 32, seed=1), clients)  # warm-up
        every = max(1, total // 10)
        samples = [(0, _rss_mb(proc.pid))]

        def on_done(k: int) -> None:
            if k % every == 0:
                samples.append((k, _rss_mb(proc.pid)))

        result = run_load(url, workload(names, total, seed=2), clients, on_done)
    finally:
        stop_servers([(proc, url)])
    rss = [mb for _, mb in samples]
    return {"requests": total, "rss_mb": samples, "first_mb": rss[0], "last_mb": rss[-1], "max_mb": max(rss),
            "growth_mb": rss[-1] - rss[0], "growth_second_half_mb": rss[-1] - rss[len(rss) // 2],
            "throughput_rps": result["throughput_rps"], "all_answered": all(t is not None for t in result["texts"])}


def adapter_memory(folder: str, base_folder: str, names: list[str], many: int, work: str) -> dict:
    """RSS of a server with the 8 adapters against one with `many` more (all resident), per adapter; plus what
    /metrics counts (prompt bytes) and the prefix-cache bytes after every adapter has been used."""
    import httpx

    many_root = os.path.join(work, "many-adapters")
    extra_names = make_adapters(many_root, "decoder", base_folder, count=many, prefix="extra")
    rows = {}
    for label, folders in (("few", [folder]), ("many", [folder, many_root])):
        proc, url = start_server(folders, ["--max-adapters", str(many + len(names) + 1)],
                                 os.path.join(work, f"adapters-{label}.log"), base_folder, timeout=900)
        try:
            served = names + (extra_names if label == "many" else [])
            run_load(url, [{"model": n, "prompt": "the cat", "max_tokens": 1} for n in served], 4)
            metrics = httpx.get(url + "/metrics").text
            rows[label] = {"adapters": len(served), "rss_mb": _rss_mb(proc.pid),
                           "prompt_bytes": _metric(metrics, "softprompt_adapter_bytes_loaded"),
                           "prefix_cache_bytes": _metric(metrics, "softprompt_prefix_cache_bytes")}
        finally:
            stop_servers([(proc, url)])
    added = rows["many"]["adapters"] - rows["few"]["adapters"]
    return {**rows, "rss_kb_per_adapter": (rows["many"]["rss_mb"] - rows["few"]["rss_mb"]) * 1024 / added,
            "prompt_kb_per_adapter": (rows["many"]["prompt_bytes"] - rows["few"]["prompt_bytes"]) / 1024 / added,
            "prefix_kb_per_adapter": (rows["many"]["prefix_cache_bytes"] - rows["few"]["prefix_cache_bytes"]) / 1024 / added}


def _busy_seconds(url: str) -> float:
    """Seconds the server's worker spent in model calls so far (the sum of softprompt_batch_seconds)."""
    import httpx

    return _metric(httpx.get(url + "/metrics").text, "softprompt_batch_seconds_sum")


def _metric(text: str, name: str) -> float:
    """The sum of every sample of `name` (all label sets) in a Prometheus text; NaN when it has none."""
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith((name + " ", name + "{"))]
    return sum(values) if values else float("nan")


def cold_adapter_cost(folder: str, base_folder: str, names: list[str], n: int, work: str) -> dict:
    """One client, sequential requests: alternating two adapters under `--max-adapters 1` (every request reads
    its adapter again) against the same resident adapter."""
    import httpx

    proc, url = start_server([folder], ["--max-adapters", "1"], os.path.join(work, "cold.log"), base_folder)
    try:
        with httpx.Client(timeout=60) as http:
            def timed(name: str) -> float:
                start = time.perf_counter()
                http.post(url + "/v1/completions", json={"model": name, "prompt": "the cat", "max_tokens": 1})
                return time.perf_counter() - start

            for _ in range(4):
                timed(names[0]), timed(names[1])
            warm = [timed(names[0]) for _ in range(n)]
            cold = [timed(names[(i + 1) % 2]) for i in range(n)]
            reloads = _metric(http.get(url + "/metrics").text, "softprompt_adapter_reloads_total")
    finally:
        stop_servers([(proc, url)])
    return {"requests": n, "warm_p50_ms": statistics.median(warm) * 1000, "cold_p50_ms": statistics.median(cold) * 1000,
            "cold_cost_ms": (statistics.median(cold) - statistics.median(warm)) * 1000, "reloads": reloads}


def plot(report: dict, path: str) -> str | None:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return None
    figure = Figure(figsize=(8, 3.2), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    for i, base in enumerate(BASES):
        axis = figure.add_subplot(1, 2, i + 1)
        summary = report["bases"][base]["summary"]
        names = list(summary)
        axis.barh(names[::-1], [summary[v]["throughput_rps"] for v in names[::-1]], color="#4c72b0")
        axis.set_title(f"{base}: requests/s (K={NUM_ADAPTERS})", fontsize=9)
        axis.tick_params(labelsize=8)
    figure.savefig(path)
    return path


LABELS = {
    "continuous": "continuous batching (default)",
    "engine_thread": "continuous, model in the HTTP process (`--engine-in-process`)",
    "no_prefix_cache": "continuous, no prefix cache (`--no-prefix-cache`)",
    "mixed": "one mixed batch at a time (`--batching mixed`)",
    "per_adapter": "grouped by adapter, `set_adapter` (`--batching per-adapter`)",
    "serial": "one request at a time (`--max-batch-size 1`)",
}


def render_markdown(report: dict) -> str:
    """The RESULTS.md section for `report` (also written next to the JSON as serving.md)."""
    m, setup = report["machine"], report["setup"]
    lines = [
        f"`{m['command']}` on {m.get('date_utc', '')} ({m.get('cpu', '')}, flags {'avx512_bf16' if 'avx512_bf16' in m.get('cpu_flags', []) else 'no avx512_bf16'}, bf16 fast: {m.get('bf16_is_fast')}, so {'bf16' if m.get('bf16_is_fast') else 'fp32'}; 2 CPUs shared "
        f"by the clients and the server; load average before / after {m['load_average_before']} / "
        f"{m['load_average_after']}; [`results/serving/serving.json`](results/serving/serving.json)). {setup['requests']} greedy "
        f"requests ({setup['max_tokens']} new tokens) over K={setup['adapters']} adapters (P 10/20/30) from "
        f"{setup['clients']} concurrent closed-loop clients over loopback HTTP, {setup['rounds']} interleaved rounds, "
        "and the same jobs submitted in process to the engine's scheduler by as many threads (no HTTP; the "
        "threads share the engine's interpreter lock), medians; each server with 1 torch thread. Worker busy: the "
        "share of the wall time the server's worker spent in model calls (prefill, decoding steps, batches). "
        f"Load generator: {_client_ms(report):.2f} ms of client CPU per request (median over variants).", ""]
    for base, result in report["bases"].items():
        lines += [f"**{setup['bases'][base]}** -- tokens identical across variants and rounds: "
                  f"{result['identical_tokens']}.", "",
                  "| server | requests/s | p50 latency (s) | p99 latency (s) | server CPU (s) | worker busy | time / continuous (paired) | in process, no HTTP: requests/s, time / continuous |",
                  "|---|---|---|---|---|---|---|---|"]
        for variant, row in result["summary"].items():
            ratio = result["ratios"].get(f"{variant}/continuous")
            paired = ("1.00x" if ratio is None else
                      f"{ratio['time']:.2f}x ({ratio['min']:.2f}x-{ratio['max']:.2f}x); CPU {ratio['server_cpu']:.2f}x")
            local = result.get("in_process", {})
            here = local.get("summary", {}).get(variant)
            here_ratio = local.get("ratios", {}).get(f"{variant}/continuous", 1.0)
            local_cell = f"{here['throughput_rps']:.1f}, {here_ratio:.2f}x" if here else "-"
            lines.append(f"| {LABELS[variant]} | {row['throughput_rps']:.1f} | {row['p50_s']:.3f} | {row['p99_s']:.3f} | "
                         f"{row['server_cpu_s']:.2f} | {row['worker_busy']:.0%} | {paired} | {local_cell} |")
        lines.append("")
    memory = report.get("memory_over_requests")
    if memory:
        samples = ", ".join(f"{k}: {mb:.0f}" for k, mb in memory["rss_mb"])
        lines += [f"**Memory over {memory['requests']:,} requests** (decoder-only, continuous, {setup['clients']} "
                  f"clients, {memory['throughput_rps']:.1f} requests/s, every request answered: "
                  f"{memory['all_answered']}): server RSS (MB) after n requests -- {samples}; growth "
                  f"{memory['growth_mb']:+.1f} MB overall, {memory['growth_second_half_mb']:+.1f} MB over the second half.", ""]
    adapters = report.get("adapter_memory")
    if adapters:
        lines += [f"**Memory per adapter** (decoder-only, all resident): {adapters['few']['adapters']} adapters "
                  f"{adapters['few']['rss_mb']:.0f} MB RSS, {adapters['many']['adapters']} adapters "
                  f"{adapters['many']['rss_mb']:.0f} MB: **{adapters['rss_kb_per_adapter']:.0f} KB per adapter** of "
                  f"process memory, of which {adapters['prompt_kb_per_adapter']:.1f} KB prompt weights (mean P 20 x 256 "
                  f"fp32) and {adapters['prefix_kb_per_adapter']:.0f} KB cached prompt keys/values (4 layers x 2 x P x 256); "
                  "the rest is PEFT's per-adapter modules and configs.", ""]
    cold = report.get("cold_adapter")
    if cold:
        lines += [f"**Cold adapter** (one client, {cold['requests']} sequential 1-token requests each way): resident "
                  f"adapter p50 {cold['warm_p50_ms']:.1f} ms; alternating two adapters under `--max-adapters 1` (every "
                  f"request evicts one and reads the other from disk through the strict reader, {cold['reloads']:.0f} "
                  f"reloads) p50 {cold['cold_p50_ms']:.1f} ms: **a cold adapter costs {cold['cold_cost_ms']:.1f} ms**.", ""]
    if report.get("plot"):
        lines += ["![serving throughput](results/serving/serving.png)", ""]
    lines += [verdict(report), ""]
    return "\n".join(lines)


def _client_ms(report: dict) -> float:
    per_request = [row.get("client_cpu_s", float("nan")) * 1000 / report["setup"]["requests"]
                   for result in report["bases"].values() for row in result["summary"].values()]
    return statistics.median(per_request) if per_request else float("nan")


def verdict(report: dict) -> str:
    """The issue's bar (continuous mixed-adapter throughput >= 2x grouping by adapter at K=8, over HTTP),
    met or not per base, with the in-process ratios next to it."""
    parts = []
    for base, result in report["bases"].items():
        ratio = result["ratios"]["per_adapter/continuous"]
        http = ratio["time"]
        local = result.get("in_process", {}).get("ratios", {}).get("per_adapter/continuous")
        every = "in every round" if ratio["min"] >= 2 else f"not in every round: {ratio['min']:.2f}x at worst"
        parts.append(f"{base}: {http:.2f}x over HTTP, rounds {ratio['min']:.2f}x-{ratio['max']:.2f}x "
                     f"({'met at the median, ' + every if http >= 2 else 'not met'})"
                     + (f", {local:.2f}x in process" if local is not None else ""))
    return ("**Bar: continuous mixed-adapter throughput >= 2x grouping by adapter at K=8 over HTTP** -- "
            + "; ".join(parts) + ". The `--engine-in-process` row shows the cost of running the model in the HTTP "
            "process, where the event loop and the worker take turns for one interpreter lock.")


def rerender(path: str) -> str:
    """Write `serving.md` again from a saved `serving.json` (after a change to the text, not the numbers)."""
    with open(path) as f:
        report = json.load(f)
    png = os.path.splitext(path)[0] + ".png"
    report["plot"] = png if os.path.exists(png) else None
    return write_text(os.path.splitext(path)[0] + ".md", render_markdown(report) + "\n")


def load_arguments(description: str) -> argparse.ArgumentParser:
    """The load flags both serving benchmarks take: `--quick`, `--requests`, `--clients`, `--rounds`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--requests", type=int)
    parser.add_argument("--clients", type=int)
    parser.add_argument("--rounds", type=int)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = load_arguments(__doc__.splitlines()[0])
    parser.add_argument("--memory-requests", type=int)
    parser.add_argument("--many-adapters", type=int)
    parser.add_argument("--bases", default="t5,decoder")
    parser.add_argument("--out", default=os.path.join(OUT, "serving.json"))
    parser.add_argument("--rerender", action="store_true", help="only write --out's .md again from its .json")
    args = parser.parse_args(argv)
    if args.rerender:
        print("wrote", rerender(args.out))
        return 0
    n = args.requests or (16 if args.quick else 64)
    clients = args.clients or (8 if args.quick else 16)
    rounds = args.rounds or (1 if args.quick else 3)
    memory_requests = args.memory_requests if args.memory_requests is not None else (500 if args.quick else 10_000)
    many = args.many_adapters if args.many_adapters is not None else (100 if args.quick else 1000)
    bases = [b for b in args.bases.split(",") if b]
    for b in bases:
        if b not in BASES:
            parser.error(f"--bases: {b!r} is not one of {sorted(BASES)}")

    import torch

    from benchmarks.machine import load_average, quiet_libraries

    quiet_libraries()
    torch.set_num_threads(1)
    work = tempfile.mkdtemp(prefix="serving-bench-")
    load_before = load_average()
    decoder_folder = make_decoder_base(os.path.join(work, "decoder-base"))
    report: dict = {"bases": {}}
    adapters = {}
    for base in bases:
        folder = os.path.join(work, f"{base}-adapters")
        names = make_adapters(folder, base, decoder_folder if base == "decoder" else None)
        adapters[base] = (folder, names)
        report["bases"][base] = compare_variants(base, folder, decoder_folder if base == "decoder" else None,
                                                 workload(names, n), clients, rounds, work)
        report["bases"][base]["in_process"] = in_process(base, folder, decoder_folder if base == "decoder" else None,
                                                         names, workload(names, n), clients, rounds)
    if "decoder" in bases:
        folder, names = adapters["decoder"]
        if memory_requests:
            report["memory_over_requests"] = memory_over_requests(folder, decoder_folder, names, memory_requests,
                                                                  clients, work)
            print("memory over requests:", {k: v for k, v in report["memory_over_requests"].items() if k != "rss_mb"})
        if many:
            report["adapter_memory"] = adapter_memory(folder, decoder_folder, names, many, work)
            print("adapter memory:", report["adapter_memory"])
        report["cold_adapter"] = cold_adapter_cost(folder, decoder_folder, names, 10 if args.quick else 30, work)
        print("cold adapter:", report["cold_adapter"])

    given = sys.argv[1:] if argv is None else list(argv)
    machine = run_info("serving", "serving", given, mode="quick" if args.quick else "full")
    machine["load_average_before"], machine["load_average_after"] = load_before, load_average()
    report["machine"] = machine
    report["setup"] = {"bases": {b: BASES[b] for b in bases}, "adapters": NUM_ADAPTERS, "prompt_lengths": PROMPT_LENGTHS,
                       "requests": n, "clients": clients, "rounds": rounds, "max_tokens": MAX_TOKENS,
                       "server_torch_threads": 1, "variants": {k: " ".join(v) or "(default)" for k, v in VARIANTS.items()}}
    write_json(args.out, report)
    if set(bases) == set(BASES):
        report["plot"] = plot(report, os.path.splitext(args.out)[0] + ".png")
    write_text(os.path.splitext(args.out)[0] + ".md", render_markdown(report) + "\n")
    identical = all(report["bases"][b]["identical_tokens"] and report["bases"][b]["in_process"]["identical_tokens"]
                    for b in bases)
    for base in bases:
        for key, value in report["bases"][base]["ratios"].items():
            print(f"{base:8} {key:28} time {value['time']:.2f}x ({value['min']:.2f}x-{value['max']:.2f}x), "
                  f"server CPU {value['server_cpu']:.2f}x, p99 {value['p99']:.2f}x")
    print(f"identical tokens across variants and rounds: {identical}; wrote {args.out}")
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
