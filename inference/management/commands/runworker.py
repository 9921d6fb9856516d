"""`manage.py runworker inference`: Channels' runworker, with the inference node started at boot.

Channels creates a consumer when the first message reaches its channel; an inference node
must heartbeat before any job can be routed to it, so this worker starts it at once.
"""

import asyncio
import logging
import signal
from typing import Any

from channels.management.commands import runworker
from channels.worker import Worker
from django.conf import settings

from inference import node
from inference.engine.wire import NODE_CHANNEL

logger = logging.getLogger(__name__)


class NodeWorker(Worker):
    """A Channels worker that wakes the inference consumer as soon as it runs, and drains it on SIGTERM or SIGINT."""

    async def handle(self) -> None:
        if NODE_CHANNEL in self.channels:
            scope = {"type": "channel", "channel": NODE_CHANNEL}
            await self.get_or_create_application_instance(NODE_CHANNEL, scope).put({"type": "node.start"})
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal(signum: signal.Signals) -> None:
            if node.draining_now():  # the second signal: stop now
                logger.warning("second %s: stopping now", signum.name)
                stop.set()
                return
            logger.info("%s: draining for up to %.0f s", signum.name, settings.DRAIN_TIMEOUT_S)
            task = asyncio.ensure_future(node.drain_current(settings.DRAIN_TIMEOUT_S))
            task.add_done_callback(lambda _task: stop.set())

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        serving = asyncio.ensure_future(super().handle())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        serving.cancel()


class Command(runworker.Command):
    help = "Run a Channels worker; `runworker inference` makes this machine an inference node."
    worker_class = NodeWorker

    def handle(self, *args: Any, **options: Any) -> None:
        settings.INFERENCE_MODE = "local"  # a node runs the models itself, whatever the web nodes use
        super().handle(*args, **options)
