"""`python -m karen_host.web`, what `make run` serves with: what it imports, and the bounds on a request head."""

import os
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

import httpx
import pytest
from django.conf import settings

_LEAN = """
import os, sys
os.environ["DJANGO_SETTINGS_MODULE"] = "karen_host.settings"
from karen_host.web import lean_imports
print(lean_imports())
import karen_host.asgi
from django.urls import get_resolver
get_resolver().url_patterns
from rest_framework import compat
print("psycopg" in sys.modules, compat.postgres_fields is None)
print("requests" in sys.modules, compat.requests is None)
import requests  # any other importer still gets it
print(requests.get.__name__)
"""


@pytest.mark.parametrize(
    ("database_url", "expected"),
    [
        ("", ["True", "False True", "False True", "get"]),
        ("postgres://nobody@127.0.0.1:1/none", ["False", "True False", "False True", "get"]),
    ],
)
def test_web_server_leaves_out_postgres_extras_off_postgresql_and_requests_for_drf(tmp_path, database_url, expected):
    # Without OTEL_*: tracing's OTLP exporter would import requests itself.
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    environ.update(VAR_DIR=str(tmp_path), DATABASE_URL=database_url)
    if not database_url:
        environ.pop("DATABASE_URL")
    result = subprocess.run([sys.executable, "-c", _LEAN], env=environ, cwd=settings.BASE_DIR, capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.stdout.split("\n")[:4] == expected, result.stderr[-2000:]


@pytest.fixture(scope="module")
def bounded_server(django_db_setup, django_db_blocker, tmp_path_factory):
    from tests.conftest import WebServer

    server = WebServer(tmp_path_factory.mktemp("bounded") / "web.log", HTTP_HEAD_TIMEOUT_S="1",
                       HTTP_MAX_HEAD_BYTES="16384")  # fmt: skip
    yield server.url
    server.stop()


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=30)


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_an_endless_header_gets_431_and_the_server_goes_on(bounded_server):
    with _connect(bounded_server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        try:
            for _ in range(64):  # 1 MiB, far past the bound; the server closes long before
                sock.sendall(b"a" * 16384)
        except OSError:  # the server closed while we were still sending
            pass
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert httpx.get(f"{bounded_server}/health", timeout=30).status_code == 200


def test_half_a_request_head_gets_408_after_the_timeout(bounded_server):
    with _connect(bounded_server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        started = time.monotonic()
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert time.monotonic() - started < 20


def test_a_large_body_is_not_a_large_head(bounded_server):
    body = {"model": "x", "messages": [{"role": "user", "content": "a" * 200_000}]}
    answer = httpx.post(f"{bounded_server}/v1/chat/completions", json=body, timeout=30)
    assert answer.status_code == 401  # read whole and refused for the missing token, not for its size


def test_a_kept_alive_connection_serves_a_second_request(bounded_server):
    with httpx.Client(timeout=30) as client:
        assert [client.get(f"{bounded_server}/health").status_code for _ in range(3)] == [200, 200, 200]
