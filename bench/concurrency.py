"""Concurrent streaming load: karen-host /v1 against llama.cpp's own server (llama-server) on the same model.

llama-server is built on demand from the llama.cpp vendored in the llama-cpp-python sdist we run on
(bench/build_llama_server.sh, into the git-ignored bench/.cache/), so both sides run the same ggml code.
Both get the same model, threads, slots, context per slot, batch size, flash-attention and KV cache
types, and the GGUF's own chat template (llama-server runs with `--jinja`): our ModelConfig is set to
n_ctx = slots x --ctx-per-slot, n_parallel --slots and n_threads = the cores; llama-server gets the
same with `--no-kv-unified` (each slot its own KV stream, the layout our runner uses).

Workloads (--workload, several with commas; each starts its own pair of servers):
- fresh (default): every request a prompt never sent before in the run (20-400 tokens, bench/workloads.py);
  at each level CLIENTS threads pull max(16, CLIENTS) requests.
- repeated: the earlier benchmark: the same 16 short prompts at every level, after a warm-up that sends
  them all once; prompt caches answer most of each prompt, so it measures the cache more than serving.
- karen: what KAREN sends: N concurrent conversations (--conversations), each with the same ~300-token
  system prompt, growing for --turns turns (the previous answer appended, then the next user turn).
- long: --streams streams decoding, then one ~3,000-token prompt arrives: its time to first token, and the
  streams' tokens/s while it is prefilled against their rate without it (the mean of the 2 s before it
  arrived and the 2 s after its first token: attention slows them as their contexts grow meanwhile).

Every request is a streaming chat completion, greedy, `stream_options.include_usage`; tokens are counted
from the usage the server reports, and so are the prompt tokens each server computed (prompt tokens less
`prompt_tokens_details.cached_tokens`: what its prompt caches saved, by count). End of generation is
suppressed by logit_bias unless --allow-eos, so a request that ends early is `truncated`. Requests are
paired across the two servers by what was sent, and the table says how many pairs differ in prompt tokens
(the two rendered differently) or completion tokens. The servers never run at the same time; who goes first
alternates per level and per round. Rounds (3 by default) are pooled and each round's own ratio is kept:
this machine's speed drifts by 5-10% in minutes.
RSS is the whole process tree's, after the warm-up (model loaded) and after the workload.

Prints a table per workload and writes bench/results/concurrency.json. Usage:
    .venv/bin/python bench/concurrency.py [--workload fresh,karen,long] [--clients 1,4,8,16] [--rounds 3]
"""

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import workloads  # noqa: E402
from bench.report import (  # noqa: E402
    SIDES,
    count_differences,
    level_tps,
    long_summary,
    print_table,
    prompt_tokens_computed,
    ratio,
    rounded,
    summarize,
)
from bench.servers import LLAMA_SERVER_LOG, LlamaServer, build_llama_server, configure_ours  # noqa: E402
from bench.throughput import SAMPLING, THREADS, Server  # noqa: E402

EOG_TOKENS = [0, 1, 2]  # SmolLM2: <|endoftext|>, <|im_start|>, <|im_end|>
CTX_PER_SLOT = {"fresh": 1024, "repeated": 1024, "karen": 2048, "long": 4096}


