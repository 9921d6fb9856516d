"""One request cannot stop the others: guarded steps, a supervised scheduler, a fair queue, lanes, embeddings aside."""

import asyncio
import threading

import httpx
import pytest

from inference.engine import Job, Token, get_engine
from models_app.models import ModelConfig, UsageRecord
from tests.conftest import wait_for
from tests.inference.conftest import NO_EOS_BIAS as NO_EOS_BY_NAME
from tests.inference.test_scheduler import chat, run

NO_EOS_BIAS = {int(k): v for k, v in NO_EOS_BY_NAME.items()}


def _wait_for(condition, timeout=60.0):
    assert wait_for(condition, timeout), "timed out"


def owned(job: Job, owner: str, lane: str = "interactive") -> Job:
    job.owner, job.lane = owner, lane
    return job


# -- the supervisor ------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_scheduler_that_dies_ends_its_requests_with_503_and_a_fresh_one_serves_the_next(live, one_slot):
    url, secret, model = live
    headers = {"Authorization": f"Bearer {secret}"}
    long_body = {"model": model, "messages": [{"role": "user", "content": "Count."}], "max_tokens": 2000,
                 "temperature": 0, "logit_bias": NO_EOS_BY_NAME}  # fmt: skip
    results = {}

    def send(name):
        results[name] = httpx.post(f"{url}/v1/chat/completions", json=long_body, headers=headers, timeout=120)

    threads = [threading.Thread(target=send, args=(name,)) for name in ("running", "queued")]
    threads[0].start()
    _wait_for(lambda: (m := get_engine().pool.get(model)) is not None and m.worker.running == 1)
    threads[1].start()
    dying = get_engine().pool.get(model).worker
    _wait_for(lambda: dying.waiting == 1)

    def injected_failure():  # outside every request's guard: a bug in the loop itself
        raise RuntimeError("injected")

    dying._expire_waiting = injected_failure
    for thread in threads:
        thread.join(timeout=120)
    for name in ("running", "queued"):
        assert results[name].status_code == 503, results[name].text
        assert results[name].json()["error"]["code"] == "scheduler_failed"
    loaded = get_engine().pool.get(model)
    assert loaded.worker is not dying and loaded.worker.alive and get_engine().pool.stats.scheduler_restarts == 1
    plain = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    assert httpx.post(f"{url}/v1/chat/completions", json=plain, headers=headers, timeout=60).status_code == 200
    assert loaded.in_flight == 0
    assert not UsageRecord.objects.filter(status="started").exists()
    assert UsageRecord.objects.filter(status="error").count() == 2
    health = httpx.get(f"{url}/health", timeout=10).json()
    assert health["scheduler_restarts"] == 1 and health["schedulers_alive"] is True


async def test_a_request_whose_sampling_fails_ends_alone_and_the_others_finish(engine_for):
    engine, spec = engine_for(n_parallel=2)
    bad = await engine.submit(spec, chat(spec, "Count.", max_tokens=2000, logit_bias=NO_EOS_BIAS))
    loaded = engine.pool.get(spec.model_id)
    await asyncio.to_thread(_wait_for, lambda: loaded.worker.running == 1)
    bad_sampler = next(slot.request.sampler for slot in loaded.worker.slots if slot.request)
    real_sample = loaded.runner.sample

    def failing_sample(sampler, index):
        if sampler is bad_sampler:
            raise RuntimeError("injected")
        return real_sample(sampler, index)

    loaded.runner.sample = failing_sample
    try:
        text, good = await run(engine, spec, chat(spec, "Name a colour.", max_tokens=8))
        outcome = await bad.outcome_async()
    finally:
        loaded.runner.sample = real_sample
    assert good.status == "completed" and text
    assert outcome.status == "error" and outcome.error_code == "engine_error"
    assert loaded.worker.stats["request_failures"] == 1 and loaded.worker.alive


# -- the fair queue and the lanes ---------------------------------------------------------


async def _admission_order(engine, spec, blocker_job, jobs: list[Job]) -> list[str]:
    """Hold the only slot with `blocker_job`, queue `jobs`, release the slot: the order they got it in."""
    blocker = await engine.submit(spec, blocker_job)
    loaded = engine.pool.get(spec.model_id)
    await asyncio.to_thread(_wait_for, lambda: loaded.worker.running == 1)
    handles = [await engine.submit(spec, job) for job in jobs]
    await asyncio.to_thread(_wait_for, lambda: loaded.worker.waiting == len(jobs))
    finished: list[str] = []
    for job, handle in zip(jobs, handles, strict=True):
        handle.on_outcome(lambda _o, name=job.id: finished.append(name))
    blocker.cancel()
    await asyncio.gather(*(h.outcome_async() for h in handles))
    return finished  # one slot: each ends before the next is admitted, so the end order is the admission order


