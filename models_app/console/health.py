"""What the dashboard's first row shows: is the server, its database, broker and nodes well."""

import time
from typing import Any

from celery import current_app
from django.db import connection
from django.utils import timezone
from kombu.utils.url import maybe_sanitize_url

from inference.engine import get_engine
from models_app.choices import NodeStatus
from models_app.models import InferenceNode
from models_app.selectors import latest_self_tests

BROKER_TIMEOUT_S = 1.0


def health_checks() -> list[dict[str, Any]]:
    """Each check as {name, ok, detail}: liveness, database, broker, nodes, self-tests."""
    return [_liveness(), _database(), _broker(), *_nodes(), _self_tests()]


def _liveness() -> dict[str, Any]:
    status = get_engine().status()
    alive = all(m.get("scheduler_alive", True) for m in status["loaded"])
    restarts = status.get("stats", {}).get("scheduler_restarts", 0)
    detail = f"{len(status['loaded'])} model(s) loaded; schedulers {'alive' if alive else 'FAILED'}"
    return {"name": "server", "ok": alive, "detail": detail + (f", {restarts} restart(s)" if restarts else "")}


def _database() -> dict[str, Any]:
    started = time.perf_counter()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:
        return {"name": "database", "ok": False, "detail": str(exc)[:200]}
    ms = (time.perf_counter() - started) * 1000
    return {"name": "database", "ok": True, "detail": f"{connection.vendor}, answered in {ms:.1f} ms"}


def _broker() -> dict[str, Any]:
    url = maybe_sanitize_url(current_app.conf.broker_url)
    try:
        with current_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=BROKER_TIMEOUT_S)
    except Exception as exc:
        return {"name": "broker", "ok": False, "detail": f"{url}: {str(exc)[:160]}"}
    return {"name": "broker", "ok": True, "detail": url}


def _nodes() -> list[dict[str, Any]]:
    checks = []
    for node in InferenceNode.objects.order_by("name"):
        seen = timezone.now() - node.last_heartbeat if node.last_heartbeat else None
        when = f"last heartbeat {seen.total_seconds():.0f} s ago" if seen else "no heartbeat yet"
        detail = f"{node.hardware or 'unknown hardware'}; {node.in_flight} in flight; {when}"
        checks.append({"name": f"node {node.name}", "ok": node.status == NodeStatus.UP, "detail": detail})
    return checks


def _self_tests() -> dict[str, Any]:
    results = latest_self_tests()
    failed = [r.model_id for r in results if not r.passed]
    if not results:
        return {"name": "self-tests", "ok": None, "detail": "none run yet"}
    detail = f"failed: {', '.join(failed)}" if failed else f"{len(results)} model(s) passed their latest"
    return {"name": "self-tests", "ok": not failed, "detail": detail}
