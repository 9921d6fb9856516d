"""What the dashboard's first row shows: liveness, each readiness check (inference.readiness), the nodes."""

from typing import Any

from django.utils import timezone

from inference.engine import get_engine
from inference.readiness import readiness
from models_app.choices import NodeStatus
from models_app.models import InferenceNode


def health_checks() -> list[dict[str, Any]]:
    """Each check as {name, ok, detail, since}: liveness, then readiness's checks, then each inference node."""
    return [_liveness(), *(c.to_dict() for c in readiness()), *_nodes()]


def _liveness() -> dict[str, Any]:
    status = get_engine().status()
    alive = all(m.get("scheduler_alive", True) for m in status["loaded"])
    restarts = status.get("stats", {}).get("scheduler_restarts", 0)
    detail = f"{len(status['loaded'])} model(s) loaded; schedulers {'alive' if alive else 'FAILED'}"
    return {"name": "server", "ok": alive, "detail": detail + (f", {restarts} restart(s)" if restarts else "")}


def _nodes() -> list[dict[str, Any]]:
    checks = []
    for node in InferenceNode.objects.order_by("name"):
        seen = timezone.now() - node.last_heartbeat if node.last_heartbeat else None
        when = f"last heartbeat {seen.total_seconds():.0f} s ago" if seen else "no heartbeat yet"
        detail = f"{node.hardware or 'unknown hardware'}; {node.in_flight} in flight; {when}"
        checks.append({"name": f"node {node.name}", "ok": node.status == NodeStatus.UP, "detail": detail})
    return checks
