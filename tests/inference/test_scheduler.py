"""The continuous-batching scheduler with the real model."""

import asyncio
import itertools
import threading
import time
from dataclasses import replace

import httpx
import llama_cpp
import pytest
from llama_cpp import _internals

from inference.engine import Job, Outcome, Sampling, Token, get_engine
from inference.engine.llama_runner import LlamaRunner
from inference.engine.local import LocalEngine
from inference.engine.pool import ModelPool
from inference.engine.prefill import PAYBACK, Fill
from inference.engine.prompt_cache import common_prefix
from inference.engine.sampling import GreedyArgmax
from inference.engine.scheduler import QueueFull
from inference.engine.spec import ModelSpec
from tests.inference.conftest import NO_EOS_BIAS

NO_EOS = {0: -100.0, 1: -100.0, 2: -100.0}
PROMPTS = [
    "Name a fruit.", "Say something about the moon.", "What is 2 + 2?", "Describe a cat.",
    "Give me a color.", "Write one word.", "Tell me about rivers.", "What do bees make?",
]  # fmt: skip


def chat(spec: ModelSpec, prompt: str, **sampling) -> Job:
    options = {"temperature": 0.0, "max_tokens": 16, "seed": 3, **sampling}
    return Job(model_id=spec.model_id, kind="chat", messages=[{"role": "user", "content": prompt}],
               sampling=Sampling(**options))  # fmt: skip


async def run(engine: LocalEngine, spec: ModelSpec, job: Job) -> tuple[str, Outcome]:
    handle = await engine.submit(spec, job)
    parts = []
    async for event in handle.events():
        if isinstance(event, Token):
            parts.append(event.text)
        else:
            return "".join(parts), event
    raise AssertionError("no outcome")


# 1.1: llama.cpp's sampler chain (penalties, then greedy); 1.0: the numpy argmax fast path.
@pytest.mark.parametrize("repeat_penalty", [1.1, 1.0])
async def test_eight_concurrent_greedy_requests_match_the_same_eight_one_by_one(engine_for, repeat_penalty):
    # Together on a fresh engine: the first one's slots keep the one-by-one prompts whole, and a prompt found
    # whole has only its last token decoded anew where a fresh one is computed in one piece (a near-tie can then
    # go the other way, see the next test). On a fresh engine each pass reuses only the chat template's prefix.
    engine, spec = engine_for(n_parallel=8)
    alone = [await run(engine, spec, chat(spec, p, repeat_penalty=repeat_penalty)) for p in PROMPTS]
    engine.pool.close()
    engine, spec = engine_for(n_parallel=8)
    together = await asyncio.gather(*(run(engine, spec, chat(spec, p, repeat_penalty=repeat_penalty)) for p in PROMPTS))
    assert [text for text, _ in together] == [text for text, _ in alone]
    assert all(o.completion_tokens > 0 for _, o in together)
    stats = engine.pool.get(spec.model_id).worker.stats
    assert stats["batched_tokens"] > stats["steps"]  # some steps really carried several requests


async def test_with_the_prompt_cache_batched_results_still_match_one_by_one(engine_for):
    # A prompt restored from the cache has only its last token decoded anew, where a fresh prompt is
    # computed in one piece; like llama.cpp's server (cache_prompt), a near-tie can then go the other
    # way, so the equality holds between runs that find the same cache state: here every prompt is
    # cached by a first pass, then runs alone and together on its cached KV.
    # Four slots for eight prompts: at any time four of them are in the cache, not in a slot.
    engine, spec = engine_for(n_parallel=4, prompt_cache_mb=64)
    for p in PROMPTS:
        await run(engine, spec, chat(spec, p))
    worker = engine.pool.get(spec.model_id).worker
    reused = worker.stats["prefix_tokens_reused"]
    alone = [await run(engine, spec, chat(spec, p)) for p in PROMPTS]
    # Each prompt of the one-by-one pass found all but its last token: in a slot, or restored from the cache.
    lengths = [len(worker.runner.tokenize_prompt(chat(spec, p))) for p in PROMPTS]
    assert worker.stats["prefix_tokens_reused"] - reused == sum(n - 1 for n in lengths)
    together = await asyncio.gather(*(run(engine, spec, chat(spec, p)) for p in PROMPTS))
    assert [text for text, _ in together] == [text for text, _ in alone]
    assert worker.stats["prompt_cache_hits"] >= 4  # the four in the cache when the one-by-one pass began, at least