async def test_one_tokens_forty_requests_do_not_queue_ahead_of_another_tokens_one(engine_for):
    engine, spec = engine_for(n_parallel=1, max_queue=100)
    blocker = owned(chat(spec, "Count.", max_tokens=2000, logit_bias=NO_EOS_BIAS), "a")
    from_a = [owned(chat(spec, f"Say {i}.", max_tokens=1), "a") for i in range(40)]
    from_b = owned(chat(spec, "Say b.", max_tokens=1), "b")
    order = await _admission_order(engine, spec, blocker, [*from_a, from_b])
    assert order.index(from_b.id) <= 1  # at most one of a's waiting requests goes first


async def test_one_token_cannot_fill_the_queue_for_the_others(engine_for):
    engine, spec = engine_for(n_parallel=1, max_queue=4)  # QUEUE_SHARE_PER_TOKEN 0.5: two each
    blocker = await engine.submit(spec, owned(chat(spec, "Count.", max_tokens=2000, logit_bias=NO_EOS_BIAS), "a"))
    loaded = engine.pool.get(spec.model_id)
    await asyncio.to_thread(_wait_for, lambda: loaded.worker.running == 1)
    mine = [await engine.submit(spec, owned(chat(spec, "x", max_tokens=1), "a")) for _ in range(2)]
    from inference.engine.scheduler import QueueFull

    with pytest.raises(QueueFull, match="share"):
        await engine.submit(spec, owned(chat(spec, "x", max_tokens=1), "a"))
    theirs = await engine.submit(spec, owned(chat(spec, "y", max_tokens=1), "b"))
    blocker.cancel()
    outcomes = await asyncio.gather(*(h.outcome_async() for h in [*mine, theirs]))
    assert [o.status for o in outcomes] == ["completed"] * 3


async def test_an_interactive_request_gets_the_next_free_slot_before_waiting_batch_ones(engine_for):
    engine, spec = engine_for(n_parallel=1, max_queue=100)
    blocker = owned(chat(spec, "Count.", max_tokens=2000, logit_bias=NO_EOS_BIAS), "batch-client", "batch")
    batch = [owned(chat(spec, f"Batch {i}.", max_tokens=1), "batch-client", "batch") for i in range(5)]
    interactive = owned(chat(spec, "Now.", max_tokens=1), "karen")
    order = await _admission_order(engine, spec, blocker, [*batch, interactive])
    assert order[0] == interactive.id


async def test_a_batch_request_waiting_past_its_age_goes_before_interactive_ones(engine_for):
    engine, spec = engine_for(n_parallel=1, max_queue=100)
    await run(engine, spec, chat(spec, "Warm.", max_tokens=1))
    engine.pool.get(spec.model_id).worker._waiting.batch_age_s = 0.0  # a waiting batch request is overdue at once
    blocker = owned(chat(spec, "Count.", max_tokens=2000, logit_bias=NO_EOS_BIAS), "karen")
    interactive = [owned(chat(spec, f"Now {i}.", max_tokens=1), "karen") for i in range(3)]
    aged = owned(chat(spec, "Later.", max_tokens=1), "script", "batch")
    order = await _admission_order(engine, spec, blocker, [*interactive, aged])
    assert order[0] == aged.id


# -- embeddings beside generation ---------------------------------------------------------


async def test_embeddings_run_beside_generation_on_a_context_of_their_own(engine_for):
    engine, spec = engine_for(n_parallel=1)
    stream = await engine.submit(spec, chat(spec, "Count.", max_tokens=2000, logit_bias=NO_EOS_BIAS))
    events = stream.events()
    assert isinstance(await anext(events), Token)
    inputs = ["a sentence to embed, long enough to take a while " * 20] * 16
    embedding = await engine.submit(spec, Job(model_id=spec.model_id, kind="embedding", inputs=inputs))
    tokens_while_embedding = 0
    while not embedding.outcome.done():
        event = await anext(events)
        assert isinstance(event, Token)
        tokens_while_embedding += 1
    outcome = await embedding.outcome_async()
    stream.cancel()
    assert outcome.status == "completed" and len(outcome.embeddings) == 16
    assert tokens_while_embedding > 0  # the stream kept going while the embeddings ran
    loaded = engine.pool.get(spec.model_id)
    assert loaded.embedder.in_flight == 0 and loaded.worker.in_flight <= 1


