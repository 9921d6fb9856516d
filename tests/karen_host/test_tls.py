"""HTTPS and WSS with TLS_CERT_FILE/TLS_KEY_FILE (a certificate made here), and `check --deploy` behind TLS."""

import asyncio
import datetime
import ipaddress
import json
import os
import secrets
import ssl
import subprocess
import sys

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.conf import settings
from websockets.asyncio.client import connect

from models_app.server_api import ServerAPI
from tests.conftest import WebServer


@pytest.fixture
def certificate(tmp_path):
    """(cert path, key path) of a self-signed certificate for localhost and 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = tmp_path / "cert:with-colon.pem", tmp_path / "key.pem"  # a ':' in the path
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return cert_path, key_path


@pytest.mark.django_db(transaction=True)
def test_https_and_wss_with_the_certificate(tmp_path, certificate, small_model, api_token, settings):
    cert, key = certificate
    settings.TLS_CERT_FILE, settings.TLS_KEY_FILE = str(cert), str(key)
    trust = ssl.create_default_context(cafile=str(cert))
    server = WebServer(tmp_path / "web.log", verify=trust, TLS_CERT_FILE=str(cert), TLS_KEY_FILE=str(key))
    try:
        assert server.url.startswith("https://")
        answer = httpx.get(f"{server.url}/admin/login/", verify=trust, timeout=30)
        assert answer.status_code == 200 and answer.headers["Strict-Transport-Security"].startswith("max-age=")
        with pytest.raises(httpx.HTTPError):  # the port speaks TLS only
            httpx.get(server.url.replace("https://", "http://") + "/health", timeout=10)

        async def generate() -> dict:
            url = server.url.replace("https://", "wss://") + "/ws/v1/generate"
            async with connect(url, ssl=trust, subprotocols=["karen.v1", f"bearer.{api_token[1]}"]) as ws:
                await ws.send(json.dumps({"type": "generate", "id": "t", "model": small_model.id, "max_tokens": 4,
                                          "messages": [{"role": "user", "content": "Hi"}]}))  # fmt: skip
                while (frame := json.loads(await asyncio.wait_for(ws.recv(), timeout=60)))["type"] not in (
                    "done", "error"):  # fmt: skip
                    pass
                return frame

        frame = asyncio.run(generate())
        assert frame["type"] == "done" and frame["usage"]["completion_tokens"] == 4
        # The worker's client trusts the server's own certificate (SERVER_CA_FILE defaults to it).
        settings.SERVER_CA_FILE = str(cert)
        reply = ServerAPI(server.url, api_token[1]).chat(small_model.id, [{"role": "user", "content": "Hi"}],
                                                         max_tokens=2)  # fmt: skip
        assert reply["usage"]["completion_tokens"] == 2
    finally:
        server.stop()


def _check_deploy(tmp_path, **env: str) -> subprocess.CompletedProcess:
    environ = {
        **os.environ,
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "VAR_DIR": str(tmp_path),
        "ALLOWED_HOSTS": "karen.example.org",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        **env,
    }
    return subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                          env=environ, cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=120)  # fmt: skip


def test_check_deploy_passes_behind_a_tls_proxy_and_fails_without(tmp_path):
    behind = _check_deploy(tmp_path, BEHIND_TLS_PROXY="true")
    assert behind.returncode == 0, behind.stdout + behind.stderr
    plain = _check_deploy(tmp_path)
    assert plain.returncode != 0
    assert all(w in plain.stdout + plain.stderr for w in ("W004", "W008", "W012", "W016"))


def test_check_deploy_passes_with_the_certificate(tmp_path, certificate):
    cert, key = certificate
    result = _check_deploy(tmp_path, TLS_CERT_FILE=str(cert), TLS_KEY_FILE=str(key))
    assert result.returncode == 0, result.stdout + result.stderr


def test_half_a_certificate_is_refused(tmp_path, certificate):
    result = _check_deploy(tmp_path, TLS_CERT_FILE=str(certificate[0]))
    assert result.returncode != 0 and "TLS_KEY_FILE" in result.stderr


def test_web_server_refuses_an_unreadable_certificate_and_names_it(tmp_path, certificate):
    environ = {**os.environ, "VAR_DIR": str(tmp_path), "TLS_CERT_FILE": str(tmp_path / "missing.pem"),
               "TLS_KEY_FILE": str(certificate[1])}  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "karen_host.web", "--port", "1"], env=environ,
                            cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2 and "TLS_CERT_FILE" in result.stderr and "missing.pem" in result.stderr
