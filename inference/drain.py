"""Graceful stop: on SIGTERM or SIGINT, refuse new work, let running generations finish, then stop.

While draining, `flow.submit` refuses every new generation with 503 and Retry-After,
readiness fails at once, and websocket clients get a `shutdown` frame. Generations still
running after DRAIN_TIMEOUT_S are cancelled, and the process stops only once every one of
them has ended and closed its usage row. A second signal stops at once.
karen_host/web.py wires this into the web server's signal handling.
"""

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Iterable
from typing import Any, Protocol

from inference.engine import JobHandle

logger = logging.getLogger(__name__)

CANCEL_GRACE_S = 10.0  # for cancelled jobs to reach their next step and close their usage rows
CLOSE_GRACE_S = 2.0  # for websocket clients to answer the close
# Websocket close code after a drain, as 4401 is for a refused token (an application's own code:
# 1001 "going away" and 1012 "service restart" belong to the server).
CLOSE_SHUTTING_DOWN = 4503


class Socket(Protocol):
    async def shutdown_notice(self, drain_timeout_s: float) -> None: ...

    async def close(self, code: int | None = None, reason: str | None = None) -> None: ...


_lock = threading.Lock()
_running: set[JobHandle] = set()
_sockets: set[Socket] = set()
_draining_since: float | None = None


def track(handle: JobHandle) -> None:
    """Count `handle` as running until its outcome's callbacks (its usage row's close among them) have run."""
    with _lock:
        _running.add(handle)

    def ended(_outcome: object) -> None:
        with _lock:
            _running.discard(handle)

    handle.on_outcome(ended)  # after the meter's own callback, which was registered first


def track_socket(socket: Socket) -> None:
    with _lock:
        _sockets.add(socket)


def forget_socket(socket: Socket) -> None:
    with _lock:
        _sockets.discard(socket)


def draining() -> bool:
    return _draining_since is not None


def state() -> dict[str, Any]:
    """Whether a drain is on, since when (seconds), and how many generations are still running."""
    with _lock:
        running = len(_running)
    since = None if _draining_since is None else round(time.monotonic() - _draining_since, 1)
    return {"draining": _draining_since is not None, "draining_for_s": since, "running": running}


def _sockets_left() -> bool:
    with _lock:
        return bool(_sockets)


def _running_now() -> list[JobHandle]:
    with _lock:
        return list(_running)


async def drain(timeout_s: float) -> dict[str, int]:
    """Refuse new work, wait up to `timeout_s` for running generations, cancel the rest and wait for them to end."""
    begin()
    started = time.monotonic()
    with _lock:
        sockets, total = list(_sockets), len(_running)
    logger.info("draining: %d generation(s) running, %d socket(s); up to %.0f s", total, len(sockets), timeout_s)
    await _each(socket.shutdown_notice(timeout_s) for socket in sockets)
    while _running_now() and time.monotonic() - started < timeout_s:
        await asyncio.sleep(0.05)
    left = _running_now()
    for handle in left:
        handle.cancel()  # ended as `cancelled` at the scheduler's next step, its usage row with it
    cancel_deadline = time.monotonic() + CANCEL_GRACE_S
    while _running_now() and time.monotonic() < cancel_deadline:
        await asyncio.sleep(0.05)
    await _each(socket.close(code=CLOSE_SHUTTING_DOWN, reason="server shutting down") for socket in sockets)
    close_deadline = time.monotonic() + CLOSE_GRACE_S  # the close frames leave before the server stops
    while _sockets_left() and time.monotonic() < close_deadline:
        await asyncio.sleep(0.05)
    unended = len(_running_now())
    logger.info("drained: %d finished, %d cancelled, %d did not end", total - len(left), len(left), unended)
    return {"finished": total - len(left), "cancelled": len(left), "unended": unended}


async def _each(steps: Iterable[Awaitable[None]]) -> None:
    """Run every socket's step at once, each for at most CLOSE_GRACE_S.

    A client that stopped reading (its send waits for room) must hold up neither the drain nor the
    other sockets' frames.
    """
    await asyncio.gather(*(_quietly(step) for step in steps))


async def _quietly(step: Awaitable[None]) -> None:
    try:
        await asyncio.wait_for(step, CLOSE_GRACE_S)
    except Exception:
        logger.debug("a socket could not be told about the drain", exc_info=True)


def begin() -> None:
    """Count as draining from now on: readiness fails and `flow.submit` refuses, before `drain` runs."""
    global _draining_since
    if _draining_since is None:
        _draining_since = time.monotonic()