class Target:
    """One server as the client sees it: where, how to authenticate, which model name, one flag for EOS."""

    def __init__(self, url: str, headers: dict, model: str, allow_eos: bool) -> None:
        self.url, self.headers, self.model, self.allow_eos = url, headers, model, allow_eos

    def chat(
        self, client: httpx.Client, messages: list[dict], tokens: int, times: list | None = None,
        stop: threading.Event | None = None,
    ) -> dict:  # fmt: skip
        """One streaming chat completion: usage, time to first token, decode rate, the text; or an error.

        `times`, when given, gets the arrival time of every content chunk (the long workload's windows);
        once `stop` is set the client hangs up (the server cancels the request) and gets {"stopped": chunks}.
        """
        body = {"model": self.model, "messages": messages, "max_tokens": tokens, **SAMPLING, "seed": 1,
                "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
        if not self.allow_eos:
            body["logit_bias"] = {str(t): -100 for t in EOG_TOKENS}
        start = time.perf_counter()
        first = last = usage = None
        text = []
        try:
            with client.stream("POST", f"{self.url}/v1/chat/completions", json=body, headers=self.headers) as resp:
                if resp.status_code != 200:
                    return {"error": f"HTTP {resp.status_code}: {resp.read()[:200]!r}"}
                for line in resp.iter_lines():
                    if not line.startswith("data: {"):
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        return {"error": json.dumps(chunk["error"])[:200]}
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    if chunk.get("choices") and (piece := chunk["choices"][0].get("delta", {}).get("content")):
                        last = time.perf_counter()
                        first = first or last
                        text.append(piece)
                        if times is not None:
                            times.append(last)
                    if stop is not None and stop.is_set():
                        return {"stopped": len(text)}
        except httpx.HTTPError as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}
        if usage is None or first is None:
            return {"error": "stream ended without usage or content"}
        n = usage["completion_tokens"]
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")  # None: not reported
        return {"tokens": n, "prompt_tokens": usage["prompt_tokens"], "cached_tokens": cached,
                "ttft_ms": (first - start) * 1000,
                "decode_tps": (n - 1) / (last - first) if n > 1 and last > first else 0.0,
                "text": "".join(text)}  # fmt: skip


def client_pool(clients: int) -> httpx.Client:
    # A fresh connection per request on both sides: llama-server (cpp-httplib) sometimes drops a kept-alive
    # connection just as the next request goes out on it ("Server disconnected without sending a response"),
    # often when the machine is busy, which would count as errors that no real client would see.
    return httpx.Client(timeout=900, limits=httpx.Limits(max_connections=clients, max_keepalive_connections=0))


def run_requests(target: Target, requests: list[tuple[str, str]], clients: int, tokens: int) -> dict:
    """(key, prompt) requests through `clients` concurrent streams; each result keyed, and the wall time."""

    def one(request: tuple[str, str]) -> dict:
        key, prompt = request
        return {"key": key, **target.chat(client, [{"role": "user", "content": prompt}], tokens)}

    with client_pool(clients) as client, ThreadPoolExecutor(clients) as pool:
        start = time.perf_counter()
        runs = list(pool.map(one, requests))
        wall = time.perf_counter() - start
    return {"runs": runs, "wall_s": wall}


def run_conversations(target: Target, keys: list[str], turns: int, tokens: int) -> dict:
    """KAREN's traffic: one thread per conversation, each turn sent after the previous answer arrived."""

    def conversation(key: str) -> list[dict]:
        messages = [{"role": "system", "content": workloads.KAREN_SYSTEM}]
        results = []
        for turn in range(turns):
            messages.append({"role": "user", "content": workloads.karen_user_turn((key,), turn)})
            result = {"key": f"{key}/{turn}", **target.chat(client, messages, tokens)}
            results.append(result)
            if "error" in result:
                break
            messages.append({"role": "assistant", "content": result["text"]})
        return results

    with client_pool(len(keys)) as client, ThreadPoolExecutor(len(keys)) as pool:
        start = time.perf_counter()
        runs = [r for results in pool.map(conversation, keys) for r in results]
        wall = time.perf_counter() - start
    return {"runs": runs, "wall_s": wall}


