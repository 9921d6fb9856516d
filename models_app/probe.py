"""Probe a GGUF file in a child process before the server may load it.

llama.cpp's loader has had heap overflows, so a new or changed file is first read,
template-rendered and loaded here, in a separate process with memory and time limits.
Run as `python -m models_app.probe PATH`; prints one JSON object on stdout.
"""

import json
import resource
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models_app.chat_templates import ChatTemplateError, render_chat_template
from models_app.gguf_files import GGUFError, read_metadata

SAMPLE_CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello!"},
    {"role": "assistant", "content": "Hi! How can I help?"},
    {"role": "user", "content": "Say one word."},
]


@dataclass
class ProbeResult:
    ok: bool
    reason: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


def _probe(path: Path) -> dict[str, Any]:
    """Read, render and load `path` in this process; the caller is the child."""
    try:
        metadata = read_metadata(path)
    except GGUFError as exc:
        return {"ok": False, "reason": str(exc)}
    if metadata["chat_template"]:
        try:
            render_chat_template(
                metadata["chat_template"],
                SAMPLE_CONVERSATION,
                bos_token=metadata["bos_token"],
                eos_token=metadata["eos_token"],
            )
        except ChatTemplateError as exc:
            return {"ok": False, "reason": f"chat template does not render: {exc}", "metadata": metadata}
    import llama_cpp  # imported late: reading metadata must not need it

    try:
        llm = llama_cpp.Llama(str(path), n_ctx=256, n_batch=64, n_gpu_layers=0, verbose=False)
        llm.tokenize(b"Hello, world!")
        llm.close()
    except Exception as exc:
        return {"ok": False, "reason": f"llama.cpp could not load it: {exc}", "metadata": metadata}
    return {"ok": True, "metadata": metadata}


def probe_model_file(path: Path, *, timeout_s: float, memory_mb: int = 0) -> ProbeResult:
    """Probe `path` in a child limited to `memory_mb` of address space and `timeout_s`."""
    limit = (memory_mb or (path.stat().st_size // 2**20 + 2048)) * 2**20

    def limit_child() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    try:
        done = subprocess.run(
            [sys.executable, "-m", "models_app.probe", str(path)],
            capture_output=True,
            timeout=timeout_s,
            preexec_fn=limit_child,
            cwd=Path(__file__).resolve().parent.parent,
        )
    except subprocess.TimeoutExpired:
        return ProbeResult(False, f"probe timed out after {timeout_s:.0f}s")
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    if done.returncode == 0 and lines:
        try:
            return ProbeResult(**json.loads(lines[-1]))
        except (ValueError, TypeError):
            pass
    if done.returncode < 0:
        return ProbeResult(False, f"probe crashed ({signal.Signals(-done.returncode).name})")
    tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
    return ProbeResult(False, f"probe failed (exit {done.returncode}): {tail[0][:300]}")


if __name__ == "__main__":
    print(json.dumps(_probe(Path(sys.argv[1])), default=str))
