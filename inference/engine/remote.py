"""The remote engine: LocalEngine's interface, with the jobs run by inference nodes.

A web node (INFERENCE_MODE=remote) sends each job to an inference node over the channel
layer (protocol: inference/engine/wire.py) and feeds what comes back into a JobHandle,
so views and the websocket consumer cannot tell it from the in-process engine.

All channel-layer traffic runs on one background event loop, "the transport", with a
channel-layer instance of its own: channels-redis lets only one event loop receive on a
layer instance, and the web server's loop already receives on the shared one for websockets.
Thread-safety: `submit`, `load` and `unload` may be awaited on any event loop; `status`
is cheap and safe anywhere; everything prefixed `_` runs on the transport loop unless
its docstring says otherwise.
"""

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from channels import DEFAULT_CHANNEL_LAYER
from channels.exceptions import ChannelFull
from channels.layers import channel_layers

from inference.engine import wire
from inference.engine.flights import Flight, RemoteJobHandle
from inference.engine.jobs import Job, JobHandle, Outcome, Token
from inference.engine.pool import ModelBusy
from inference.engine.routing import NodeDirectory
from inference.engine.scheduler import QueueFull
from inference.engine.spec import ModelSpec
from models_app.placement import NodeView

logger = logging.getLogger(__name__)
T = TypeVar("T")
MAX_ATTEMPTS = 2  # a job whose node dies before its first token is retried once elsewhere


