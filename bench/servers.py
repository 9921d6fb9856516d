"""The servers bench/concurrency.py compares: llama.cpp's own server, and the setup of ours.

llama-server is built on demand from the llama.cpp vendored in the llama-cpp-python sdist we run on
(bench/build_llama_server.sh, into the git-ignored bench/.cache/), so both sides run the same ggml code;
it gets flags mirroring our ModelConfig. Ours runs as bench/throughput.py's Server, after
`configure_ours` set the bundled model's config for the workload.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from bench.throughput import ROOT, THREADS, free_port

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
            "--jinja", "--no-webui",
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

    def rss_mb(self) -> float:
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

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


def configure_ours(workdir: Path, slots: int, n_ctx: int) -> dict:
    """Prepare our throwaway instance and set the bundled model's config; returns the config it runs with."""
    env = {**os.environ, "VAR_DIR": str(workdir / "var"), "MODELS_DIR": str(workdir / "models"),
           "LOG_LEVEL": "WARNING"}  # fmt: skip
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "serve", "--no-serve"], env=env, check=True, capture_output=True)
    code = f"""
import json
from models_app.models import ModelConfig
for config in ModelConfig.objects.all():
    config.n_ctx, config.n_threads, config.n_parallel = {n_ctx}, {THREADS}, {slots}
    config.save()
keys = ["n_ctx", "n_parallel", "n_threads", "n_batch", "flash_attn", "cache_type_k", "cache_type_v", "use_mmap",
        "use_mlock"]
print(json.dumps({{k: getattr(config, k) for k in keys}}))
"""
    out = subprocess.run([*manage, "shell", "-c", code], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])
