"""Concurrent streaming load: karen-host /v1 against llama.cpp's own server (llama-server) on the same model.

llama-server is built on demand from the llama.cpp vendored in the llama-cpp-python sdist we run on
(bench/build_llama_server.sh, into the git-ignored bench/.cache/), so both sides run the same ggml code.
Both get the same model, threads, context per slot, batch size, flash-attention and KV cache types:
our ModelConfig is set to n_ctx 4096, n_parallel --slots and n_threads = the cores, and llama-server
gets `-c 4096 -np SLOTS --no-kv-unified` plus the config's batch, flash-attention and cache types.
`--no-kv-unified` gives each slot its own KV stream of 4096 / SLOTS cells, which is the layout our
runner uses (kv_unified = False); with a unified cache a lone request could grow past that share.

For each concurrency level, CLIENTS threads pull from a queue of max(16, CLIENTS) requests (the 16
fixed prompts in turn), each a streaming chat completion with greedy sampling and end-of-generation
suppressed by logit_bias, so every request should produce exactly --tokens tokens; tokens are counted
from the final usage chunk. The two servers never run at the same time; who goes first alternates per level
and, for each level, per round. Per side and level: aggregate tokens/s (all completion tokens / wall time of the level),
per-stream tokens/s (mean over requests of (tokens - 1) / time from first to last content chunk),
time to first token p50/p95, errors and truncated requests (fewer than --tokens tokens), pooled over
the rounds (3 by default: this machine's speed drifts by 5-10% within minutes), plus each round's own
ratio. Every request opens its own connection (see run_level). Both servers keep their prompt caches:
each level sends the same 16 prompts again, and a warm-up pass sends them all once first, so every level
sees the same cache state.

Prints a table and writes bench/results/concurrency.json. Usage:
    .venv/bin/python bench/concurrency.py [--clients 1,4,8,16] [--tokens 128] [--slots 8] [--rounds 3]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.throughput import SAMPLING, THREADS, Server, free_port  # noqa: E402

N_CTX = 4096
EOG_TOKENS = [0, 1, 2]  # SmolLM2: <|endoftext|>, <|im_start|>, <|im_end|>
PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works to a child.",
    "List some things to pack for a weekend hike and say why.",
    "Describe the water cycle in simple words.",
    "Give me three ideas for a rainy afternoon.",
    "What makes a good cup of tea?",
    "Write a poem about the sea at night.",
    "Explain what a computer program is.",
    "Tell me about the planets in our solar system.",
    "How do bees make honey?",
    "Write a letter to a friend about a trip to the mountains.",
    "Why is the sky blue?",
    "Describe a busy market in the morning.",
    "Give some tips for learning to cook.",
    "What is the difference between weather and climate?",
    "Write a short dialogue between a cat and a dog.",
]
BUILD_SCRIPT = ROOT / "bench" / "build_llama_server.sh"
LLAMA_SERVER_LOG = ROOT / "bench" / ".cache" / "llama-server.log"  # kept after the run, for post-mortems


class LlamaServer:
    """llama.cpp's C++ server on a free port, with flags mirroring our ModelConfig."""

    def __init__(self, binary: str, model_path: str, config: dict, slots: int, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.flags = [
            "-t", str(THREADS), "-tb", str(THREADS),
            "-c", str(config["n_ctx"]), "-np", str(slots), "--no-kv-unified",
            "-b", str(config["n_batch"]), "-ub", str(config["n_batch"]),
            "-fa", "on" if config["flash_attn"] else "off",
            "-ctk", config["cache_type_k"], "-ctv", config["cache_type_v"],
            "--no-webui",
        ]  # fmt: skip
        if not config["use_mmap"]:
            self.flags.append("--no-mmap")
        if config["use_mlock"]:
            self.flags.append("--mlock")
        command = [binary, "-m", model_path, "--host", "127.0.0.1", "--port", str(self.port), *self.flags]
        self.log = log_path.open("w")
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if httpx.get(f"{self.url}/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"llama-server did not become healthy; its log ends with:\n{tail}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)
        self.log.close()


def build_llama_server() -> str:
    """Path of llama-server, building it first if bench/.cache has none (several minutes on 2 cores)."""
    binary = ROOT / "bench" / ".cache" / "llama-server" / "build" / "bin" / "llama-server"
    if not binary.exists():
        print("building llama-server from the llama-cpp-python sdist (several minutes) ...", flush=True)
    out = subprocess.run([str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True)
    return out.stdout.strip().splitlines()[-1]


def configure_ours(workdir: Path, slots: int) -> dict:
    """Prepare our throwaway instance and set the bundled model's config; returns the config it runs with."""
    env = {**os.environ, "VAR_DIR": str(workdir / "var"), "MODELS_DIR": str(workdir / "models"),
           "LOG_LEVEL": "WARNING"}  # fmt: skip
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "serve", "--no-serve"], env=env, check=True, capture_output=True)
    code = f"""
import json
from models_app.models import ModelConfig
fields = {{f.name for f in ModelConfig._meta.get_fields()}}
for config in ModelConfig.objects.all():
    config.n_ctx, config.n_threads = {N_CTX}, {THREADS}
    if "n_parallel" in fields:
        config.n_parallel = {slots}
    config.save()
keys = ["n_ctx", "n_parallel", "n_threads", "n_batch", "flash_attn", "cache_type_k", "cache_type_v", "use_mmap",
        "use_mlock"]
print(json.dumps({{k: getattr(config, k, None) for k in keys}}))
"""
    out = subprocess.run([*manage, "shell", "-c", code], env=env, check=True, capture_output=True, text=True)
    config = json.loads(out.stdout.strip().splitlines()[-1])
    if config["n_parallel"] is None:
        print("note: ModelConfig has no n_parallel field yet; our server runs with its own default slots")
    return config