async def test_a_prompt_that_lost_its_slot_comes_back_from_the_prompt_cache(engine_for):
    engine, spec = engine_for(n_parallel=1, prompt_cache_mb=64)
    worker_of = lambda: engine.pool.get(spec.model_id).worker  # noqa: E731
    first = await run(engine, spec, chat(spec, "Tell me about rivers."))
    await run(engine, spec, chat(spec, "Describe a cat."))  # takes the only slot: the river prompt is stored
    stats = worker_of().stats
    assert stats["prompt_cache_stored"] == 1 and stats["prompt_cache_entries"] == 1
    assert stats["prompt_cache_bytes"] > 20_000 * 20  # about 23 KB per token, and the prompt has more than 20
    again = await run(engine, spec, chat(spec, "Tell me about rivers."))
    assert again[0] == first[0]  # restored KV gives the same greedy text
    assert stats["prompt_cache_hits"] == 1
    assert stats["prompt_cache_tokens_restored"] == first[1].prompt_tokens - 1  # all but the token decoded anew
    assert stats["prompt_cache_stored"] == 2 and stats["prompt_cache_entries"] == 1  # the cat left as rivers came


async def test_the_next_turn_of_a_conversation_restores_the_previous_turn_and_its_answer(engine_for):
    engine, spec = engine_for(n_parallel=1, prompt_cache_mb=64)
    turn = [{"role": "user", "content": "Tell me about rivers."}]
    answer, first = await run(engine, spec, replace(chat(spec, "", max_tokens=24), messages=turn))
    await run(engine, spec, chat(spec, "Describe a cat."))  # another conversation takes the slot
    follow_up = [*turn, {"role": "assistant", "content": answer}, {"role": "user", "content": "Which is longest?"}]
    _, second = await run(engine, spec, replace(chat(spec, "", max_tokens=4), messages=follow_up))
    stats = engine.pool.get(spec.model_id).worker.stats
    assert stats["prompt_cache_hits"] == 1
    assert stats["prompt_cache_tokens_restored"] > first.prompt_tokens  # the question and (part of) the answer
    assert second.status == "completed"


async def test_no_prompt_cache_keeps_nothing(engine_for):
    engine, spec = engine_for(n_parallel=1, prompt_cache_mb=0)
    for prompt in ("Tell me about rivers.", "Describe a cat.", "Tell me about rivers."):
        await run(engine, spec, chat(spec, prompt, max_tokens=4))
    stats = engine.pool.get(spec.model_id).worker.stats
    assert stats["prompt_cache_stored"] == stats["prompt_cache_hits"] == stats["prompt_cache_entries"] == 0


def test_greedy_argmax_picks_the_token_llama_cpp_greedy_picks(small_model):
    runner = LlamaRunner(ModelSpec.from_model(small_model))
    try:
        bias = {**NO_EOS, 198: 2.5, 28: -3.0}  # ids past the vocabulary are refused before a sampler is built
        fast = runner.new_sampler(Sampling(temperature=0.0, repeat_penalty=1.0, logit_bias=bias), seed=1)
        assert isinstance(fast, GreedyArgmax)
        chain = _internals.LlamaSampler()
        chain.add_logit_bias(runner.n_vocab, bias)
        chain.add_greedy()
        tokens = runner.model.tokenize(b"Once upon a time, in a quiet village,", add_bos=True, special=True)
        batch = runner.batch.batch
        picked = []
        for step in range(32):
            feed = tokens if step == 0 else picked[-1:]
            start = len(tokens) + len(picked) - len(feed)
            for i, token in enumerate(feed):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, start + i, 1
                batch.seq_id[i][0], batch.logits[i] = 0, i == len(feed) - 1
            batch.n_tokens = len(feed)
            assert llama_cpp.llama_decode(runner.ctx.ctx, batch) == 0
            ours, theirs = runner.sample(fast, len(feed) - 1), runner.sample(chain, len(feed) - 1)
            assert ours == theirs, f"step {step}: argmax {ours}, llama.cpp greedy {theirs}"
            picked.append(ours)
        assert 198 in picked  # the boosted token shows up: the bias reached both samplers
    finally:
        runner.close()