def test_the_embedding_context_is_counted_in_the_memory_budget(small_model):
    from inference.engine.spec import ModelSpec

    ModelConfig.objects.filter(model=small_model).update(n_ctx=2048)
    spec = ModelSpec.from_model(ModelConfig.objects.get(model=small_model).model)
    kv_bytes = spec.kv_elements_per_token * 2048 * 2
    assert spec.estimated_mb() == pytest.approx((spec.file_size + 2 * kv_bytes) * 1.10 / 2**20)


# -- the websocket's queued frame -----------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_waiting_websocket_generation_hears_its_place_in_the_queue(live, one_slot):
    import json

    from websockets.sync.client import connect

    url, secret, model = live
    frame = {"type": "generate", "model": model, "prompt": "Count:", "max_tokens": 2000, "temperature": 0,
             "logit_bias": NO_EOS_BY_NAME}  # fmt: skip
    with connect(url.replace("http", "ws") + "/ws/v1/generate",
                 additional_headers={"Authorization": f"Bearer {secret}"}) as ws:  # fmt: skip
        ws.send(json.dumps({**frame, "id": "first"}))
        frames = [json.loads(ws.recv(timeout=60))]
        while not any(f["type"] == "token" for f in frames):
            frames.append(json.loads(ws.recv(timeout=60)))
        ws.send(json.dumps({**frame, "id": "second", "max_tokens": 2}))
        ws.send(json.dumps({**frame, "id": "third", "max_tokens": 2}))
        queued = {}
        while set(queued) != {"second", "third"}:
            f = json.loads(ws.recv(timeout=60))
            if f["type"] == "queued":
                queued.setdefault(f["id"], f["position"])
        assert queued == {"second": 0, "third": 1}
        ws.send(json.dumps({"type": "cancel", "id": "first"}))
        later = []
        done = set()
        while done != {"first", "second", "third"}:
            f = json.loads(ws.recv(timeout=60))
            later.append(f)
            if f["type"] in ("done", "error"):
                done.add(f["id"])
    assert {"type": "queued", "id": "third", "position": 0} in later  # it moved up when the first ended
    assert all(f["type"] == "done" for f in later if f["type"] in ("done", "error"))


@pytest.mark.django_db(transaction=True)
def test_a_socket_flooding_the_queue_leaves_room_for_another_tokens_request(live, one_slot, settings, admin_user):
    import json

    from websockets.sync.client import connect

    from models_app.services import issue_token

    settings.MAX_QUEUE = 8  # read when the engine is made: fresh_engine (via one_slot) made none yet
    url, secret, model = live
    _, other = issue_token(name="other", owner=admin_user, scopes=["inference"])
    frame = {"type": "generate", "model": model, "prompt": "Count:", "max_tokens": 2000, "temperature": 0,
             "logit_bias": NO_EOS_BY_NAME}  # fmt: skip
    results = {}
    with connect(url.replace("http", "ws") + "/ws/v1/generate",
                 additional_headers={"Authorization": f"Bearer {secret}"}) as ws:  # fmt: skip
        for i in range(200):
            ws.send(json.dumps({**frame, "id": f"g{i}"}))
        refused = 0
        while refused < 195:  # one runs, QUEUE_SHARE_PER_TOKEN (0.5) of 8 wait, the rest are refused
            f = json.loads(ws.recv(timeout=60))
            if f["type"] == "error":
                assert f["error"]["code"] == "queue_full" and f["retry_after"] >= 1
                refused += 1
        worker = get_engine().pool.get(model).worker
        assert (worker.running, worker.waiting) == (1, 4)
        body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}

        def send():
            results["other"] = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120,
                                          headers={"Authorization": f"Bearer {other}"})  # fmt: skip

        thread = threading.Thread(target=send)
        thread.start()
        _wait_for(lambda: worker.waiting == 5 or "other" in results)  # queued behind the flood, not refused
    thread.join(timeout=120)  # the socket closed: its generations were cancelled, the other one runs
    assert results["other"].status_code == 200, results["other"].text
