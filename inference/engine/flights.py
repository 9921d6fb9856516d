"""What the remote engine keeps per job: a handle whose cancel reaches the node, and its flight."""

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from inference.engine.jobs import Job, JobHandle
from inference.engine.spec import ModelSpec
from models_app.placement import NodeView


class RemoteJobHandle(JobHandle):
    """A JobHandle whose cancel() also reaches the node running the job."""

    def __init__(self, job: Job, *, on_cancel: Callable[[str], None]) -> None:
        super().__init__(job, coalesce_s=0.0)  # the node already sends tokens ~20 ms apart
        self._on_cancel = on_cancel

    def cancel(self) -> None:
        first = not self.cancelled.is_set()
        super().cancel()
        if first:
            self._on_cancel(self.job.id)


@dataclass(eq=False)
class Flight:
    """One job the transport follows from routing to its outcome."""

    spec: ModelSpec
    job: Job
    handle: JobHandle
    started: asyncio.Future  # inference.start arrived (or the refusal, raised)
    admitted: asyncio.Future  # True once the caller's on_admit ran, False if it failed
    node: NodeView | None = None
    attempts: int = 0
    prompt_tokens: int = 0
    tokens: int = 0  # as counted by the node, up to the last text received
    streamed: bool = False
    finished: bool = False
    cancel_sent: bool = False
