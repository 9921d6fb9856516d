"""A small scale-out deployment on this machine: PostgreSQL, Redis, one web node, two inference nodes.

The web node is `python -m karen_host.web` with INFERENCE_MODE=remote (a test may start a second one);
each inference node is `manage.py runworker inference`. They share a PostgreSQL database this helper creates
and drops, and a Redis database number of their own.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[2]
POSTGRES = "postgresql://postgres@127.0.0.1:5432"
REDIS_URL = os.environ.get("SCALEOUT_REDIS_URL", "redis://127.0.0.1:6379/11")
HEARTBEAT_S = 0.5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def services_reachable() -> str | None:
    """None if PostgreSQL and Redis answer, else why not."""
    for host, port, name in (("127.0.0.1", 5432, "PostgreSQL"), ("127.0.0.1", 6379, "Redis")):
        try:
            socket.create_connection((host, port), timeout=2).close()
        except OSError as exc:
            return f"{name} at {host}:{port}: {exc}"
    return None


class Cluster:
    """Processes by name: `web`, `node-a`, `node-b`; logs under `workdir`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.db_name = f"karen_scaleout_{os.getpid()}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.processes: dict[str, subprocess.Popen] = {}
        with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{self.db_name}"')
        self.env = {
            **os.environ,
            "DATABASE_URL": f"{POSTGRES}/{self.db_name}",
            "REDIS_URL": REDIS_URL,
            "CELERY_BROKER_URL": "memory://",
            "VAR_DIR": str(workdir / "var"),
            "MODELS_DIR": str(workdir / "models"),
            "INFERENCE_HEARTBEAT_S": str(HEARTBEAT_S),
            "INFERENCE_MODE": "local",
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
        self._manage("migrate", "--noinput")
        seeded = subprocess.run(
            [sys.executable, str(Path(__file__).with_name("seed.py"))],
            env=self.env, cwd=ROOT, check=True, capture_output=True, text=True,
        )  # fmt: skip
        self.secret = json.loads(seeded.stdout.strip().splitlines()[-1])["secret"]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}

    def _manage(self, *args: str) -> None:
        subprocess.run([sys.executable, "manage.py", *args], env=self.env, cwd=ROOT, check=True, capture_output=True)

    # -- processes ------------------------------------------------------------------
    def start_node(self, name: str) -> None:
        argv = [sys.executable, "manage.py", "runworker", "inference"]
        self._spawn(name, argv, {"INFERENCE_NODE_NAME": name})

    def start_web(self, name: str = "web") -> str:
        """Start a web node (karen_host.web, remote mode) and return its URL; `web` is the one at `self.url`."""
        port = self.port if name == "web" else free_port()
        argv = [sys.executable, "-m", "karen_host.web", "--host", "127.0.0.1", "--port", str(port)]
        self._spawn(name, argv, {"INFERENCE_MODE": "remote"})
        url = f"http://127.0.0.1:{port}"
        self._wait(lambda: self._healthy(url), 60, f"{name} to answer /health")
        return url

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        log = (self.workdir / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            argv, env={**self.env, **env}, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )

    def kill(self, name: str) -> None:
        """kill -9: no goodbye, no cleanup, as a machine that loses power."""
        process = self.processes[name]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def ensure_nodes(self, *names: str) -> None:
        """Start the nodes among `names` that are not running, and wait until all heartbeat.

        A restarted node counts once it heartbeats at a new channel: the row of a node just
        killed still looks live for a few heartbeats, and must not pass for the new process.
        """
        restarted = {}
        for name in names:
            process = self.processes.get(name)
            if process is None or process.poll() is not None:
                restarted[name] = self._channel(name)
                self.start_node(name)

        def up() -> bool:
            fresh = all(self._channel(name) not in (None, old) for name, old in restarted.items())
            return fresh and set(names) <= self.live_nodes()

        self._wait(up, 90, f"nodes {names} to heartbeat")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    # -- the database -----------------------------------------------------------------
    def sql(self, query: str, *params: object) -> list[tuple]:
        with psycopg.connect(f"{POSTGRES}/{self.db_name}", autocommit=True) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    def live_nodes(self) -> set[str]:
        rows = self.sql(
            "SELECT name FROM models_app_inferencenode WHERE status = 'up' "
            "AND last_heartbeat > now() - make_interval(secs => %s)",
            HEARTBEAT_S * 3,
        )
        return {name for (name,) in rows}

    def _channel(self, name: str) -> str | None:
        rows = self.sql("SELECT channel FROM models_app_inferencenode WHERE name = %s", name)
        return rows[0][0] if rows else None

    def node(self, name: str) -> dict:
        rows = self.sql("SELECT status, in_flight, loaded FROM models_app_inferencenode WHERE name = %s", name)
        status, in_flight, loaded = rows[0]
        return {"status": status, "in_flight": in_flight, "loaded": [m["id"] for m in loaded], "report": loaded}

    def place(self, model_id: str, node: str) -> None:
        self.sql(
            "INSERT INTO models_app_modelplacement (node_id, model_id, created_at) "
            "SELECT id, %s, now() FROM models_app_inferencenode WHERE name = %s ON CONFLICT DO NOTHING",
            model_id,
            node,
        )

    def unplace(self, model_id: str, node: str) -> None:
        self.sql(
            "DELETE FROM models_app_modelplacement WHERE model_id = %s "
            "AND node_id = (SELECT id FROM models_app_inferencenode WHERE name = %s)",
            model_id,
            node,
        )

    def usage(self) -> list[dict]:
        rows = self.sql(
            "SELECT request_id, status, prompt_tokens, completion_tokens, error_message FROM models_app_usagerecord"
        )
        keys = ("request_id", "status", "prompt_tokens", "completion_tokens", "error_message")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def wait_for(self, condition: object, timeout: float, what: str) -> None:
        self._wait(condition, timeout, what)

    # -- helpers ----------------------------------------------------------------------
    def _healthy(self, url: str) -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def _wait(self, condition: object, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.1)
        logs = "\n".join(f"--- {name}\n{self.log(name)[-3000:]}" for name in self.processes)
        raise TimeoutError(f"timed out waiting for {what}\n{logs}")