def _log_failed_send(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("could not reach an inference node: %s", task.exception())


def _resolve(future: asyncio.Future, value: object) -> None:
    if not future.done():
        future.set_result(value)


class RemoteEngine:
    """Runs jobs on inference nodes; the same `submit`, `load`, `unload`, `status` as LocalEngine."""

    shares_slots = False  # choices may land on different nodes: waiting for one to copy its prompt gains nothing

    def __init__(self, *, heartbeat_s: float, layer_alias: str = DEFAULT_CHANNEL_LAYER) -> None:
        self.directory = NodeDirectory(heartbeat_s=heartbeat_s)
        self._refresh_s = min(1.0, heartbeat_s / 2)
        self._flights: dict[str, Flight] = {}
        self._calls: dict[str, tuple[asyncio.Future, NodeView, str]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._db = ThreadPoolExecutor(1, thread_name_prefix="remote-engine-db")
        # Outcomes are pushed from plain threads: the callbacks they run finalize usage rows
        # with the sync ORM, which must not run on an event loop.
        self._outcomes = ThreadPoolExecutor(4, thread_name_prefix="remote-engine-outcome")
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(layer_alias,), name="remote-engine", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=30)
        if self._failure is not None:
            raise self._failure

    # -- the interface ---------------------------------------------------------------
    async def submit(
        self,
        spec: ModelSpec,
        job: Job,
        *,
        on_admit: Callable[[], None] | None = None,
        on_outcome: Callable[[Outcome], None] | None = None,
    ) -> JobHandle:
        """Send the job to a node; return its handle once the node has queued it.

        Raises what LocalEngine raises before admission (the node's refusal, mapped back),
        or NodeUnavailable (503) when no live node holds or may load the model. `on_admit`
        runs on a thread once the node has queued the job; `on_outcome` exactly once, on a
        thread, after `on_admit`.
        """
        handle = RemoteJobHandle(job, on_cancel=self._cancel_threadsafe)
        if on_outcome is not None:
            handle.on_outcome(on_outcome)
        flight = await self._on_transport(self._dispatch(spec, job, handle))
        try:
            await asyncio.to_thread(self._admit, flight, on_admit)
        except BaseException:
            handle.cancel()  # admitted or not, the node stops it; an admitted row is finalized
            raise
        return handle

    async def load(
        self, spec: ModelSpec, *, keep_alive_s: float | None = -1.0, may_shorten: bool = True
    ) -> dict[str, Any]:
        """Load on the node routing would pick for the model."""
        return await self._on_transport(self._load(spec, keep_alive_s, may_shorten))

    async def unload(self, model_id: str) -> bool:
        """Unload from every live node holding it; ModelBusy if one of them is serving it."""
        return await self._on_transport(self._unload(model_id))

    def live(self) -> dict[str, Any]:
        """Per model: the requests this web process has on inference nodes (their slots and queues stay there)."""
        models: dict[str, Any] = {}
        for flight in list(self._flights.values()):
            job, node = flight.job, flight.node  # one read: the event loop may clear `node` meanwhile
            entry = models.setdefault(job.model_id, {"slots": [], "queue": [], "queued": 0, "prompt_cache": None})
            view = {"request_id": job.request_id or job.id, "token": job.token_name, "lane": job.lane,
                    "node": node.name if node else None, "prompt_tokens": flight.prompt_tokens,
                    "tokens": flight.tokens}  # fmt: skip
            if flight.streamed:
                entry["slots"].append({**view, "state": "decode"})
            else:
                entry["queue"].append(view)
                entry["queued"] += 1
        return models

    def status(self) -> dict[str, Any]:
        """What the live nodes reported at their last heartbeat, summed (no I/O)."""
        return self.directory.status()

    def close(self) -> None:
        """Stop the transport (tests, settings changes); jobs in flight are left to their nodes."""
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout=10)
        if not self._loop.is_running():
            self._loop.close()
        self._db.shutdown(wait=False)
        self._outcomes.shutdown(wait=False)

    # -- crossing to the transport loop --------------------------------------------------
    async def _on_transport(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    def _cancel_threadsafe(self, job_id: str) -> None:
        with contextlib.suppress(RuntimeError):  # the transport is closed: nothing to tell
            self._loop.call_soon_threadsafe(self._forward_cancel, job_id)

    def _admit(self, flight: Flight, on_admit: Callable[[], None] | None) -> None:
        """Run on_admit (a worker thread), then let the outcome through; a failed admission never ends."""
        admitted = False
        try:
            if on_admit is not None:
                on_admit()
            admitted = True
        finally:
            self._loop.call_soon_threadsafe(_resolve, flight.admitted, admitted)

    # -- the transport loop ------------------------------------------------------------
    def _run(self, layer_alias: str) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve(layer_alias))

    async def _serve(self, layer_alias: str) -> None:
        self._stopping = asyncio.Event()
        self._first_refresh = asyncio.Event()
        try:
            self.layer = channel_layers.make_backend(layer_alias)
            self.reply_to = await self.layer.new_channel()
        except BaseException as exc:
            self._failure = exc
            self._ready.set()
            return
        self._ready.set()
        tasks = [asyncio.create_task(self._receive()), asyncio.create_task(self._watch())]
        await self._stopping.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if hasattr(self.layer, "close_pools"):
            await self.layer.close_pools()

    async def _receive(self) -> None:
        while True:
            try:
                message = await self.layer.receive(self.reply_to)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("receiving on %s failed; retrying in 1 s", self.reply_to)
                await asyncio.sleep(1)
                continue
            try:
                self._on_message(message)
            except Exception:
                logger.exception("could not handle %s from an inference node", message.get("type"))

    async def _watch(self) -> None:
        """Re-read the node table; fail over the jobs of nodes that stopped heartbeating."""
        while True:
            try:
                await self._loop.run_in_executor(self._db, self.directory.refresh)
            except Exception:
                logger.exception("could not read the inference nodes")
            self._first_refresh.set()
            for flight in list(self._flights.values()):
                if flight.node is not None and not self.directory.is_live(flight.node):
                    self._node_lost(flight)
                elif flight.handle.cancelled.is_set() and not flight.cancel_sent:
                    self._forward_cancel(flight.job.id)  # set directly on the Event, not via cancel()
            for future, node, _model_id in list(self._calls.values()):
                if not future.done() and not self.directory.is_live(node):
                    future.set_exception(wire.NodeUnavailable(f"Inference node {node.name} was lost; retry."))
            await asyncio.sleep(self._refresh_s)

    async def _send(self, channel: str, message: dict[str, Any]) -> None:
        await self.layer.send(channel, message)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task:
        task = self._loop.create_task(coro)
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)
        return task

    def _send_soon(self, channel: str, message: dict[str, Any]) -> None:
        self._spawn(self._send(channel, message)).add_done_callback(_log_failed_send)

    # -- jobs -----------------------------------------------------------------------
    async def _dispatch(self, spec: ModelSpec, job: Job, handle: JobHandle) -> Flight:
        flight = Flight(spec, job, handle, self._loop.create_future(), self._loop.create_future())
        self._flights[job.id] = flight
        try:
            await self._send_job(flight)
            await flight.started
        except BaseException:
            self._drop(flight)
            raise
        return flight

    async def _send_job(self, flight: Flight, *, exclude: tuple[str, ...] = ()) -> None:
        """Route and send; the flight's node is set once the message is on its channel."""
        await self._first_refresh.wait()
        node = self.directory.choose(flight.spec.model_id, exclude=exclude)
        job = flight.job
        message = {
            "type": wire.EMBED if job.kind == "embedding" else wire.GENERATE,
            "id": job.id,
            "spec": wire.encode_spec(flight.spec),
            "job": wire.encode_job(job),
            "age_s": time.perf_counter() - job.submitted_at_perf,
            "reply_to": self.reply_to,
        }
        try:
            await self._send(node.channel, message)
        except ChannelFull as exc:
            raise QueueFull(job.model_id, 0) from exc
        flight.node, flight.attempts, flight.cancel_sent = node, flight.attempts + 1, False
        self.directory.sent[node.name] += 1

    def _on_message(self, message: dict[str, Any]) -> None:
        kind, message_id = message.get("type"), message.get("id")
        if message_id in self._calls:
            self._on_answer(message)
            return
        flight = self._flights.get(message_id)
        if flight is None or flight.node is None or message.get("node") != flight.node.channel:
            return  # a job already ended, or a late word from a node it has left
        if kind == wire.TOKEN:
            flight.streamed, flight.tokens = True, message["n"]
            flight.handle.push(Token(message["text"], message.get("logprobs")))
        elif kind == wire.QUEUED:
            flight.handle.report_position(message["position"])
        elif kind == wire.START:
            flight.prompt_tokens = message["prompt_tokens"]
            _resolve(flight.started, None)
        elif kind == wire.DONE:
            self._finish(flight, wire.decode_outcome(message["outcome"]))
        elif kind == wire.ERROR:
            if message["error"]["kind"] == "node_draining" and not flight.started.done():
                draining = flight.node  # it stopped taking jobs before routing knew: elsewhere, at once
                self._release_node(flight)
                self._spawn(self._retry(flight, draining))
                return
            exc = wire.refusal_exception(message["error"], model_id=flight.job.model_id, node=flight.node.name)
            if not flight.started.done():
                flight.started.set_exception(exc)
            else:  # refused on the retry: the caller already holds the handle
                self._finish(flight, self._failed_outcome(flight, str(exc), message["error"]["kind"]))

    def _forward_cancel(self, job_id: str) -> None:
        flight = self._flights.get(job_id)
        if flight is not None and flight.node is not None and not flight.cancel_sent:
            flight.cancel_sent = True
            self._send_soon(flight.node.channel, {"type": wire.CANCEL, "id": job_id})

    def _node_lost(self, flight: Flight) -> None:
        lost = flight.node
        self._release_node(flight)
        if flight.handle.cancelled.is_set() and flight.started.done():
            self._finish(flight, Outcome("cancelled", "cancelled", flight.prompt_tokens, flight.tokens))
        elif not flight.streamed and flight.attempts < MAX_ATTEMPTS:
            logger.warning("node %s lost before job %s started; retrying elsewhere", lost.name, flight.job.id)
            self._spawn(self._retry(flight, lost))
        else:
            self._fail(flight, lost, None)

    async def _retry(self, flight: Flight, lost: NodeView) -> None:
        try:
            await self._send_job(flight, exclude=(lost.name,))
        except Exception as exc:
            self._fail(flight, lost, exc)

    def _fail(self, flight: Flight, lost: NodeView, exc: Exception | None) -> None:
        """End a flight whose node was lost: refused if it never started, else an error outcome."""
        if not flight.started.done():
            reason = exc or wire.NodeUnavailable(
                f"Inference node {lost.name} was lost before {flight.job.model_id} started; retry shortly."
            )
            flight.started.set_exception(reason)
            return
        message = (
            f"The inference node {lost.name} was lost mid-generation after {flight.tokens} token(s); retry the request."
        )
        self._finish(flight, self._failed_outcome(flight, message, "node_lost"))

    def _failed_outcome(self, flight: Flight, message: str, code: str) -> Outcome:
        return Outcome(
            "error",
            "error",
            prompt_tokens=flight.prompt_tokens,
            completion_tokens=flight.tokens,
            duration_ms=(time.perf_counter() - flight.job.submitted_at_perf) * 1000,
            error=message,
            error_code=code,
        )

    def _finish(self, flight: Flight, outcome: Outcome) -> None:
        """Hand the outcome over exactly once, after admission, from a plain thread."""
        if flight.finished:
            return
        flight.finished = True
        self._flights.pop(flight.job.id, None)
        self._release_node(flight)
        if not flight.started.done():
            flight.started.set_exception(wire.NodeFailed(f"the job ended before it started: {outcome.error}"))
            return
        self._spawn(self._deliver(flight, outcome))

    async def _deliver(self, flight: Flight, outcome: Outcome) -> None:
        if await flight.admitted:
            await self._loop.run_in_executor(self._outcomes, flight.handle.push, outcome)

    def _drop(self, flight: Flight) -> None:
        """Forget a flight that never reached its caller; tell its node, if any, to stop."""
        flight.finished = True
        self._flights.pop(flight.job.id, None)
        if flight.node is not None:
            self._send_soon(flight.node.channel, {"type": wire.CANCEL, "id": flight.job.id})
        self._release_node(flight)
        _resolve(flight.admitted, False)

    def _release_node(self, flight: Flight) -> None:
        if flight.node is not None:
            name = flight.node.name
            self.directory.sent[name] -= 1
            if self.directory.sent[name] <= 0:
                del self.directory.sent[name]
            flight.node = None

    # -- load and unload ----------------------------------------------------------------
    async def _load(self, spec: ModelSpec, keep_alive_s: float | None, may_shorten: bool) -> dict[str, Any]:
        await self._first_refresh.wait()
        node = self.directory.choose(spec.model_id)
        message = {"type": wire.LOAD, "spec": wire.encode_spec(spec), "keep_alive_s": keep_alive_s,
                   "may_shorten": may_shorten}  # fmt: skip
        return {**await self._ask(node, message, spec.model_id), "node": node.name}

    async def _unload(self, model_id: str) -> bool:
        await self._first_refresh.wait()
        message = {"type": wire.UNLOAD, "model_id": model_id}
        asks = [self._ask(node, message, model_id) for node in self.directory.holders(model_id)]
        results = await asyncio.gather(*asks, return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            raise next((f for f in failures if isinstance(f, ModelBusy)), failures[0])
        return any(r["unloaded"] for r in results)

    async def _ask(self, node: NodeView, message: dict[str, Any], model_id: str) -> dict[str, Any]:
        call_id = uuid.uuid4().hex
        future = self._loop.create_future()
        self._calls[call_id] = (future, node, model_id)
        try:
            await self._send(node.channel, {**message, "id": call_id, "reply_to": self.reply_to})
            return await future
        finally:
            self._calls.pop(call_id, None)

    def _on_answer(self, message: dict[str, Any]) -> None:
        future, node, model_id = self._calls[message["id"]]
        if future.done():
            return
        if message.get("type") == wire.RESULT:
            future.set_result(message["result"])
        else:
            future.set_exception(wire.refusal_exception(message["error"], model_id=model_id, node=node.name))
