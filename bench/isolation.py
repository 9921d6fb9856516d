"""What a hostile neighbour costs a stream: one greedy stream alone, and beside a client that sends
(a) plain sampled requests, (b) the same with MAX_LOGIT_BIAS logit_bias entries, or (c) batches of long
embedding inputs. (a) is the fair baseline for (b): any second request shares the cores.

In-process engine on the bundled model (one loaded copy, n_parallel 2). Each round runs
the scenarios in a rotated order; the stream produces exactly --tokens tokens
(end-of-generation suppressed) and its speed is its completion tokens (the engine's own
count) over the time from its first token to its end. The neighbour starts at the
stream's first token and repeats until the stream ends.

Prints a table and writes bench/results/isolation.json. Usage:
    .venv/bin/python bench/isolation.py [--tokens 256] [--rounds 3]
"""

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "karen_host.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402

from inference.engine import Job, Sampling, Token, request_bounds  # noqa: E402
from inference.engine.local import LocalEngine  # noqa: E402
from inference.engine.pool import ModelPool  # noqa: E402
from inference.engine.spec import ModelSpec  # noqa: E402
from models_app.bundled import bundled_model_path  # noqa: E402
from models_app.gguf_files import read_metadata  # noqa: E402
from models_app.models import LLMModel, ModelConfig  # noqa: E402
from models_app.scanning import apply_metadata  # noqa: E402

NO_EOS = {0: -100.0, 1: -100.0, 2: -100.0}


def bundled_spec() -> ModelSpec:
    path = bundled_model_path()
    model = LLMModel(id="smollm2", name="SmolLM2", file_path=str(path), file_size=path.stat().st_size)
    apply_metadata(model, read_metadata(path))
    model.config = ModelConfig(model=model, n_ctx=4096, n_parallel=2)
    return ModelSpec.from_model(model)


def chat(spec: ModelSpec, text: str, **sampling) -> Job:
    return Job(model_id=spec.model_id, kind="chat", messages=[{"role": "user", "content": text}],
               sampling=Sampling(**sampling))  # fmt: skip


async def biased_neighbour(engine: LocalEngine, spec: ModelSpec, stop: asyncio.Event) -> dict:
    return await sampled_neighbour(
        engine, spec, stop, {token: 0.5 for token in range(100, 100 + settings.MAX_LOGIT_BIAS)}
    )


async def plain_neighbour(engine: LocalEngine, spec: ModelSpec, stop: asyncio.Event) -> dict:
    return await sampled_neighbour(engine, spec, stop, {})


async def sampled_neighbour(engine: LocalEngine, spec: ModelSpec, stop: asyncio.Event, bias: dict) -> dict:
    """8-token sampled requests, one after another: the fair baseline is the same without the bias."""
    times = []
    while not stop.is_set():
        started = time.perf_counter()
        handle = await engine.submit(spec, chat(spec, "Say something.", temperature=0.7, max_tokens=8,
                                                logit_bias=bias))  # fmt: skip
        await handle.outcome_async()
        times.append(time.perf_counter() - started)
    return {"requests": len(times), "median_s_per_8_tokens": round(statistics.median(times), 3) if times else None}


async def embedding_neighbour(engine: LocalEngine, spec: ModelSpec, stop: asyncio.Event) -> dict:
    inputs = ["A sentence about rivers, mountains and the sea, long enough to take a while. " * 12] * 16
    batches, tokens = 0, 0
    while not stop.is_set():
        handle = await engine.submit(spec, Job(model_id=spec.model_id, kind="embedding", inputs=inputs))
        outcome = await handle.outcome_async()
        batches, tokens = batches + 1, tokens + outcome.prompt_tokens
    return {"batches_of_16": batches, "embedded_tokens": tokens}


async def stream_beside(engine: LocalEngine, spec: ModelSpec, tokens: int, neighbour, prompt: str) -> dict:
    handle = await engine.submit(spec, chat(spec, prompt, temperature=0.0, repeat_penalty=1.0, max_tokens=tokens,
                                            logit_bias=NO_EOS))  # fmt: skip
    events = handle.events()
    assert isinstance(await anext(events), Token)
    first = time.perf_counter()
    stop = asyncio.Event()
    side = asyncio.create_task(neighbour(engine, spec, stop)) if neighbour else None
    async for event in events:
        if not isinstance(event, Token):
            outcome = event
    ended = time.perf_counter()
    stop.set()
    side_result = await side if side else {}
    return {"tokens_per_s": round((outcome.completion_tokens - 1) / (ended - first), 1), **side_result}


async def main(tokens: int, rounds: int) -> dict:
    spec = bundled_spec()
    pool = ModelPool(max_loaded=1, budget_mb=10_000, default_keep_alive_s=None, max_queue=64, queue_timeout_s=120)
    engine = LocalEngine(pool, request_bounds())
    scenarios = {"alone": None, "beside_sampled": plain_neighbour, "beside_logit_bias": biased_neighbour,
                 "beside_embeddings": embedding_neighbour}  # fmt: skip
    results: dict[str, list[dict]] = {name: [] for name in scenarios}
    await stream_beside(engine, spec, 8, None, "Warm up.")
    names = list(scenarios)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate who goes first
            results[name].append(await stream_beside(engine, spec, tokens, scenarios[name], f"Story {r} {name}:"))
    pool.close()
    alone = statistics.median(run["tokens_per_s"] for run in results["alone"])
    summary = {
        name: {"median_tokens_per_s": statistics.median(run["tokens_per_s"] for run in runs),
               "ratio_to_alone": round(statistics.median(run["tokens_per_s"] for run in runs) / alone, 3),
               "runs": runs}
        for name, runs in results.items()
    }  # fmt: skip
    return {"tokens": tokens, "rounds": rounds, "max_logit_bias": settings.MAX_LOGIT_BIAS, "scenarios": summary}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    report = asyncio.run(main(args.tokens, args.rounds))
    print(f"{'scenario':<20} {'stream tok/s':>13} {'vs alone':>9}  neighbour")
    for name, row in report["scenarios"].items():
        side = {k: v for k, v in row["runs"][-1].items() if k != "tokens_per_s"}
        print(f"{name:<20} {row['median_tokens_per_s']:>13} {row['ratio_to_alone']:>9}  {side or ''}")
    out = ROOT / "bench" / "results" / "isolation.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