def run_long(target: Target, key: str, streams: int, tokens: int, long_tokens: int) -> dict:
    """`streams` streams decoding, then one long prompt: its TTFT and the streams' rate without and during its fill.

    The streams could decode for longer than any fill takes; they are stopped (the client hangs up) 2 s
    after the long prompt's first token, so every one of them decodes through the whole window.
    """
    times: list[list[float]] = [[] for _ in range(streams)]
    stop = threading.Event()
    stream_tokens = 3000  # far longer than the fill: they are stopped, not finished
    with client_pool(streams + 1) as client, ThreadPoolExecutor(streams) as pool:
        futures = [
            pool.submit(
                target.chat,
                client,
                [{"role": "user", "content": workloads.fresh_prompt(key, "stream", i, low=20, high=60)}],
                stream_tokens,
                times[i],
                stop,
            )
            for i in range(streams)
        ]
        deadline = time.perf_counter() + 300
        while min(len(t) for t in times) < 16 and time.perf_counter() < deadline:
            if any(f.done() for f in futures):
                break
            time.sleep(0.05)
        time.sleep(2.0)  # the baseline window: every stream decoding
        arrived = time.perf_counter()
        long = target.chat(client, [{"role": "user", "content": workloads.long_prompt(key, tokens=long_tokens)}], 16)
        if "ttft_ms" in long:  # the window after the fill, the streams' contexts as long as at its end
            time.sleep(max(0.0, arrived + long["ttft_ms"] / 1000 + 2.0 - time.perf_counter()))
        stop.set()
        stream_runs = [f.result() for f in futures]
    # The streams count in `errors` when they failed; stopped ones are not requests to summarize.
    runs = [{"key": f"{key}/long", **long}] + [
        {"key": f"{key}/stream{i}", **r} for i, r in enumerate(stream_runs) if "error" in r
    ]
    if "error" in long:
        return {"runs": runs, "wall_s": 0.0}
    first = arrived + long["ttft_ms"] / 1000

    def rate(lo: float, hi: float) -> float:
        return sum(lo <= t < hi for ts in times for t in ts) / (hi - lo)

    # The streams' contexts grow while they wait, and attention slows them as they grow: their rate without
    # a fill is taken as the mean of the 2 s before the long prompt arrived and the 2 s after its first token.
    before = (rate(arrived - 2.0, arrived) + rate(first, first + 2.0)) / 2
    during = rate(arrived, first)
    still = sum(1 for r in stream_runs if "stopped" in r)  # streams that decoded through the whole fill
    return {"runs": runs, "wall_s": 0.0, "long_ttft_ms": long["ttft_ms"],
            "long_prompt_tokens": long.get("prompt_tokens"), "streams_tps_before": before, "streams_tps_during": during,
            "streams_kept": during / before if before else None, "streams_outlasting": still}  # fmt: skip


