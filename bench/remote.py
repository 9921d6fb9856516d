"""Remote against local mode: the same /v1 API, the model in the web process or on an inference node.

One PostgreSQL database (created here, dropped at the end) and Redis back two deployments:
    local:  the web server (karen_host.web) with INFERENCE_MODE=local, the engine in the web process
    remote: the web server with INFERENCE_MODE=remote + one `manage.py runworker inference` node,
            every token crossing Redis (channels-redis) from the node to the web process
Both are up for the whole run but measured in turn, alternating per round, with the same
model config (n_ctx 4096, n_parallel = --clients, threads = the cores) and the same greedy
chat prompts with end-of-generation suppressed, so each stream yields exactly --tokens.
Per mode: single-stream decode tokens/s and time to first token (medians), and aggregate
tokens/s with --clients concurrent streams (all completion tokens / wall time).

Prints a table and writes bench/results/remote.json. Needs PostgreSQL and Redis on
127.0.0.1 (as the scale-out tests). Usage:
    .venv/bin/python bench/remote.py [--tokens 64] [--rounds 2] [--clients 8]
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
import psycopg

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.throughput import PROMPTS, THREADS, free_port, stream_chat  # noqa: E402

POSTGRES = "postgresql://postgres@127.0.0.1:5432"
REDIS_URL = "redis://127.0.0.1:6379/12"
EOG_TOKENS = [0, 1, 2]  # SmolLM2: <|endoftext|>, <|im_start|>, <|im_end|>
CONFIG = (
    "from models_app.models import ModelConfig; ModelConfig.objects.update(n_ctx=4096, n_parallel={}, n_threads={})"
)


class Deployment:
    """The database, then a web node per mode (and the inference node for remote)."""

    def __init__(self, workdir: Path, clients: int) -> None:
        self.db = f"karen_bench_remote_{os.getpid()}"
        with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.db}"')
        self.workdir = workdir
        self.env = {**os.environ, "DATABASE_URL": f"{POSTGRES}/{self.db}", "REDIS_URL": REDIS_URL,
                    "CELERY_BROKER_URL": "memory://", "VAR_DIR": str(workdir / "var"),
                    "MODELS_DIR": str(workdir / "models"), "LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"}  # fmt: skip
        self.processes: list[subprocess.Popen] = []
        self.manage("serve", "--no-serve")  # migrate, link and scan the bundled model
        self.manage("shell", "-c", CONFIG.format(clients, THREADS))
        out = self.manage("create_token", "bench", "--scopes", "inference", "models:read")
        self.headers = {"Authorization": f"Bearer {out.strip().splitlines()[-1]}"}
        self.urls = {"local": self.web("local"), "remote": self.web("remote")}
        self.spawn("node", [sys.executable, "manage.py", "runworker", "inference"], INFERENCE_NODE_NAME="bench-node")
        models = httpx.get(f"{self.urls['local']}/v1/models", headers=self.headers).json()["data"]
        self.model = models[0]["id"]

    def manage(self, *args: str) -> str:
        argv = [sys.executable, "manage.py", *args]
        return subprocess.run(argv, env=self.env, cwd=ROOT, check=True, capture_output=True, text=True).stdout

    def spawn(self, name: str, argv: list[str], **env: str) -> None:
        log = (self.workdir / f"{name}.log").open("wb")
        self.processes.append(subprocess.Popen(argv, env={**self.env, **env}, cwd=ROOT, stdout=log, stderr=log))

    def web(self, mode: str) -> str:
        port = free_port()
        argv = [sys.executable, "-m", "karen_host.web", "--host", "127.0.0.1", "--port", str(port)]
        self.spawn(f"web-{mode}", argv, INFERENCE_MODE=mode)
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    return url
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(f"the {mode} web node did not start")

    def stream(self, mode: str, prompt: str, tokens: int) -> dict:
        return stream_chat(self.urls[mode], self.headers, self.model, prompt, tokens, EOG_TOKENS)

    def aggregate(self, mode: str, clients: int, tokens: int) -> dict:
        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            runs = list(pool.map(lambda i: self.stream(mode, PROMPTS[i % len(PROMPTS)], tokens), range(clients)))
        wall = time.perf_counter() - start
        return {"aggregate_tps": sum(r["tokens"] for r in runs) / wall, "tokens": sum(r["tokens"] for r in runs)}

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(timeout=20)
        with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    modes = ("local", "remote")
    single: dict[str, list[dict]] = {m: [] for m in modes}
    aggregate: dict[str, list[dict]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        deployment = Deployment(Path(tmp), args.clients)
        try:
            for mode in modes:  # load the model on each side and warm both prompt caches
                deployment.aggregate(mode, args.clients, 8)
            for round_no in range(args.rounds):
                for mode in modes if round_no % 2 == 0 else modes[::-1]:
                    single[mode] += [deployment.stream(mode, p, args.tokens) for p in PROMPTS]
                    aggregate[mode].append(deployment.aggregate(mode, args.clients, args.tokens))
        finally:
            deployment.stop()

    result: dict = {"max_tokens": args.tokens, "clients": args.clients, "rounds": args.rounds, "threads": THREADS}
    for mode in modes:
        result[mode] = {
            "decode_tps_median": round(statistics.median(r["decode_tps"] for r in single[mode]), 1),
            "ttft_ms_median": round(statistics.median(r["ttft_ms"] for r in single[mode]), 1),
            "aggregate_tps_median": round(statistics.median(r["aggregate_tps"] for r in aggregate[mode]), 1),
            "single_runs": len(single[mode]),
        }
    for key in ("decode_tps_median", "aggregate_tps_median"):
        result[f"ratio_{key}"] = round(result["remote"][key] / result["local"][key], 3)
    out = ROOT / "bench" / "results" / "remote.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'':8}{'decode tok/s':>14}{'TTFT ms':>10}{f'aggregate tok/s @{args.clients}':>22}")
    for mode in modes:
        r = result[mode]
        print(f"{mode:8}{r['decode_tps_median']:>14}{r['ttft_ms_median']:>10}{r['aggregate_tps_median']:>22}")
    print(
        f"remote / local: decode {result['ratio_decode_tps_median']}, "
        f"aggregate {result['ratio_aggregate_tps_median']}; wrote {out.relative_to(ROOT)}"
    )


if __name__ == "__main__":
    main()
