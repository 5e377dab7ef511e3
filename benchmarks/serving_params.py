"""Benchmark: continuous mixed-adapter batching against grouping by adapter when requests differ in parameters.

`python -m benchmarks.serving` measures greedy requests. Here the same K=8 adapters, bases and load generator serve
two workloads side by side: `greedy` (its workload: every request greedy, `max_tokens` 8) and `params` (the
same prompts and adapters, but half the requests sample -- temperature 0.8, top_p 0.95 -- and a quarter of them,
greedy ones, ask for `logprobs: 1`). Two servers per base:

* `continuous` -- the default: every row carries its own options inside the one running batch.
* `per_adapter` -- `--batching per-adapter`: one adapter per batch through PEFT's `set_adapter` + `generate`,
  which takes one setting per call, so each batch is split again by sampling settings.

Both servers run fp32 (`--precision fp32`): under bf16 autocast a row's rounding depends on its batch shape, so
greedy texts could differ between the two ways of batching. Rounds interleave servers and workloads (the order rotating), medians over rounds; the ratio is
`per_adapter` time / `continuous` time, paired within a round. The greedy rows' texts must be identical across
servers and rounds (the script fails otherwise); sampled rows are random by design (no seed: `per_adapter`
cannot seed rows one by one).

    python -m benchmarks.serving_params            # N=64 requests, C=16 clients, 3 rounds, both bases
    python -m benchmarks.serving_params --quick    # N=16, C=8, 1 round
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile

from benchmarks.common import RESULTS, run_info, write_json, write_text

OUT = os.path.join(RESULTS, "serving")
SERVERS = {"continuous": ["--precision", "fp32"], "per_adapter": ["--batching", "per-adapter", "--precision", "fp32"]}


def with_params(requests: list[dict]) -> list[dict]:
    """Half the requests sampling (even positions), a quarter greedy with `logprobs: 1` (positions 1 mod 4)."""
    out = []
    for i, request in enumerate(requests):
        extra = {"temperature": 0.8, "top_p": 0.95} if i % 2 == 0 else {"logprobs": 1} if i % 4 == 1 else {}
        out.append({**request, **extra})
    return out


def measure(base: str, folder: str, base_folder: str | None, workloads: dict[str, list[dict]], clients: int,
            rounds: int, work: str) -> dict:
    from benchmarks.serving import _cpu_seconds, run_load, start_server, stop_servers

    servers = {}
    runs = [(s, w) for s in SERVERS for w in workloads]
    samples: dict[tuple[str, str], list[dict]] = {run: [] for run in runs}
    try:
        for name, flags in SERVERS.items():
            servers[name] = start_server([folder], flags, os.path.join(work, f"{base}-{name}.log"), base_folder)
        for name, workload in runs:  # warm-up: every batch shape of the load once
            run_load(servers[name][1], workloads[workload], clients)
        for r in range(rounds):
            for name, workload in runs[r % len(runs):] + runs[: r % len(runs)]:
                proc, url = servers[name]
                cpu0 = _cpu_seconds(proc.pid)
                result = run_load(url, workloads[workload], clients)
                result["server_cpu_s"] = _cpu_seconds(proc.pid) - cpu0
                samples[(name, workload)].append(result)
                print(f"{base:8} round {r + 1} {name:12} {workload:7} {result['throughput_rps']:7.1f} req/s  "
                      f"p99 {result['p99_s']:.3f} s", flush=True)
    finally:
        stop_servers(servers.values())
    greedy = {w: [i for i, q in enumerate(workloads[w]) if not q.get("temperature")] for w in workloads}
    identical = all([s["texts"][i] for i in greedy[w]] == [samples[("continuous", w)][0]["texts"][i] for i in greedy[w]]
                    for (_, w), runs_ in samples.items() for s in runs_)
    summary = {f"{n}/{w}": {k: statistics.median(s[k] for s in samples[(n, w)])
                             for k in ("throughput_rps", "p50_s", "p99_s", "wall_s", "server_cpu_s")} for n, w in runs}
    ratios = {}
    for w in workloads:
        paired = [b["wall_s"] / c["wall_s"] for b, c in zip(samples[("per_adapter", w)], samples[("continuous", w)],
                                                            strict=True)]
        ratios[w] = {"time": statistics.median(paired), "min": min(paired), "max": max(paired)}
    return {"summary": summary, "ratios": ratios, "identical_greedy_tokens": identical}


def render_markdown(report: dict) -> str:
    setup = report["setup"]
    lines = ["# Serving with mixed request parameters", "",
             f"`{report['machine']['command']}` ({report['machine'].get('date_utc', '')}; "
             f"{report['machine'].get('cpu', '')}): K={setup['adapters']} adapters, {setup['requests']} requests from "
             f"{setup['clients']} clients, {setup['rounds']} rounds, medians; `params`: half the requests sampling "
             "(temperature 0.8, top_p 0.95), a quarter asking for logprobs.", "",
             "| base | workload | continuous req/s | per-adapter req/s | per-adapter time / continuous (rounds) |",
             "|---|---|---|---|---|"]
    for base, result in report["bases"].items():
        for w, ratio in result["ratios"].items():
            lines.append(f"| {base} | {w} | {result['summary'][f'continuous/{w}']['throughput_rps']:.1f} | "
                         f"{result['summary'][f'per_adapter/{w}']['throughput_rps']:.1f} | **{ratio['time']:.2f}x** "
                         f"({ratio['min']:.2f}x-{ratio['max']:.2f}x) |")
    lines += ["", "Greedy rows identical across servers and rounds: "
              + str(all(r["identical_greedy_tokens"] for r in report["bases"].values()))]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.serving import load_arguments

    parser = load_arguments(__doc__.splitlines()[0])
    parser.add_argument("--bases", default="t5,decoder")
    parser.add_argument("--out", default=os.path.join(OUT, "serving_params.json"))
    args = parser.parse_args(argv)
    n = args.requests or (16 if args.quick else 64)
    clients = args.clients or (8 if args.quick else 16)
    rounds = args.rounds or (1 if args.quick else 3)

    import torch

    from benchmarks.machine import load_average, quiet_libraries
    from benchmarks.serving import NUM_ADAPTERS, make_adapters, make_decoder_base, workload

    quiet_libraries()
    torch.set_num_threads(1)
    work = tempfile.mkdtemp(prefix="serving-params-")
    load_before = load_average()
    decoder_folder = make_decoder_base(os.path.join(work, "decoder-base"))
    report: dict = {"bases": {}}
    for base in [b for b in args.bases.split(",") if b]:
        folder = os.path.join(work, f"{base}-adapters")
        base_folder = decoder_folder if base == "decoder" else None
        names = make_adapters(folder, base, base_folder)
        greedy = workload(names, n)
        report["bases"][base] = measure(base, folder, base_folder, {"greedy": greedy, "params": with_params(greedy)},
                                        clients, rounds, work)
    given = sys.argv[1:] if argv is None else list(argv)
    report["machine"] = run_info("serving_params", "serving_params", given, mode="quick" if args.quick else "full")
    report["machine"]["load_average_before"], report["machine"]["load_average_after"] = load_before, load_average()
    report["setup"] = {"adapters": NUM_ADAPTERS, "requests": n, "clients": clients, "rounds": rounds}
    write_json(args.out, report)
    write_text(os.path.splitext(args.out)[0] + ".md", render_markdown(report) + "\n")
    for base, result in report["bases"].items():
        for w, ratio in result["ratios"].items():
            print(f"{base:8} {w:7} per_adapter/continuous time {ratio['time']:.2f}x ({ratio['min']:.2f}x-{ratio['max']:.2f}x)")
    identical = all(r["identical_greedy_tokens"] for r in report["bases"].values())
    print(f"greedy rows identical across servers and rounds: {identical}; wrote {args.out}")
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
