"""An inference node: the consumer `manage.py runworker inference` runs, owning this machine's engine.

Web nodes address it at its own channel (`InferenceNode.channel`, recorded by its
heartbeat); it runs their jobs on the local pool and scheduler and sends each job's
events to the job's reply channel (protocol: inference/engine/wire.py). Beside the jobs
it heartbeats into the database and reconciles toward the desired placement: it loads
the models placed on it and unloads the ones that were and no longer are.
"""

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import psutil
from channels.consumer import AsyncConsumer
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.layers import get_channel_layer
from channels.utils import await_many_dispatch
from django.conf import settings

from inference.drain import CANCEL_GRACE_S
from inference.engine import get_engine, wire
from inference.engine.devices import offload_devices
from inference.engine.jobs import Job, JobHandle, Outcome, Token
from inference.engine.local import LocalEngine
from inference.engine.pool import ModelBusy, PoolError
from inference.engine.spec import ModelSpec
from karen_host.logs import bind_for_rest
from models_app.choices import NodeStatus
from models_app.placement import mark_node_down, placed_models, record_heartbeat

logger = logging.getLogger(__name__)
COALESCE_S = 0.02  # tokens decoded within 20 ms travel in one message


@dataclass
class CountedToken(Token):
    count: int = 0  # tokens the job had produced when this text was handed over


class CountingJobHandle(JobHandle):
    """A JobHandle whose text batches say how many tokens the job has produced so far.

    The web node bills a job whose node dies mid-stream for the tokens it already
    relayed; the count comes from here, exact at each hand-off.
    """

    def __init__(self, job: Job) -> None:
        super().__init__(job, coalesce_s=COALESCE_S)
        self.produced = 0

    def push(self, event: Token | Outcome) -> None:
        if isinstance(event, Token):
            self.produced += 1
        super().push(event)

    def _handoff(self, event: Token | Outcome) -> None:
        # JobHandle hands held text over here (worker thread), all of it up to `produced`.
        if isinstance(event, Token):
            event = CountedToken(event.text, event.logprobs, self.produced)
        super()._handoff(event)


@dataclass(eq=False)
class _NodeJob:
    reply_to: str
    handle: JobHandle | None = None
    cancelled: bool = False