async def test_cancel_mid_generation_frees_the_slot_for_the_next_request(engine_for):
    engine, spec = engine_for(n_parallel=1)
    long_job = chat(spec, "Count to a thousand.", max_tokens=2000, logit_bias=NO_EOS)
    handle = await engine.submit(spec, long_job)
    waiting = asyncio.create_task(run(engine, spec, chat(spec, "Say hi.", max_tokens=4)))
    events = handle.events()
    assert isinstance(await anext(events), Token)
    handle.cancel()
    outcome = [e async for e in events][-1]
    assert outcome.status == "cancelled" and 0 < outcome.completion_tokens < 2000
    text, second = await asyncio.wait_for(waiting, timeout=60)
    assert second.status == "completed" and text
    # It waited in the queue while the long request held the slot: its wait is its own and counted.
    assert second.queue_ms >= outcome.decode_ms / 2 and second.timings()["queue_ms"] == round(second.queue_ms, 2)
    stats = engine.pool.get(spec.model_id).worker.stats
    assert stats["queue_admitted"] == 2 and stats["queue_wait_ms_total"] >= second.queue_ms


async def test_loading_the_model_is_not_time_spent_in_its_queue(engine_for):
    # The queue's clock (queue_ms, QUEUE_TIMEOUT_S) starts once the model is loaded, so a load that
    # takes longer than the queue timeout does not time out the request that asked for it.
    engine, spec = engine_for(n_parallel=1)
    _, outcome = await run(engine, spec, chat(spec, "Hi.", max_tokens=2))
    load_ms = engine.pool.stats.load_ms[spec.model_id]
    assert outcome.status == "completed" and outcome.queue_ms < load_ms < outcome.duration_ms


async def test_full_queue_refuses_at_once(engine_for):
    engine, spec = engine_for(n_parallel=1, max_queue=1)
    busy = await engine.submit(spec, chat(spec, "Count.", max_tokens=2000, logit_bias=NO_EOS))
    worker = engine.pool.get(spec.model_id).worker
    for _ in range(6000):  # until it holds the slot and no longer counts as waiting (a busy machine is slow)
        if not worker.waiting:
            break
        await asyncio.sleep(0.01)
    queued = await engine.submit(spec, chat(spec, "Wait.", max_tokens=2))
    with pytest.raises(QueueFull):
        await engine.submit(spec, chat(spec, "One too many.", max_tokens=2))
    busy.cancel()
    assert (await queued.outcome_async()).status == "completed"


async def test_same_system_prompt_reuses_the_cached_prefix_and_changes_nothing(engine_for):
    engine, spec = engine_for(n_parallel=2)
    system = {"role": "system", "content": "You are KAREN, a careful assistant. " * 8}
    job = chat(spec, "")
    first = await run(engine, spec, replace(job, messages=[system, {"role": "user", "content": "Hello"}]))
    worker = engine.pool.get(spec.model_id).worker
    hits_before = worker.stats["prefix_hits"]
    second = await run(engine, spec, replace(chat(spec, ""), messages=[system, {"role": "user", "content": "Hello"}]))
    assert worker.stats["prefix_hits"] == hits_before + 1 and worker.stats["prefix_tokens_reused"] > 60
    assert second[0] == first[0]


