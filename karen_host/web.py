"""The web server `make run` runs: uvicorn (httptools, uvloop) serving karen_host.asgi, HTTP and websockets.

    python -m karen_host.web [--host H] [--port P] [--log-level L]

It replaced daphne for `make run`: the same app, 21 MB less resident memory (no Twisted,
no Autobahn) and no slower (README, "Speed"). `manage.py runserver` still runs daphne.
TLS_CERT_FILE and TLS_KEY_FILE make it serve HTTPS and WSS. SIGTERM or SIGINT drains
(inference/drain.py) while it keeps listening, so readiness and new requests get their
503; then it stops with status 0. A second signal stops it at once.
"""

import argparse
import asyncio
import importlib.abc
import logging
import os
import signal
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import FrameType, ModuleType

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

logger = logging.getLogger(__name__)

APP = "karen_host.asgi:application"
LINGER_S = 2.0  # after refusing a request head, how long its connection drops what still arrives


class TLSFileError(ValueError):
    """TLS_CERT_FILE or TLS_KEY_FILE names no readable file."""


def tls_files() -> tuple[str, str] | None:
    """(certificate, key) from TLS_CERT_FILE and TLS_KEY_FILE; None for plain HTTP."""
    from django.conf import settings

    if not settings.TLS_CERT_FILE:
        return None
    for name in ("TLS_CERT_FILE", "TLS_KEY_FILE"):
        if not Path(getattr(settings, name)).is_file():
            raise TLSFileError(f"{name} is {getattr(settings, name)!r}, which is not a readable file (PEM).")
    return settings.TLS_CERT_FILE, settings.TLS_KEY_FILE


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds daphne's Twisted had: on the request head's size and time.

    httptools gathers a header value by copying it again for each piece received, so one endless
    header would hold the event loop, every client's stream with it; and a connection that sends half
    a request head would be held forever. A head over HTTP_MAX_HEAD_BYTES gets 431, one not complete
    HTTP_HEAD_TIMEOUT_S after it began gets 408; either way the connection closes.
    """

    _in_head = True  # what arrives is a request line and headers, not a body
    _head_bytes = 0
    _refused = False
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        from django.conf import settings

        super().connection_made(transport)
        self._max_head_bytes, self._head_timeout_s = settings.HTTP_MAX_HEAD_BYTES, settings.HTTP_HEAD_TIMEOUT_S
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        if self._refused:  # read and dropped until the close, so the client gets the answer, not a reset
            return
        if self._in_head:
            self._head_bytes += len(data)
            self._arm_head_timer()
        super().data_received(data)
        if self._in_head and self._head_bytes > self._max_head_bytes and not self.transport.is_closing():
            self._refuse(431, "Request line and headers too large.")

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_bytes = True, 0  # whatever comes next starts a new request

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self._head_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._refuse(408, "Request line and headers not received in time.")

    def _refuse(self, status: int, message: str) -> None:
        body = message.encode()
        self.transport.write(
            STATUS_LINE[status]
            + b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
            + b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )  # fmt: skip
        self._refused = True
        self._cancel_head_timer()
        # Closing with the client's bytes unread would reset the connection, and the answer with it:
        # end our side, drop what still arrives, and close a moment later.
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()


def config(host: str, port: int, level: str) -> uvicorn.Config:
    """How the app is served; `level` is the log level, and INFO or DEBUG logs every request as daphne did."""
    from django.conf import settings

    cert, key = tls_files() or (None, None)
    return uvicorn.Config(
        APP,
        host=host,
        port=port,
        loop="uvloop",
        http=BoundedHttpToolsProtocol,
        ws="websockets-sansio",
        ws_max_size=4 * settings.WS_MAX_FRAME_BYTES,  # the app refuses frames over WS_MAX_FRAME_BYTES with its error
        timeout_keep_alive=75,  # idle keep-alive connections: longer than a load balancer's usual 60 s
        timeout_graceful_shutdown=5,  # after the drain, for responses a client is not reading
        lifespan="off",  # Channels' router has no lifespan; the engine starts on first use
        log_config=None,  # Django's LOGGING stays in charge; uvicorn's loggers propagate to it
        log_level=level.lower(),
        access_log=level.upper() in ("DEBUG", "INFO"),
        # The client address is the peer's: X-Forwarded-For is not trusted unless a proxy is configured
        # (BEHIND_TLS_PROXY reads only X-Forwarded-Proto, in Django).
        proxy_headers=False,
        server_header=False,
        ssl_certfile=cert,
        ssl_keyfile=key,
    )


class DrainingServer(uvicorn.Server):
    """uvicorn whose first SIGTERM or SIGINT drains before it stops listening; a second one stops it at once."""

    _loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not recorded in _captured_signals: uvicorn would raise it again after the shutdown, and a
        # drained stop ends with status 0.
        if self._loop is None:  # before the app is loaded: nothing to drain
            self.should_exit = self.force_exit = True
            return
        from inference import drain

        if drain.draining() or self.should_exit:
            if drain.draining():
                logger.warning("second %s: stopping now", signal.Signals(sig).name)
            self.should_exit = self.force_exit = True
            return
        drain.begin()  # readiness and submit refuse before the loop runs again
        self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._drain_then_stop(sig)))

    async def _drain_then_stop(self, sig: int) -> None:
        from django.conf import settings

        from inference import drain

        logger.info("%s: draining for up to %.0f s", signal.Signals(sig).name, settings.DRAIN_TIMEOUT_S)
        try:
            await drain.drain(settings.DRAIN_TIMEOUT_S)
        finally:
            self.should_exit = True


class WithoutPostgresExtras(importlib.abc.MetaPathFinder):
    """Makes django.contrib.postgres unimportable, for a server whose database is not PostgreSQL.

    DRF imports it, and psycopg with it (10 MB resident), only to map PostgreSQL-only model
    fields, which no model here has and which no other database could store.
    """

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname == "django.contrib.postgres" or fullname.startswith("django.contrib.postgres."):
            raise ModuleNotFoundError(f"{fullname}: not on this database", name=fullname)
        return None


class WithoutRequestsForDrf(importlib.abc.MetaPathFinder):
    """Refuses `requests` to DRF's compat module alone, which imports it (4.5 MB resident) for its test client.

    `rest_framework.test.RequestsClient` is the only user, and no server runs it. Every other
    importer (gguf's downloads, the OTLP exporter) still gets requests when it asks.
    """

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname == "requests" and _importer() == "rest_framework.compat":
            raise ModuleNotFoundError("requests: not for DRF's test client in a server", name=fullname)
        return None


def _importer() -> str | None:
    """The name of the module whose import statement is running (the first frame outside importlib)."""
    frame: FrameType | None = sys._getframe(2)  # 0: here, 1: find_spec
    while frame is not None:
        name = frame.f_globals.get("__name__")
        if not (isinstance(name, str) and name.startswith(("importlib", "_frozen_importlib"))):
            return name if isinstance(name, str) else None
        frame = frame.f_back
    return None


def lean_imports() -> bool:
    """Before the app is imported: leave out what a server never runs; True if django.contrib.postgres is out.

    On a database other than PostgreSQL, django.contrib.postgres (and psycopg); everywhere,
    DRF's import of requests (`WithoutRequestsForDrf`).
    """
    from django.conf import settings

    finders: list[importlib.abc.MetaPathFinder] = [WithoutRequestsForDrf()]
    postgres = settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
    if not postgres:
        finders.append(WithoutPostgresExtras())
    for finder in finders:
        if not any(type(present) is type(finder) for present in sys.meta_path):
            sys.meta_path.insert(0, finder)
    return not postgres


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "karen_host.settings")
    from django.conf import settings

    lean_imports()

    parser = argparse.ArgumentParser(prog="python -m karen_host.web", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=settings.HOST)
    parser.add_argument("--port", type=int, default=settings.PORT)
    parser.add_argument("--log-level", default=settings.LOG_LEVEL, help="DEBUG, INFO, WARNING, ERROR")
    args = parser.parse_args(argv)
    try:
        server_config = config(args.host, args.port, args.log_level)
    except TLSFileError as exc:
        parser.exit(2, f"{exc}\n")
    DrainingServer(server_config).run()


if __name__ == "__main__":
    main()
