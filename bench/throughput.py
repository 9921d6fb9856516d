"""Single-stream speed: /v1/chat/completions (SSE) and /ws/v1/generate against llama-cpp-python direct.

Starts `manage.py serve` on a free port with a throwaway database, and, in a separate
child process, llama-cpp-python alone with the same model, context, threads and batch.
Both decode the same chat prompts (rendered with the model's own template) greedily,
with end-of-generation suppressed so each run produces exactly --tokens tokens. The
two sides never run at the same time, and rounds alternate between them.

Prints a table and writes bench/results/throughput.json. Usage:
    .venv/bin/python bench/throughput.py [--tokens 128] [--rounds 3]
"""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works to a child.",
    "List some things to pack for a weekend hike and say why.",
]
N_CTX, N_BATCH = 4096, 512
THREADS = len(os.sched_getaffinity(0))
# The same sampling on both sides (greedy; the server's per-model defaults would differ).
SAMPLING = {"temperature": 0.0, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "repeat_penalty": 1.0}

DIRECT_CHILD = r"""
import json, sys, time, os, psutil, llama_cpp
args = json.loads(sys.argv[1])
llm = llama_cpp.Llama(args["model"], n_ctx=args["n_ctx"], n_batch=args["n_batch"], n_threads=args["threads"],
                      n_threads_batch=args["threads"], n_gpu_layers=-1, verbose=False)
bias = {t: -100.0 for t in args["eog"]}
results = []
for prompt in args["prompts"]:
    start = time.perf_counter(); first = last = None; n = 0
    for chunk in llm.create_completion(prompt, max_tokens=args["tokens"], stream=True, logit_bias=bias, seed=1,
                                       **args["sampling"]):
        now = time.perf_counter(); first = first or now; last = now; n += 1
    results.append({"ttft_ms": (first - start) * 1000, "tokens": n,
                    "decode_tps": (n - 1) / (last - first)})
print(json.dumps({"runs": results, "rss_mb": psutil.Process().memory_info().rss / 2**20}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rendered_prompts(model_path: str) -> tuple[list[str], list[int]]:
    from models_app.chat_templates import render_chat_template
    from models_app.gguf_files import read_metadata

    meta = read_metadata(Path(model_path))
    prompts = [
        render_chat_template(
            meta["chat_template"],
            [{"role": "user", "content": p}],
            bos_token=meta["bos_token"],
            eos_token=meta["eos_token"],
        )
        for p in PROMPTS
    ]
    eog = [meta["extra"].get("tokenizer.ggml.eos_token_id"), meta["extra"].get("tokenizer.ggml.bos_token_id"), 0]
    return prompts, sorted({t for t in eog if t is not None})


def run_direct(model_path: str, prompts: list[str], eog: list[int], tokens: int) -> dict:
    args = {"model": model_path, "n_ctx": N_CTX, "n_batch": N_BATCH, "threads": THREADS, "prompts": prompts,
            "eog": eog, "tokens": tokens, "sampling": SAMPLING}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", DIRECT_CHILD, json.dumps(args)], capture_output=True, check=True)
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


def stream_chat(url: str, headers: dict[str, str], model: str, prompt: str, tokens: int, eog: list[int]) -> dict:
    """One greedy SSE chat completion: time to first token, tokens, decode tokens/s."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
            **SAMPLING, "seed": 1, "stream": True, "stream_options": {"include_usage": True},
            "logit_bias": {str(t): -100 for t in eog}}  # fmt: skip
    start = time.perf_counter()
    first = last = usage = None
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers, timeout=300) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            elif chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                last = time.perf_counter()
                first = first or last
    n = usage["completion_tokens"]
    return {"ttft_ms": (first - start) * 1000, "tokens": n, "decode_tps": (n - 1) / (last - first)}