def test_queue_overflow_is_429_with_retry_after(live, one_slot, settings):
    settings.MAX_QUEUE = 1
    url, secret, model = live
    headers = {"Authorization": f"Bearer {secret}"}
    long = {"model": model, "prompt": "Count:", "max_tokens": 2000, "stream": True,
            "logit_bias": NO_EOS_BIAS}  # fmt: skip
    with httpx.Client(timeout=60) as client, client.stream("POST", f"{url}/v1/completions", json=long, headers=headers):
        queued = threading.Thread(
            target=httpx.post, args=(f"{url}/v1/completions",),
            kwargs={"json": {**long, "stream": False, "max_tokens": 2}, "headers": headers, "timeout": 120},
        )  # fmt: skip
        queued.start()
        scheduler = get_engine().pool.get(model).worker
        deadline = time.time() + 60
        while scheduler.waiting < 1 and time.time() < deadline:
            time.sleep(0.02)
        refused = httpx.post(f"{url}/v1/completions", json={**long, "stream": False}, headers=headers, timeout=60)
    queued.join(timeout=120)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
    assert refused.json()["error"]["type"] == "rate_limit_error"


async def test_a_batch_smaller_than_the_slot_count_still_serves_every_slot(small_model):
    spec = ModelSpec.from_model(small_model)
    spec = replace(spec, llama_kwargs={**spec.llama_kwargs, "n_parallel": 4, "n_batch": 2, "n_ctx": 2048})
    pool = ModelPool(max_loaded=1, budget_mb=10_000, default_keep_alive_s=None, max_queue=8, queue_timeout_s=60)
    try:
        engine = LocalEngine(pool)
        results = await asyncio.gather(*(run(engine, spec, chat(spec, p, max_tokens=4)) for p in PROMPTS[:4]))
        assert all(outcome.status == "completed" and text for text, outcome in results)
    finally:
        pool.close()


async def test_busy_slots_stay_consecutive_and_a_request_goes_where_it_drops_least_kv(engine_for):
    # llama.cpp decodes a per-slot KV cache's sequences in one ubatch only when their ids are
    # consecutive: the busy slots must never spread out. Among the slots that keep them together, a
    # request goes where it drops the fewest KV tokens, then where it keeps the most.
    engine, spec = engine_for(n_parallel=4, prompt_cache_mb=0)
    jobs = [chat(spec, "Describe a cat."), chat(spec, "Tell me about rivers.")]
    await asyncio.gather(*(run(engine, spec, job) for job in jobs))
    worker = engine.pool.get(spec.model_id).worker
    assert [bool(slot.cached) for slot in worker.slots] == [True, True, False, False]
    prompts = [worker.runner.tokenize_prompt(job) for job in jobs]
    in_slot = {seq_id: next(i for i, p in enumerate(prompts) if worker.slots[seq_id].cached[: len(p)] == p)
               for seq_id in (0, 1)}  # fmt: skip
    # Slot 1's conversation goes on (its KV and more tokens, as a raw prompt): back to slot 1, where it drops
    # nothing and keeps all of it; nothing copied.
    held = list(worker.slots[1].cached)
    copies, reused = worker.stats["slot_copies"], worker.stats["prefix_tokens_reused"]
    more = worker.runner.model.tokenize(b" And then?", add_bos=False, special=False)
    goes_on = Job(model_id=spec.model_id, kind="completion", prompt_tokens=held + more,
                  sampling=Sampling(temperature=0.0, max_tokens=4))  # fmt: skip
    assert (await run(engine, spec, goes_on))[1].status == "completed"
    assert worker.stats["slot_copies"] == copies
    assert worker.stats["prefix_tokens_reused"] == reused + len(held)
    assert worker.slots[1].cached[: len(held) + len(more)] == held + more
    assert [bool(slot.cached) for slot in worker.slots] == [True, True, False, False]
    # A new prompt while nothing runs takes an empty slot, not one whose own tokens it would drop.
    counting = "Count to a thousand, one number on each line, and do not stop before you reach one thousand."
    stream = await engine.submit(spec, chat(spec, counting, max_tokens=3000, logit_bias=NO_EOS))
    events = stream.events()
    assert isinstance(await anext(events), Token)
    assert [slot.seq_id for slot in worker.slots if slot.request] == [2]
    # Beside it, slot 0's request again: slots 1 and 3 keep the busy ones consecutive; 3 drops nothing, so
    # slot 0's KV is copied there.
    copies = worker.stats["slot_copies"]
    text, outcome = await run(engine, spec, jobs[in_slot[0]])
    stream.cancel()
    assert [e async for e in events][-1].status == "cancelled"
    assert outcome.status == "completed" and text
    assert worker.stats["slot_copies"] == copies + 1
    prompt = prompts[in_slot[0]]
    assert worker.slots[3].cached[: len(prompt)] == prompt == worker.slots[0].cached[: len(prompt)]


