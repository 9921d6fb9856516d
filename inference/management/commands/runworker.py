"""`manage.py runworker inference`: Channels' runworker, with the inference node started at boot.

Channels creates a consumer when the first message reaches its channel; an inference node
must heartbeat before any job can be routed to it, so this worker starts it at once.
"""

from typing import Any

from channels.management.commands import runworker
from channels.worker import Worker
from django.conf import settings

from inference.engine.wire import NODE_CHANNEL


class NodeWorker(Worker):
    """A Channels worker that wakes the inference consumer as soon as it runs."""

    async def handle(self) -> None:
        if NODE_CHANNEL in self.channels:
            scope = {"type": "channel", "channel": NODE_CHANNEL}
            await self.get_or_create_application_instance(NODE_CHANNEL, scope).put({"type": "node.start"})
        await super().handle()


class Command(runworker.Command):
    help = "Run a Channels worker; `runworker inference` makes this machine an inference node."
    worker_class = NodeWorker

    def handle(self, *args: Any, **options: Any) -> None:
        settings.INFERENCE_MODE = "local"  # a node runs the models itself, whatever the web nodes use
        super().handle(*args, **options)