def stream_chat(client: httpx.Client, url: str, headers: dict, model: str, prompt: str, tokens: int) -> dict:
    """One streaming chat completion: tokens (from usage), time to first token, decode rate, or an error."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
            **SAMPLING, "seed": 1, "stream": True, "stream_options": {"include_usage": True},
            "logit_bias": {str(t): -100 for t in EOG_TOKENS}}  # fmt: skip
    start = time.perf_counter()
    first = last = usage = None
    try:
        with client.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers) as response:
            if response.status_code != 200:
                return {"error": f"HTTP {response.status_code}: {response.read()[:200]!r}"}
            for line in response.iter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return {"error": json.dumps(chunk["error"])[:200]}
                if chunk.get("usage"):
                    usage = chunk["usage"]
                if chunk.get("choices") and chunk["choices"][0].get("delta", {}).get("content"):
                    last = time.perf_counter()
                    first = first or last
    except httpx.HTTPError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    if usage is None or first is None:
        return {"error": "stream ended without usage or content"}
    n = usage["completion_tokens"]
    return {"tokens": n, "ttft_ms": (first - start) * 1000, "decode_tps": (n - 1) / (last - first) if n > 1 else 0.0}


def run_level(url: str, headers: dict, model: str, clients: int, tokens: int) -> dict:
    """max(16, clients) requests through `clients` concurrent streams; raw results and the wall time."""
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(max(len(PROMPTS), clients))]
    # A fresh connection per request on both sides: llama-server (cpp-httplib) sometimes drops a kept-alive
    # connection just as the next request goes out on it ("Server disconnected without sending a response"),
    # often when the machine is busy, which would count as errors that no real client would see.
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=0)
    with httpx.Client(timeout=600, limits=limits) as client, ThreadPoolExecutor(clients) as pool:
        start = time.perf_counter()
        runs = list(pool.map(lambda p: stream_chat(client, url, headers, model, p, tokens), prompts))
        wall = time.perf_counter() - start
    return {"runs": runs, "wall_s": wall}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def summarize(levels: list[dict], tokens: int) -> dict:
    """Pool the rounds of one side at one concurrency level into the reported metrics."""
    runs = [r for level in levels for r in level["runs"]]
    ok = [r for r in runs if "error" not in r]
    total = sum(r["tokens"] for r in ok)
    wall = sum(level["wall_s"] for level in levels)
    ttft = [r["ttft_ms"] for r in ok]

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 1)

    return {
        "requests": len(runs),
        "completion_tokens": total,
        "wall_s": round(wall, 2),
        "aggregate_tps": round(total / wall, 1),
        "per_stream_tps": rounded(statistics.mean(r["decode_tps"] for r in ok) if ok else None),
        "ttft_ms_p50": rounded(percentile(ttft, 0.5)),
        "ttft_ms_p95": rounded(percentile(ttft, 0.95)),
        "errors": len(runs) - len(ok),
        "truncated": sum(r["tokens"] < tokens for r in ok),
        "error_samples": sorted({r["error"] for r in runs if "error" in r})[:3],
    }


def level_tps(level: dict) -> float:
    """Aggregate tokens/s of one side in one round of one level."""
    return sum(r.get("tokens", 0) for r in level["runs"]) / level["wall_s"]


def print_table(rows: list[dict]) -> None:
    columns = [("agg tok/s", "aggregate_tps"), ("stream tok/s", "per_stream_tps"), ("TTFT p50 ms", "ttft_ms_p50"),
               ("TTFT p95 ms", "ttft_ms_p95"), ("errors", "errors"), ("truncated", "truncated")]  # fmt: skip
    print(f"{'clients':>7}  {'ratio':>6}" + "".join(f"  {title:>17}" for title, _ in columns))
    print(f"{'':>7}  {'agg':>6}" + "".join(f"  {'ours / theirs':>17}" for _ in columns))
    for row in rows:
        cells = [f"{row['ours'][key]} / {row['theirs'][key]}".replace("None", "-") for _, key in columns]
        print(f"{row['clients']:>7}  {row['ratio_aggregate_tps']!s:>6}" + "".join(f"  {c:>17}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,4,8,16", help="comma-separated concurrency levels")
    parser.add_argument("--tokens", type=int, default=128, help="max_tokens of every request")
    parser.add_argument("--slots", type=int, default=8, help="parallel slots on both servers")
    parser.add_argument("--rounds", type=int, default=3, help="repeat every level this many times, interleaved")
    parser.add_argument("--llama-server", help="use this llama-server binary instead of building one")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "karen_host.settings")
    from models_app.bundled import bundled_model_path

    model_path = str(bundled_model_path())
    binary = args.llama_server or build_llama_server()
    load_before = round(os.getloadavg()[0], 2)
    raw: dict[tuple[int, str], list[dict]] = {(c, side): [] for c in levels for side in ("ours", "theirs")}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        # Server() runs `serve --no-serve` again, which keeps this config: a scan only creates configs for new files.
        config = configure_ours(workdir, args.slots)
        ours = theirs = None
        try:
            ours = Server(workdir)
            theirs = LlamaServer(binary, model_path, config, args.slots, LLAMA_SERVER_LOG)
            targets = {
                "ours": (ours.url, ours.headers, ours.model),
                "theirs": (theirs.url, {}, Path(model_path).name),
            }
            for side, target in targets.items():  # load our model; let both touch every page once
                warm = run_level(*target, clients=1, tokens=8)
                if errors := [r["error"] for r in warm["runs"] if "error" in r]:
                    raise RuntimeError(f"{side} fails on warm-up: {errors[0]} (llama-server log: {LLAMA_SERVER_LOG})")
            for round_index in range(args.rounds):
                for level_index, clients in enumerate(levels):
                    # Who goes first alternates between levels and, for each level, between rounds.
                    first_theirs = (round_index + level_index) % 2 == 0
                    order = ("theirs", "ours") if first_theirs else ("ours", "theirs")
                    for side in order:
                        print(f"clients {clients}: {side} ...", flush=True)
                        raw[clients, side].append(run_level(*targets[side], clients=clients, tokens=args.tokens))
        finally:
            for server in (theirs, ours):
                if server is not None:
                    server.stop()

    rows = []
    for clients in levels:
        row = {"clients": clients, **{side: summarize(raw[clients, side], args.tokens) for side in ("ours", "theirs")}}
        theirs_tps = row["theirs"]["aggregate_tps"]
        row["ratio_aggregate_tps"] = round(row["ours"]["aggregate_tps"] / theirs_tps, 3) if theirs_tps else None
        # Each round's own ratio shows how much of the pooled one is the machine's noise.
        row["ratio_by_round"] = [
            round(level_tps(ours) / level_tps(theirs), 3) if level_tps(theirs) else None
            for ours, theirs in zip(raw[clients, "ours"], raw[clients, "theirs"], strict=True)
        ]
        rows.append(row)
    result = {
        "model": Path(model_path).name,
        "threads": THREADS,
        "max_tokens": args.tokens,
        "slots": args.slots,
        "rounds": args.rounds,
        "prompts": len(PROMPTS),
        "sampling": {**SAMPLING, "seed": 1, "logit_bias": {str(t): -100 for t in EOG_TOKENS}},
        "ours_config": config,
        "llama_server": {"binary": os.path.relpath(binary, ROOT), "flags": " ".join(theirs.flags)},
        "load_average_before_after": [load_before, round(os.getloadavg()[0], 2)],  # other work skews the numbers
        "levels": rows,
    }
    out = ROOT / "bench" / "results" / "concurrency.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(rows)
    if args.rounds > 1:
        by_round = (f"{r['clients']}: {', '.join(map(str, r['ratio_by_round']))}" for r in rows)
        print("ratio by round (clients: ours / theirs per round): " + "; ".join(by_round))
    for row in rows:
        for side in ("ours", "theirs"):
            for sample in row[side]["error_samples"]:
                print(f"clients {row['clients']}, {side} error: {sample}")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
