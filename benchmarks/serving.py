"""Benchmark: `softprompt serve` under concurrent load, mixed-adapter batches against two baselines.

Lester et al. (2021), section 6: one frozen model serves many tasks, and a batch may mix them. Three real
server processes (uvicorn on 127.0.0.1) serve the embedded LM-adapted T5 with the same K=8 prompt adapters
(random-uniform prompts, P cycling 10/20/30; nothing is downloaded):

* `mixed` -- the default: each batch takes whatever is queued, any mix of adapters (`mixed_generate`).
* `per_adapter` -- `--batching per-adapter`: each batch holds one adapter and runs PEFT's own
  `set_adapter` + `generate` (grouping by adapter, the way PEFT serves several adapters).
* `serial` -- `--max-batch-size 1`: one request at a time.

Each round sends the same N requests (adapters in a seeded random order, greedy, `max_tokens` 8) from C
concurrent closed-loop clients (one keep-alive HTTP connection each) to each server in turn, the order
rotating between rounds so machine load hits every variant alike. Reported per variant: throughput
(requests/s), p50 and p99 client-side latency, the server process's CPU seconds, medians over rounds; and the
ratios of each baseline to `mixed` paired within a round. Every request's text must be identical across
variants and rounds (greedy rows do not depend on their batch): the script fails otherwise.

Servers run one torch thread (`OMP_NUM_THREADS=1`), as the other benchmarks here, so that the three idle
servers do not fight over a 2-core machine; only one server is under load at a time.

    python benchmarks/serving.py            # N=64 requests, C=16 clients, 3 rounds (about 2 minutes on 2 cores)
    python benchmarks/serving.py --quick    # N=16, C=8, 1 round
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
RESULTS = os.path.join(HERE, "results")
VARIANTS = {
    "continuous": [],
    "mixed": ["--batching", "mixed"],
    "per_adapter": ["--batching", "per-adapter"],
    "serial": ["--max-batch-size", "1", "--batching", "mixed"],
}
NUM_ADAPTERS, PROMPT_LENGTHS, MAX_TOKENS = 8, (10, 20, 30), 8


def make_adapters(root: str) -> list[str]:
    """K prompt adapters for the embedded T5 under `root`; returns their names."""
    from peft import get_peft_model

    from softprompt_ext import SoftPromptConfig, default_model_and_tokenizer

    base, _ = default_model_and_tokenizer()
    names = [f"task{k}" for k in range(NUM_ADAPTERS)]
    model = None
    for k, name in enumerate(names):
        config = SoftPromptConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=PROMPT_LENGTHS[k % 3],
                                  prompt_tuning_init="RANDOM_UNIFORM", init_range=0.5, init_seed=k)
        if model is None:
            model = get_peft_model(base, config, adapter_name=name)
        else:
            model.add_adapter(name, config)
    model.save_pretrained(root, selected_adapters=names)
    return names


def workload(names: list[str], n: int, seed: int = 0) -> list[dict]:
    from softprompt_ext.tiny_models import _CORPUS

    rng = random.Random(seed)
    texts = [line for line in _CORPUS if line.strip()]
    return [{"model": rng.choice(names), "prompt": rng.choice(texts), "max_tokens": MAX_TOKENS} for _ in range(n)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def start_server(folder: str, extra: list[str], log_path: str) -> tuple[subprocess.Popen, str]:
    import httpx

    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "softprompt_ext", "serve", "--adapter", folder, "--port", str(port),
                             "--max-wait-ms", "5", "--log-level", "warning", *extra],
                            stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
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


def run_load(url: str, requests: list[dict], clients: int) -> dict:
    """Send `requests` from `clients` closed-loop threads; texts in request order and latencies."""
    import httpx

    texts: list[str | None] = [None] * len(requests)
    latencies: list[float] = [0.0] * len(requests)
    cursor = iter(range(len(requests)))
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(timeout=120) as http:
            while True:
                with lock:
                    i = next(cursor, None)
                if i is None:
                    return
                start = time.perf_counter()
                response = http.post(url + "/v1/completions", json=requests[i])
                latencies[i] = time.perf_counter() - start
                response.raise_for_status()
                texts[i] = response.json()["choices"][0]["text"]

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client) for _ in range(clients)]:
            f.result()
    wall = time.perf_counter() - start
    ordered = sorted(latencies)
    return {"wall_s": wall, "throughput_rps": len(requests) / wall, "p50_s": _quantile(ordered, 0.5),
            "p99_s": _quantile(ordered, 0.99), "texts": texts}


def _quantile(ordered: list[float], q: float) -> float:
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--requests", type=int)
    parser.add_argument("--clients", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--out", default=os.path.join(RESULTS, "serving.json"))
    args = parser.parse_args(argv)
    n = args.requests or (16 if args.quick else 64)
    clients = args.clients or (8 if args.quick else 16)
    rounds = args.rounds or (1 if args.quick else 3)

    import torch

    from benchmarks.machine import describe, load_average, quiet_libraries

    quiet_libraries()
    torch.set_num_threads(1)
    work = tempfile.mkdtemp(prefix="serving-bench-")
    names = make_adapters(os.path.join(work, "adapters"))
    requests = workload(names, n)
    servers = {}
    load_before = load_average()
    try:
        for variant, extra in VARIANTS.items():
            servers[variant] = start_server(os.path.join(work, "adapters"), extra, os.path.join(work, f"{variant}.log"))
        for _, url in servers.values():  # warm-up: first calls build kernels and allocator pools
            run_load(url, requests[: min(8, n)], clients)
        samples: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        order = list(VARIANTS)
        for r in range(rounds):
            for variant in order[r % len(order):] + order[: r % len(order)]:
                proc, url = servers[variant]
                cpu0 = _cpu_seconds(proc.pid)
                result = run_load(url, requests, clients)
                result["server_cpu_s"] = _cpu_seconds(proc.pid) - cpu0
                samples[variant].append(result)
                print(f"round {r + 1} {variant:12} {result['throughput_rps']:7.1f} req/s  p50 {result['p50_s']:.3f} s  "
                      f"p99 {result['p99_s']:.3f} s  server CPU {result['server_cpu_s']:.2f} s", flush=True)
    finally:
        for proc, _ in servers.values():
            proc.send_signal(signal.SIGTERM)
        for proc, _ in servers.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()

    reference = samples["mixed"][0]["texts"]
    identical = all(s["texts"] == reference for runs in samples.values() for s in runs)
    summary = {}
    for variant, runs in samples.items():
        summary[variant] = {key: statistics.median(s[key] for s in runs)
                            for key in ("throughput_rps", "p50_s", "p99_s", "wall_s", "server_cpu_s")}
    ratios = {}
    for baseline in ("per_adapter", "serial"):
        paired = [b["wall_s"] / m["wall_s"] for b, m in zip(samples[baseline], samples["mixed"], strict=True)]
        cpu = [b["server_cpu_s"] / m["server_cpu_s"] for b, m in zip(samples[baseline], samples["mixed"], strict=True)]
        p99 = [b["p99_s"] / m["p99_s"] for b, m in zip(samples[baseline], samples["mixed"], strict=True)]
        ratios[f"{baseline}/mixed"] = {"throughput": statistics.median(paired), "min": min(paired), "max": max(paired),
                                       "server_cpu": statistics.median(cpu), "p99": statistics.median(p99)}
    machine = describe(torch.device("cpu"), sys.argv[1:], "quick" if args.quick else "full", "serving")
    machine["command"] = ("python benchmarks/serving.py " + " ".join(sys.argv[1:])).strip()
    machine["load_average_before"], machine["load_average_after"] = load_before, load_average()
    report = {
        "machine": machine,
        "setup": {"base": "embedded t5-wordnet-lm-adapt", "adapters": NUM_ADAPTERS, "prompt_lengths": PROMPT_LENGTHS,
                  "requests": n, "clients": clients, "rounds": rounds, "max_tokens": MAX_TOKENS,
                  "server_torch_threads": 1, "variants": {k: " ".join(v) or "(default)" for k, v in VARIANTS.items()}},
        "summary": summary,
        "ratios": ratios,
        "identical_tokens": identical,
        "rounds": {v: [{k: x for k, x in s.items() if k != "texts"} for s in runs] for v, runs in samples.items()},
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    for key, value in ratios.items():
        print(f"{key}: wall {value['throughput']:.2f}x ({value['min']:.2f}x-{value['max']:.2f}x), "
              f"server CPU {value['server_cpu']:.2f}x, p99 {value['p99']:.2f}x")
    print(f"identical tokens across variants and rounds: {identical}; wrote {args.out}")
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