async def test_a_long_prompt_fills_in_fixed_chunks_and_leaves_the_streams_their_share(engine_for):
    # n_batch 64 and 2 slots: chunks of 63 tokens. While the other request streams, each chunk after the first
    # waited for the streams to have had (1 - share) / share times the previous chunk's time to themselves.
    # (Its text is not compared with the prompt's alone: beside a decoding sequence, llama.cpp splits a step
    # into ubatches of equal tokens per sequence, and a different split can flip a greedy near-tie.)
    long_prompt = "Summarise this list: " + " ".join(f"item{i}" for i in range(150))
    engine, spec = engine_for(n_parallel=2, n_batch=64)
    counting = "Count to a thousand, one number on each line, and do not stop before you reach one thousand."
    stream = await engine.submit(spec, chat(spec, counting, max_tokens=3000, logit_bias=NO_EOS))
    events = stream.events()
    assert isinstance(await anext(events), Token)
    worker = engine.pool.get(spec.model_id).worker
    policy = worker.prefill
    estimate = policy.s_per_token  # from the stream's own prompt (over 32 tokens)
    assert estimate is not None
    calls = []
    account = policy.account

    def spy(seconds: float, fill: Fill, *, generating: bool) -> None:
        calls.append((seconds, fill.long_chunk, generating, policy.credit_s))
        account(seconds, fill, generating=generating)

    policy.account = spy
    text, outcome = await run(engine, spec, chat(spec, long_prompt, max_tokens=8))
    stream.cancel()
    assert [e async for e in events][-1].status == "cancelled"  # it streamed all along
    assert outcome.status == "completed" and text and policy.chunk == 63
    chunks = [i for i, (_, long_chunk, generating, _) in enumerate(calls) if long_chunk and generating]
    # Every chunk went in beside the stream (the shared chat-template prefix came from its slot).
    assert len(chunks) >= (outcome.prompt_tokens - 64) // 63 >= 4
    assert all(calls[i][3] >= 0 for i in chunks)  # each went in with nothing owed
    # Before the first chunk the stream had its share of the first chunk's estimated time, too.
    owed = [seconds for seconds, _, _, credit in calls[: chunks[0]] if credit < 0]
    assert sum(owed) >= PAYBACK * estimate * 63 * 0.999
    for before, after in itertools.pairwise(chunks):
        decoded = sum(seconds for seconds, *_ in calls[before + 1 : after])
        assert decoded >= PAYBACK * calls[before][0] * 0.999
    assert worker.stats["long_prefill_chunks"] == len(chunks)
    long_s = sum(calls[i][0] for i in chunks)
    assert worker.stats["long_prefill_s"] == pytest.approx(long_s)


async def test_conversations_arriving_together_compute_their_shared_system_prompt_once(engine_for):
    # KAREN's conversations start with the same system prompt. Arriving together, the first fills it and
    # the others wait for that step, then copy it: each of them reuses at least the system prompt, whenever
    # it arrived (had they been seated beside the first, each would have computed it again).
    engine, spec = engine_for(n_parallel=4)
    system = "You are KAREN, a careful assistant. " + " ".join(f"Rule {i}: answer briefly." for i in range(30))
    jobs = [
        replace(
            chat(spec, question),
            messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
        )
        for question in ("What is a cat?", "Name a river.", "Why is the sky blue?", "Count to three.")
    ]
    results = await asyncio.gather(*(run(engine, spec, job) for job in jobs))
    assert all(outcome.status == "completed" for _, outcome in results)
    worker = engine.pool.get(spec.model_id).worker
    shared = min(
        common_prefix(worker.runner.tokenize_prompt(a), worker.runner.tokenize_prompt(b))
        for a, b in itertools.combinations(jobs, 2)
    )
    assert shared > 200
    assert worker.stats["prefix_tokens_reused"] >= 3 * shared