class Server:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.env = {**os.environ, "VAR_DIR": str(workdir / "var"), "MODELS_DIR": str(workdir / "models"),
                    "LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"}  # fmt: skip
        manage = [sys.executable, str(ROOT / "manage.py")]
        subprocess.run([*manage, "serve", "--no-serve"], env=self.env, check=True, capture_output=True)
        out = subprocess.run(
            [*manage, "create_token", "bench", "--scopes", "inference", "models:read"],
            env=self.env, check=True, capture_output=True,
        )  # fmt: skip
        self.secret = out.stdout.decode().strip().splitlines()[-1]
        # --web-only: the Celery worker and beat would compete with the model for the cores.
        self.proc = subprocess.Popen([*manage, "serve", "--web-only", "--port", str(self.port)], env=self.env,
                                     start_new_session=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        models = httpx.get(f"{self.url}/v1/models", headers=self.headers).json()["data"]
        self.model = models[0]["id"]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}

    def stream(self, prompt: str, tokens: int, eog: list[int]) -> dict:
        return stream_chat(self.url, self.headers, self.model, prompt, tokens, eog)

    def websocket(self, prompt: str, tokens: int, eog: list[int]) -> dict:
        from websockets.sync.client import connect

        frame = {"type": "generate", "id": "b", "model": self.model, "messages": [{"role": "user", "content": prompt}],
                 "max_tokens": tokens, **SAMPLING, "seed": 1, "logit_bias": {str(t): -100 for t in eog}}  # fmt: skip
        url = self.url.replace("http://", "ws://") + "/ws/v1/generate"
        with connect(url, additional_headers=self.headers) as ws:
            start = time.perf_counter()
            ws.send(json.dumps(frame))
            first = last = None
            while True:
                event = json.loads(ws.recv(timeout=300))
                if event["type"] == "token":
                    now = time.perf_counter()
                    first = first or now
                    last = now
                elif event["type"] in ("done", "error"):
                    break
        n = event["usage"]["completion_tokens"]
        return {"ttft_ms": (first - start) * 1000, "tokens": n, "decode_tps": (n - 1) / (last - first)}

    def rss_mb(self) -> float:
        process = psutil.Process(self.proc.pid)
        return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)  # the server and anything it started
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "karen_host.settings")
    from models_app.bundled import bundled_model_path

    model_path = str(bundled_model_path())
    prompts, eog = rendered_prompts(model_path)
    direct_runs, server_runs, ws_runs, direct_rss = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp))
        try:
            server.stream(PROMPTS[0], 8, eog)  # load the model and warm up
            for _ in range(args.rounds):
                direct = run_direct(model_path, prompts, eog, args.tokens)
                direct_runs += direct["runs"]
                direct_rss.append(direct["rss_mb"])
                server_runs += [server.stream(p, args.tokens, eog) for p in PROMPTS]
                ws_runs += [server.websocket(p, args.tokens, eog) for p in PROMPTS]
            time.sleep(1)
            server_rss = server.rss_mb()
        finally:
            server.stop()

    def summary(runs: list[dict]) -> dict:
        return {
            "decode_tps_median": round(statistics.median(r["decode_tps"] for r in runs), 1),
            "ttft_ms_median": round(statistics.median(r["ttft_ms"] for r in runs), 1),
            "tokens_per_run": round(statistics.mean(r["tokens"] for r in runs), 1),
            "runs": len(runs),
        }

    result = {
        "model": Path(model_path).name,
        "n_ctx": N_CTX,
        "n_batch": N_BATCH,
        "threads": THREADS,
        "max_tokens": args.tokens,
        "direct": {**summary(direct_runs), "rss_mb": round(statistics.median(direct_rss), 1)},
        "server_sse": {**summary(server_runs), "rss_mb_loaded_idle": round(server_rss, 1)},
        "server_websocket": summary(ws_runs),
    }
    result["ratio_decode_tps"] = round(
        result["server_sse"]["decode_tps_median"] / result["direct"]["decode_tps_median"], 3
    )
    result["ratio_websocket_decode_tps"] = round(
        result["server_websocket"]["decode_tps_median"] / result["direct"]["decode_tps_median"], 3
    )
    result["rss_overhead_mb"] = round(result["server_sse"]["rss_mb_loaded_idle"] - result["direct"]["rss_mb"], 1)
    out = ROOT / "bench" / "results" / "throughput.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    d, s = result["direct"], result["server_sse"]
    print(f"{'':28}{'decode tok/s':>14}{'TTFT ms':>10}{'RSS MB':>9}")
    print(f"{'llama-cpp-python direct':28}{d['decode_tps_median']:>14}{d['ttft_ms_median']:>10}{d['rss_mb']:>9}")
    print(f"{'karen-host /v1 SSE':28}{s['decode_tps_median']:>14}{s['ttft_ms_median']:>10}{s['rss_mb_loaded_idle']:>9}")
    w = result["server_websocket"]
    print(f"{'karen-host websocket':28}{w['decode_tps_median']:>14}{w['ttft_ms_median']:>10}{'':>9}")
    print(
        f"ratio to direct, decode: SSE {result['ratio_decode_tps']}, websocket {result['ratio_websocket_decode_tps']};"
        f" RSS overhead: {result['rss_overhead_mb']} MB"
    )
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