class InferenceNodeConsumer(AsyncConsumer):
    """Runs the jobs web nodes send; one instance per `runworker inference` process."""

    engine: LocalEngine | None = None
    draining = False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """AsyncConsumer's, but a Redis hiccup on the node's channel is retried, not fatal."""
        self.scope, self.base_send = scope, send
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        self.channel_name = await self.channel_layer.new_channel()
        self.tasks: set[asyncio.Task] = set()
        try:
            await await_many_dispatch([receive, self._receive_own], self.dispatch)
        except StopConsumer:
            pass
        finally:
            for task in self.tasks:  # no heartbeat from a node that no longer listens
                task.cancel()

    async def _receive_own(self) -> dict[str, Any]:
        from redis.exceptions import RedisError  # here: a web server that only imports this module needs no redis

        while True:
            try:
                return await self.channel_layer.receive(self.channel_name)
            except (OSError, RedisError) as exc:
                logger.warning("receiving on %s failed (%s); retrying in 1 s", self.channel_name, exc)
                await asyncio.sleep(1)

    async def dispatch(self, message: dict[str, Any]) -> None:
        """As AsyncConsumer's, but one bad message is logged instead of stopping the node."""
        try:
            await self._start()
            await super().dispatch(message)
        except Exception:
            logger.exception("inference node: %s failed", message.get("type"))

    async def _start(self) -> None:
        if self.engine is not None:
            return
        engine = get_engine()
        if not isinstance(engine, LocalEngine):
            raise RuntimeError("an inference node runs the local engine; runworker sets INFERENCE_MODE=local")
        self.engine, self.name = engine, settings.INFERENCE_NODE_NAME
        self.heartbeat_s = settings.INFERENCE_HEARTBEAT_S
        self.jobs: dict[str, _NodeJob] = {}
        self.pinned: set[str] = set()  # loaded because placed here
        self.hardware = await asyncio.to_thread(describe_hardware)
        global _current
        _current = self
        await self._beat(starting=True)
        self._spawn(self._heartbeat_loop())
        self._spawn(self._reconcile_loop())
        logger.info("inference node %s (%s) listening on %s", self.name, self.hardware, self.channel_name)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)  # a strong reference until it ends
        task.add_done_callback(self.tasks.discard)

    async def _send(self, channel: str, message: dict[str, Any]) -> None:
        await self.channel_layer.send(channel, {**message, "node": self.channel_name})

    # -- messages ------------------------------------------------------------------
    async def node_start(self, message: dict[str, Any]) -> None:
        """Sent by the worker at boot, so the node heartbeats before any job arrives."""

    async def inference_generate(self, message: dict[str, Any]) -> None:
        if self.draining:  # sent before routing saw the drain: the web node sends it elsewhere
            refusal = {"kind": "node_draining", "message": f"inference node {self.name} is shutting down",
                       "param": None, "code": "node_draining", "depth": 0, "retry_after_s": 1}  # fmt: skip
            await self._send(message["reply_to"], {"type": wire.ERROR, "id": message["id"], "error": refusal})
            return
        entry = _NodeJob(message["reply_to"])
        self.jobs[message["id"]] = entry  # before any await: a cancel right behind it finds it
        self._spawn(self._run_job(message, entry))

    inference_embed = inference_generate

    async def inference_cancel(self, message: dict[str, Any]) -> None:
        entry = self.jobs.get(message["id"])
        if entry is not None:
            entry.cancelled = True
            if entry.handle is not None:
                entry.handle.cancel()

    async def inference_load(self, message: dict[str, Any]) -> None:
        spec = wire.decode_spec(message["spec"])
        keep_alive_s, may_shorten = message.get("keep_alive_s", -1.0), message.get("may_shorten", True) is not False
        self._spawn(self._answer(message, self._load(spec, keep_alive_s, may_shorten)))

    async def inference_unload(self, message: dict[str, Any]) -> None:
        self._spawn(self._answer(message, self._unload(message["model_id"])))

    # -- jobs -----------------------------------------------------------------------
    async def _run_job(self, message: dict[str, Any], entry: _NodeJob) -> None:
        job_id = message["id"]
        try:
            spec = wire.decode_spec(message["spec"])
            started = time.perf_counter() - float(message.get("age_s", 0.0))
            job = wire.decode_job(message["job"], submitted_at_perf=started)
            # This job's task logs under its request's id, as the web node does.
            bind_for_rest(request_id=job.request_id, token=job.token_name, model=spec.model_id)
            handle, prompt_tokens = await self._queue(spec, job)
        except Exception as exc:
            self.jobs.pop(job_id, None)
            if wire.describe_refusal(exc)["kind"] == "internal":
                logger.exception("job %s failed before admission", job_id)
            await self._send(entry.reply_to, {"type": wire.ERROR, "id": job_id, "error": wire.describe_refusal(exc)})
            return
        entry.handle = handle
        if entry.cancelled:
            handle.cancel()
        handle.on_position(
            lambda position: self._spawn(
                self._send(entry.reply_to, {"type": wire.QUEUED, "id": job_id, "position": position})
            )
        )
        try:
            await self._send(entry.reply_to, {"type": wire.START, "id": job_id, "prompt_tokens": prompt_tokens})
            await self._relay(job_id, entry.reply_to, handle)
        except Exception as exc:  # the requester is gone (its channel full or unreachable): stop decoding
            logger.warning("job %s: cannot reach its requester (%s); cancelling", job_id, exc)
            handle.cancel()
        finally:
            self.jobs.pop(job_id, None)

    async def _queue(self, spec: ModelSpec, job: Job) -> tuple[CountingJobHandle, int]:
        """The local engine's one submit path, with a counting handle."""
        handle = CountingJobHandle(job)
        prompt_tokens = await asyncio.to_thread(self.engine.enqueue, spec, job, handle)
        return handle, prompt_tokens

    async def _relay(self, job_id: str, reply_to: str, handle: JobHandle) -> None:
        events = handle.events()
        try:
            async for event in events:
                if isinstance(event, Outcome):
                    await self._send(reply_to, {"type": wire.DONE, "id": job_id, "outcome": wire.encode_outcome(event)})
                    return
                batch = [event, *handle.drain_tokens()]
                message = {"type": wire.TOKEN, "id": job_id, "text": "".join(token.text for token in batch),
                           "n": batch[-1].count}  # fmt: skip
                if any(token.logprobs for token in batch):
                    message["logprobs"] = [entry for token in batch for entry in token.logprobs or []]
                await self._send(reply_to, message)
        finally:
            await events.aclose()  # cancels the job if it has not ended

    # -- load, unload, answers ------------------------------------------------------
    async def _load(self, spec: ModelSpec, keep_alive_s: float | None, may_shorten: bool = True) -> dict[str, Any]:
        result = await self.engine.load(spec, keep_alive_s=keep_alive_s, may_shorten=may_shorten)
        await self._beat()  # routing sees the model here at once, not a heartbeat later
        return result

    async def _unload(self, model_id: str) -> dict[str, Any]:
        unloaded = await self.engine.unload(model_id)
        await self._beat()
        return {"unloaded": unloaded}

    async def _answer(self, message: dict[str, Any], work: Any) -> None:
        try:
            reply = {"type": wire.RESULT, "id": message["id"], "result": await work}
        except Exception as exc:
            reply = {"type": wire.ERROR, "id": message["id"], "error": wire.describe_refusal(exc)}
        await self._send(message["reply_to"], reply)

    # -- heartbeat and placement ----------------------------------------------------
    async def _beat(self, *, starting: bool = False) -> None:
        await database_sync_to_async(record_heartbeat)(
            name=self.name, channel=self.channel_name, hardware=self.hardware, report=self.engine.status(),
            starting=starting, status=NodeStatus.DRAINING if self.draining else NodeStatus.UP,
        )  # fmt: skip

    async def drain(self, timeout_s: float) -> dict[str, int]:
        """Take no new job, let running ones finish for up to `timeout_s`, cancel the rest, then mark this node down.

        Routing stops sending at its next read of the node table (within a second); the
        running jobs stay live there, so their streams are not failed over.
        """
        self.draining = True
        await self._beat()
        started, total = time.monotonic(), len(self.jobs)
        while self.jobs and time.monotonic() - started < timeout_s:
            await asyncio.sleep(0.05)
        left = list(self.jobs.values())
        for entry in left:
            entry.cancelled = True
            if entry.handle is not None:
                entry.handle.cancel()
        deadline = time.monotonic() + CANCEL_GRACE_S
        while self.jobs and time.monotonic() < deadline:  # each relays its outcome, then leaves `jobs`
            await asyncio.sleep(0.05)
        for task in [t for t in self.tasks if t is not asyncio.current_task()]:
            task.cancel()  # no heartbeat may write `draining` over `down`
        await database_sync_to_async(mark_node_down)(name=self.name, channel=self.channel_name)
        logger.info("node %s drained: %d finished, %d cancelled", self.name, total - len(left), len(left))
        return {"finished": total - len(left), "cancelled": len(left)}

    async def _heartbeat_loop(self) -> None:
        # Its own task: a reconcile loading a large model must not silence the heartbeat.
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await self._beat()
            except Exception:
                logger.exception("heartbeat of %s failed", self.name)

    async def _reconcile_loop(self) -> None:
        while True:
            try:
                await self._reconcile()
            except Exception:
                logger.exception("reconciling %s's placement failed", self.name)
            await asyncio.sleep(self.heartbeat_s)

    async def _reconcile(self) -> None:
        """Load what is placed here and not loaded; unload what was placed here and is no more."""
        specs = await database_sync_to_async(_placed_specs)(self.name)
        loaded = {m["id"] for m in self.engine.status()["loaded"]}
        for spec in specs:
            if spec.model_id in loaded and spec.model_id in self.pinned:
                continue
            try:
                await self._load(spec, None)  # None: a placed model is never unloaded for idleness
            except PoolError as exc:
                logger.warning("%s cannot hold placed model %s: %s", self.name, spec.model_id, exc)
                continue
            self.pinned.add(spec.model_id)
        for model_id in self.pinned - {spec.model_id for spec in specs}:
            try:
                await self._unload(model_id)
            except ModelBusy:
                continue  # serving; tried again next round
            self.pinned.discard(model_id)


def _placed_specs(node_name: str) -> list[ModelSpec]:
    return [ModelSpec.from_model(model) for model in placed_models(node_name=node_name)]


def describe_hardware() -> str:
    """INFERENCE_NODE_DESCRIPTION, else the GPUs llama.cpp can offload to (ggml's device list), cores and memory."""
    if settings.INFERENCE_NODE_DESCRIPTION:
        return settings.INFERENCE_NODE_DESCRIPTION
    cpu = f"{os.cpu_count()} CPU cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
    gpus = offload_devices()
    if not gpus:
        return cpu
    return "GPU: " + ", ".join(f"{d.description} ({d.total_mib:,} MiB)" for d in gpus) + f"; {cpu}"


_current: InferenceNodeConsumer | None = None  # this process's node, once it started


def draining_now() -> bool:
    return _current is not None and _current.draining


async def drain_current(timeout_s: float) -> None:
    """Drain this process's node, if it has started one."""
    if _current is not None:
        await _current.drain(timeout_s)
