"""What a generation yields while it streams (`TextPiece`, `StreamEnd`) and what it returns."""

import contextlib
import time
from collections.abc import AsyncGenerator
from dataclasses import asdict, dataclass, field
from typing import Any

from karen_extension.errors import ConnectionLost, KarenHostError, redact


@dataclass(frozen=True)
class TextPiece:
    """Text the model produced; one or more tokens."""

    text: str


@dataclass(frozen=True)
class StreamEnd:
    """The last event of a stream: which model answered, why it stopped, and the server's token counts."""

    model: str | None
    finish_reason: str | None
    usage: dict[str, Any] | None = None
    timings: dict[str, float] | None = None


StreamEvent = TextPiece | StreamEnd


@dataclass
class GenerationResult:
    """One answer, or an honest fallback: `fallback_used` is true whenever the model did not answer."""

    status: str  # "success" | "fallback"
    text: str
    model: str | None
    usage: dict[str, Any] | None
    fallback_used: bool
    transport: str  # "http" (one JSON body), "sse" or "websocket"
    finish_reason: str | None = None
    reason: str | None = None  # why no answer: KarenHostError.reason
    error: str | None = None  # one sentence for a person, token-free
    duration_ms: float = 0.0
    timings: dict[str, float] | None = field(default=None)

    @classmethod
    def fallback(
        cls, exc: KarenHostError, *, transport: str, model: str | None = None, started: float | None = None
    ) -> "GenerationResult":
        """The result for a request that failed: no text, the reason, and what went wrong."""
        return cls(
            status="fallback",
            text="",
            model=model,
            usage=None,
            fallback_used=True,
            transport=transport,
            reason=exc.reason,
            error=redact(str(exc)),
            duration_ms=_elapsed_ms(started) if started is not None else 0.0,
        )

    @classmethod
    def answered(cls, text: str, end: StreamEnd, *, transport: str, started: float) -> "GenerationResult":
        """The result for a request the model answered."""
        return cls(
            status="success",
            text=text,
            model=end.model,
            usage=end.usage,
            fallback_used=False,
            transport=transport,
            finish_reason=end.finish_reason,
            timings=end.timings,
            duration_ms=_elapsed_ms(started),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: what KAREN gets back from `run()` and the hooks."""
        out = asdict(self)
        if not self.fallback_used:
            # KAREN's ExtensionRunner counts a result holding "error" as a failed run.
            out.pop("error")
            out.pop("reason")
        return out


async def collect(events: AsyncGenerator[StreamEvent, None], *, transport: str, started: float) -> GenerationResult:
    """Drain a stream into one result; a stream that ends without `StreamEnd` is an error."""
    pieces: list[str] = []
    async with contextlib.aclosing(events):  # closes the HTTP response or socket now, not at garbage collection
        async for event in events:
            if isinstance(event, TextPiece):
                pieces.append(event.text)
                continue
            return GenerationResult.answered("".join(pieces), event, transport=transport, started=started)
    raise ConnectionLost("the stream ended before the server said it was done")


def _elapsed_ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)
