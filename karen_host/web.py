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

logger = logging.getLogger(__name__)

APP = "karen_host.asgi:application"


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


def config(host: str, port: int, level: str) -> uvicorn.Config:
    """How the app is served; `level` is the log level, and INFO or DEBUG logs every request as daphne did."""
    cert, key = tls_files() or (None, None)
    return uvicorn.Config(
        APP,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
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
        from inference import drain

        # Not recorded in _captured_signals: uvicorn would raise it again after the shutdown, and a
        # drained stop ends with status 0.
        if drain.draining() or self._loop is None or self.should_exit:
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


def skip_postgres_extras() -> bool:
    """Before the app is imported: on a database other than PostgreSQL, leave django.contrib.postgres out."""
    from django.conf import settings

    if settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        return False
    if not any(isinstance(finder, WithoutPostgresExtras) for finder in sys.meta_path):
        sys.meta_path.insert(0, WithoutPostgresExtras())
    return True


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "karen_host.settings")
    from django.conf import settings

    skip_postgres_extras()

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