def run_workload(name: str, args: argparse.Namespace, binary: str, model_path: str) -> dict:
    """Start both servers for one workload, run every level and round on each in turn, and summarize."""
    ctx_per_slot = args.ctx_per_slot or CTX_PER_SLOT[name]
    levels = [int(c) for c in (args.conversations if name == "karen" else args.clients).split(",")]
    if name == "long":
        levels = [args.streams]
    raw: dict[tuple[int, str], list[dict]] = {(c, side): [] for c in levels for side in SIDES}
    rss: dict[str, dict[str, float]] = {"ours": {}, "theirs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        # Server() runs `serve --no-serve` again, which keeps this config: a scan only creates configs for new files.
        config = configure_ours(workdir, args.slots, args.slots * ctx_per_slot)
        ours = theirs = None
        try:
            ours = Server(workdir)
            theirs = LlamaServer(binary, model_path, config, args.slots, LLAMA_SERVER_LOG)
            servers = {"ours": ours, "theirs": theirs}
            targets = {
                "ours": Target(ours.url, ours.headers, ours.model, args.allow_eos),
                "theirs": Target(theirs.url, {}, Path(model_path).name, args.allow_eos),
            }
            for side, target in targets.items():  # load our model; let both touch every page once
                warm = [(f"warm{i}", workloads.fresh_prompt(name, "warm", i)) for i in range(2)]
                if name == "repeated":  # the cache state every level starts from
                    warm = [(f"warm{i}", workloads.repeated_prompt(i)) for i in range(len(workloads.QUESTIONS))]
                done = run_requests(target, warm, 1, 8)
                if errors := [r["error"] for r in done["runs"] if "error" in r]:
                    raise RuntimeError(f"{side} fails on warm-up: {errors[0]} (llama-server log: {LLAMA_SERVER_LOG})")
                rss[side]["loaded_mb"] = round(servers[side].rss_mb(), 1)
            for round_index in range(args.rounds):
                for level_index, clients in enumerate(levels):
                    first_theirs = (round_index + level_index) % 2 == 0
                    for side in ("theirs", "ours") if first_theirs else ("ours", "theirs"):
                        print(f"{name}, {clients}: {side} ...", flush=True)
                        key = f"{name}/r{round_index}/c{clients}"
                        raw[clients, side].append(run_one(name, targets[side], key, clients, args))
            for side, server in servers.items():
                rss[side]["after_mb"] = round(server.rss_mb(), 1)
        finally:
            for server in (theirs, ours):
                if server is not None:
                    server.stop()
    rows = []
    for clients in levels:
        row = {"level": clients}
        for side in SIDES:
            row[side] = summarize(raw[clients, side], args.tokens if name != "long" else 16, args.allow_eos)
            if name == "long":
                row[side].update(long_summary(raw[clients, side]))
        row["ratio_aggregate_tps"] = ratio(row["ours"]["aggregate_tps"], row["theirs"]["aggregate_tps"])
        row["ratio_ttft_p50"] = ratio(row["theirs"]["ttft_ms_p50"], row["ours"]["ttft_ms_p50"])  # > 1: we are faster
        row["ratio_by_round"] = [
            ratio(level_tps(a), level_tps(b)) for a, b in zip(raw[clients, "ours"], raw[clients, "theirs"], strict=True)
        ]
        row["counts"] = count_differences(raw[clients, "ours"], raw[clients, "theirs"])
        # Levels and rounds share a pair of servers: from the second on, prompt caches hold what earlier ones sent.
        row["prompt_tokens_computed_by_round"] = {
            side: [prompt_tokens_computed(level["runs"]) for level in raw[clients, side]] for side in SIDES
        }
        rows.append(row)
    flags = " ".join(theirs.flags) if theirs else ""
    extra_mb = rounded(rss["ours"].get("loaded_mb", 0) - rss["theirs"].get("loaded_mb", 0))
    return {"workload": name, "ctx_per_slot": ctx_per_slot, "ours_config": config, "llama_server_flags": flags,
            "rss": rss, "rss_difference_mb": extra_mb, "levels": rows}  # fmt: skip


def run_one(name: str, target: Target, key: str, clients: int, args: argparse.Namespace) -> dict:
    if name == "karen":
        return run_conversations(target, [f"{key}/conv{i}" for i in range(clients)], args.turns, args.tokens)
    if name == "long":
        return run_long(target, key, clients, args.tokens, args.long_tokens)
    count = max(16, clients)
    if name == "repeated":
        requests = [(f"{key}/{i}", workloads.repeated_prompt(i)) for i in range(count)]
    else:
        requests = [(f"{key}/{i}", workloads.fresh_prompt(key, i)) for i in range(count)]
    return run_requests(target, requests, clients, args.tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="fresh", help="fresh, repeated, karen, long; several with commas")
    parser.add_argument("--clients", default="1,4,8,16", help="concurrency levels of fresh and repeated")
    parser.add_argument("--conversations", default="4,8", help="concurrent conversations of karen")
    parser.add_argument("--turns", type=int, default=6, help="turns of each karen conversation")
    parser.add_argument("--streams", type=int, default=7, help="streams decoding while the long prompt arrives")
    parser.add_argument("--long-tokens", type=int, default=3000, help="length of the long prompt, about")
    parser.add_argument("--tokens", type=int, default=128, help="max_tokens of every request")
    parser.add_argument("--slots", type=int, default=8, help="parallel slots on both servers")
    parser.add_argument("--ctx-per-slot", type=int, help="context per slot (default per workload: "
                        + ", ".join(f"{k} {v}" for k, v in CTX_PER_SLOT.items()) + ")")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3, help="repeat every level this many times, interleaved")
    parser.add_argument("--allow-eos", action="store_true", help="let requests end at end of generation")
    parser.add_argument("--llama-server", help="use this llama-server binary instead of building one")
    args = parser.parse_args()
    names = args.workload.split(",")
    if unknown := set(names) - set(CTX_PER_SLOT):
        parser.error(f"--workload: unknown {', '.join(sorted(unknown))}; choose from {', '.join(CTX_PER_SLOT)}")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "karen_host.settings")
    from models_app.bundled import bundled_model_path

    model_path = str(bundled_model_path())
    binary = args.llama_server or build_llama_server()
    load_before = round(os.getloadavg()[0], 2)
    results = []
    for name in names:
        results.append(run_workload(name, args, binary, model_path))
        print_table(results[-1])
    result = {
        "model": Path(model_path).name,
        "threads": THREADS,
        "max_tokens": args.tokens,
        "slots": args.slots,
        "rounds": args.rounds,
        "sampling": {**SAMPLING, "seed": 1, "end_of_generation": "allowed" if args.allow_eos else "suppressed"},
        "llama_server_binary": os.path.relpath(binary, ROOT),
        "load_average_before_after": [load_before, round(os.getloadavg()[0], 2)],  # other work skews the numbers
        "workloads": results,
    }
    out = ROOT / "bench" / "results" / "concurrency.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
