"""What tool calling and logprobs cost a stream's decode speed: a strict tool grammar, a lazy one, logprobs.

In-process engine on the bundled model (n_parallel 1), one request at a time, greedy, the same
prompt in every scenario. Each scenario's speed is the engine's own decode tokens/s
(completion tokens over decode time, Outcome.decode_tokens_per_s), the median of --rounds runs
in rotated order:

- free: no grammar, the sampler chain (repeat_penalty 1.1, so not the argmax fast path)
- strict_tool: tool_choice "required" the generic way, one tool whose single string
  argument has no length bound, so the grammar holds every one of the tokens
- lazy_tool: a Hermes template's "auto": a lazy grammar waiting for <tool_call>, which
  free text never writes (the trigger is searched after every token)
- logprobs_5: no grammar, top_logprobs 5 (the chain over the whole vocabulary per token)

Prints a table and writes bench/results/tool_grammar.json. Usage:
    .venv/bin/python bench/tool_grammar.py [--tokens 128] [--rounds 3]
"""

import argparse
import asyncio
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.isolation import NO_EOS, bundled_spec  # noqa: E402  (sets up Django)
from inference.api.tool_formats import plan_for  # noqa: E402
from inference.engine import Job, Sampling, request_bounds  # noqa: E402
from inference.engine.local import LocalEngine  # noqa: E402
from inference.engine.pool import ModelPool  # noqa: E402

NOTE = {"type": "function", "function": {"name": "write_note", "parameters": {
    "type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}}  # fmt: skip
HERMES = (
    "{{ tools | tojson }}<tool_call>{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
    "{% endfor %}<|im_start|>assistant\n"
)
PROMPT = "Write a long note about rivers and the sea."


def job(spec, tokens: int, scenario: str) -> Job:
    sampling = Sampling(temperature=0.0, repeat_penalty=1.1, max_tokens=tokens, logit_bias=dict(NO_EOS))
    messages = [{"role": "user", "content": PROMPT}]
    tools = None
    if scenario == "strict_tool":
        plan = plan_for(spec.chat_template, [NOTE], "required", parallel=False)
        plan.constrain(sampling)
        messages = plan.messages(messages, "")
    elif scenario == "lazy_tool":
        plan = plan_for(HERMES, [NOTE], "auto", parallel=False)
        plan.constrain(sampling)
        tools = plan.template_tools()
    elif scenario == "logprobs_5":
        sampling.n_probs = 5
    return Job(model_id=spec.model_id, kind="chat", messages=messages, sampling=sampling, tools=tools)


async def main(tokens: int, rounds: int) -> dict:
    spec = bundled_spec()
    pool = ModelPool(max_loaded=1, budget_mb=10_000, default_keep_alive_s=None, max_queue=64, queue_timeout_s=120)
    engine = LocalEngine(pool, request_bounds())
    scenarios = ["free", "strict_tool", "lazy_tool", "logprobs_5"]
    runs: dict[str, list[dict]] = {name: [] for name in scenarios}
    await (await engine.submit(spec, job(spec, 8, "free"))).outcome_async()  # load and warm up
    for r in range(rounds):
        for name in scenarios[r % len(scenarios) :] + scenarios[: r % len(scenarios)]:
            outcome = await (await engine.submit(spec, job(spec, tokens, name))).outcome_async()
            assert outcome.status == "completed", (name, outcome)
            runs[name].append({"completion_tokens": outcome.completion_tokens,
                               "decode_tokens_per_s": round(outcome.decode_tokens_per_s, 1)})  # fmt: skip
    pool.close()
    free = statistics.median(r["decode_tokens_per_s"] for r in runs["free"])
    summary = {}
    for name, rows in runs.items():
        speed = statistics.median(r["decode_tokens_per_s"] for r in rows)
        summary[name] = {"median_decode_tokens_per_s": speed, "ratio_to_free": round(speed / free, 3), "runs": rows}
    return {"tokens": tokens, "rounds": rounds, "scenarios": summary}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    report = asyncio.run(main(args.tokens, args.rounds))
    print(f"{'scenario':<14} {'decode tok/s':>13} {'vs free':>8}  tokens per run")
    for name, row in report["scenarios"].items():
        counts = [r["completion_tokens"] for r in row["runs"]]
        print(f"{name:<14} {row['median_decode_tokens_per_s']:>13} {row['ratio_to_free']:>8}  {counts}")
    out = Path(__file__).resolve().parent / "results" / "tool_grammar.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
