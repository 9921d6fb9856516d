"""Readiness: whether this server should get traffic now (`/health/ready`), check by check.

`/health` stays liveness (the process answers). Readiness asks more: the server is not
shutting down (inference.drain), the database and the
broker answer, the `preload` models are loaded and passed their latest self-test, the
disks have room, the registered files are there, a GPU is visible where a config counts
on one, and KAREN answers where KAREN_URL is set. Each check's state and the time it last
changed are kept per process, for `/health/ready`, the admin's dashboard and `/metrics`.
"""

import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import llama_cpp
from celery import current_app
from django.conf import settings
from django.db import connection
from kombu.utils.url import maybe_sanitize_url

from inference import drain
from inference.engine import get_engine
from inference.engine.devices import OFFLOAD_KINDS, devices
from models_app.choices import ModelStatus
from models_app.models import LLMModel
from models_app.selectors import latest_self_tests

BROKER_TIMEOUT_S = 1.0
KAREN_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Check:
    """One readiness check: passed or not, why, and since when it has been so (UTC)."""

    name: str
    ok: bool
    detail: str
    since: datetime

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "since": self.since.isoformat()}


_states: dict[str, tuple[bool, datetime]] = {}
_states_lock = threading.Lock()


def readiness() -> list[Check]:
    """Every check, run now (each bounded: the broker 1 s, KAREN 2 s); a check that raises has failed."""
    checks = []
    for name, probe in _PROBES:
        try:
            ok, detail = probe()
        except Exception as exc:
            ok, detail = False, f"the check itself failed: {exc!r}"[:300]
        checks.append(Check(name, ok, detail, _since(name, ok)))
    return checks


def _since(name: str, ok: bool) -> datetime:
    """When `name` last changed state (the first evaluation counts as a change)."""
    with _states_lock:
        previous = _states.get(name)
        if previous is None or previous[0] != ok:
            _states[name] = (ok, datetime.now(UTC))
        return _states[name][1]


def _database() -> tuple[bool, str]:
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return True, f"{connection.vendor}, answered in {(time.perf_counter() - started) * 1000:.1f} ms"


def _broker() -> tuple[bool, str]:
    url = maybe_sanitize_url(current_app.conf.broker_url)
    try:
        with current_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=BROKER_TIMEOUT_S)
    except Exception as exc:
        return False, f"{url}: {str(exc)[:160]}"
    return True, url


def _preload_models() -> tuple[bool, str]:
    wanted = set(
        LLMModel.objects.filter(preload=True, enabled=True, status=ModelStatus.AVAILABLE).values_list("pk", flat=True)
    )
    loaded = {m["id"] for m in get_engine().status()["loaded"]}
    missing = sorted(wanted - loaded)
    if missing:
        return False, f"not loaded yet: {', '.join(missing)}"
    return True, f"{len(wanted)} preload model(s) loaded" if wanted else "no model is marked preload"


def _self_tests() -> tuple[bool, str]:
    preload = set(LLMModel.objects.filter(preload=True, enabled=True).values_list("pk", flat=True))
    latest = {r.model_id: r for r in latest_self_tests() if r.model_id in preload}
    failed = sorted(m for m, r in latest.items() if not r.passed)
    untested = sorted(preload - set(latest))
    if failed or untested:
        parts = ([f"failed: {', '.join(failed)}"] if failed else []) + (
            [f"not tested yet: {', '.join(untested)}"] if untested else []
        )
        return False, "; ".join(parts)
    return True, f"{len(latest)} preload model(s) passed their latest self-test" if latest else "nothing to test"


def _disk() -> tuple[bool, str]:
    floor = settings.DISK_MIN_FREE_MB
    low, report = [], []
    for label, folder in (("VAR_DIR", settings.VAR_DIR), ("MODELS_DIR", settings.MODELS_DIR)):
        free_mb = shutil.disk_usage(_existing(Path(folder))).free / 2**20
        report.append(f"{label} {free_mb:,.0f} MB free")
        if free_mb < floor:
            low.append(label)
    detail = ", ".join(report) + f" (floor {floor} MB, DISK_MIN_FREE_MB)"
    return not low, (f"low on space: {', '.join(low)}; " if low else "") + detail


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _model_files() -> tuple[bool, str]:
    paths = LLMModel.objects.filter(enabled=True).exclude(status=ModelStatus.MISSING).values_list("pk", "file_path")
    gone = sorted(pk for pk, path in paths if not Path(path).is_file())
    if gone:
        return False, f"file gone for: {', '.join(gone)} (a scan marks them missing)"
    return True, f"{len(paths)} enabled model file(s) present"


def _gpu() -> tuple[bool, str]:
    if settings.INFERENCE_MODE == "remote":
        return True, "models run on the inference nodes; each node reports its own hardware"
    asking = sorted(LLMModel.objects.filter(enabled=True, config__n_gpu_layers__gt=0).values_list("pk", flat=True))
    if not llama_cpp.llama_supports_gpu_offload():
        build = "this llama.cpp build runs on the CPU only"
        if asking:
            return False, f"{build}, but n_gpu_layers > 0 for: {', '.join(asking)}"
        return True, build
    gpus = [device for device in devices() if device.kind in OFFLOAD_KINDS]  # the build offloads: checked above
    if asking and not gpus:
        build = "this build offloads to a GPU, but no GPU device is visible"
        return False, f"{build}; n_gpu_layers > 0 for: {', '.join(asking)}"
    listed = "; ".join(map(str, gpus)) or "none visible"
    return True, f"GPU devices: {listed}" + (f"; {len(asking)} model(s) set n_gpu_layers > 0" if asking else "")


def _karen() -> tuple[bool, str]:
    url = settings.KAREN_URL
    if not url:
        return True, "KAREN_URL not set: not checked"
    import httpx  # only where KAREN_URL is set

    try:
        response = httpx.get(url, timeout=KAREN_TIMEOUT_S, follow_redirects=False)
    except httpx.HTTPError as exc:
        return False, f"{url}: {type(exc).__name__}: {str(exc)[:120]}"
    return True, f"{url} answered HTTP {response.status_code}"


def _serving() -> tuple[bool, str]:
    now = drain.state()
    if now["draining"]:
        return False, f"shutting down for {now['draining_for_s']} s; {now['running']} generation(s) finishing"
    return True, f"accepting requests; {now['running']} generation(s) running"


_PROBES: list[tuple[str, Callable[[], tuple[bool, str]]]] = [
    ("serving", _serving),
    ("database", _database),
    ("broker", _broker),
    ("preload_models", _preload_models),
    ("self_tests", _self_tests),
    ("disk", _disk),
    ("model_files", _model_files),
    ("gpu", _gpu),
    ("karen", _karen),
]
