"""How fast the admin dashboard renders with a million usage rows behind it.

Fills a fresh SQLite database (in a temporary VAR_DIR, never the server's) with --rows
finished usage rows spread over the last 30 days, across --models models and --tokens
tokens, with a tail of errors and cancellations and realistic timings. Then it measures:

- backlog: the one-time rollup of every row (what the first look after an upgrade costs;
  afterwards Celery beat folds new rows every minute and each render folds the rest);
- render: GET /admin/ as a logged-in superuser (rollup of nothing new, both windows,
  health, charts), median and p95 of --renders;
- with_new_rows: the same with --fresh new rows finished since the last look each time.

Prints a table and writes bench/results/dashboard.json. Usage:
    .venv/bin/python bench/dashboard.py [--rows 1000000] [--renders 20] [--fresh 200]
"""

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
VAR = Path(tempfile.mkdtemp(prefix="karen-dashboard-bench-"))
os.environ.update({"VAR_DIR": str(VAR), "DATABASE_URL": f"sqlite:///{VAR / 'bench.sqlite3'}", "LOG_LEVEL": "WARNING"})
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "karen_host.settings")

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.test import Client  # noqa: E402
from django.utils import timezone  # noqa: E402

from models_app.choices import UsageStatus  # noqa: E402
from models_app.models import APIToken, LatencyRollup, LLMModel, UsageRecord, UsageRollup  # noqa: E402
from models_app.usage_rollup import roll_up_usage  # noqa: E402

ENDPOINTS = ("chat.completions", "completions", "ws.generate", "ollama.chat", "embeddings")
ENDINGS = [UsageStatus.COMPLETED] * 90 + [UsageStatus.CANCELLED] * 5 + [UsageStatus.ERROR] * 3 + [
    UsageStatus.TIMEOUT] * 2  # fmt: skip


def fill(rows: int, n_models: int, n_tokens: int, rng: random.Random, *, span: timedelta, prefix: str) -> None:
    """`rows` finished usage rows over the last `span`, in batches (one transaction each)."""
    # The rows' times are drawn here; the field's auto_now_add would make them all "now".
    UsageRecord._meta.get_field("created_at").auto_now_add = False
    models = list(LLMModel.objects.values_list("pk", flat=True))[:n_models]
    tokens = list(APIToken.objects.values_list("pk", flat=True))[:n_tokens]
    now = timezone.now()
    batch = []
    for i in range(rows):
        created = now - span * rng.random()
        ttft = rng.lognormvariate(4.5, 0.8)  # ~90 ms median, a long tail
        completion = rng.randint(1, 400)
        duration = ttft + completion * rng.uniform(8, 30)
        batch.append(UsageRecord(
            request_id=f"{prefix}{i}", token_id=rng.choice(tokens), model_id=models[min(int(rng.expovariate(1.5)),
            len(models) - 1)], endpoint=rng.choice(ENDPOINTS), status=rng.choice(ENDINGS),
            prompt_tokens=rng.randint(10, 3000), completion_tokens=completion, time_to_first_token_ms=ttft,
            duration_ms=duration, created_at=created, finished_at=created + timedelta(milliseconds=duration),
        ))  # fmt: skip
        if len(batch) == 20_000:
            UsageRecord.objects.bulk_create(batch)
            batch = []
    UsageRecord.objects.bulk_create(batch)


def setup(n_models: int, n_tokens: int) -> Client:
    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create_superuser("bench", password="bench-only")
    for i in range(n_models):
        LLMModel.objects.create(id=f"model-{i}", name=f"model-{i}", file_path=f"/nonexistent/{i}.gguf",
                                file_size=1, enabled=False)  # fmt: skip
    for i in range(n_tokens):
        APIToken.objects.create(name=f"token-{i}", owner=user, prefix=f"khk_b{i:07d}", secret_hash=f"{i:064x}",
                                scopes=["inference"])  # fmt: skip
    client = Client(HTTP_HOST="localhost")
    client.force_login(user)
    return client


def timed_renders(client: Client, renders: int, fresh: int, rng: random.Random) -> list[float]:
    times = []
    for r in range(renders):
        if fresh:
            fill(fresh, 99, 99, rng, span=timedelta(minutes=1), prefix=f"new{r}-")
        started = time.perf_counter()
        response = client.get("/admin/")
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.status_code
    return times


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {"median_ms": round(statistics.median(ordered), 1),
            "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--renders", type=int, default=20)
    parser.add_argument("--fresh", type=int, default=200, help="new rows before each render of the second series")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    client = setup(args.models, args.tokens)
    started = time.perf_counter()
    fill(args.rows, args.models, args.tokens, rng, span=timedelta(days=30), prefix="old")
    fill_s = time.perf_counter() - started
    started = time.perf_counter()
    folded = roll_up_usage()
    backlog_s = time.perf_counter() - started
    rollup_rows = UsageRollup.objects.count() + LatencyRollup.objects.count()
    client.get("/admin/")  # warm: templates compiled, engine created
    steady = summary(timed_renders(client, args.renders, 0, rng))
    with_new = summary(timed_renders(client, args.renders, args.fresh, rng))
    result = {
        "rows": args.rows, "models": args.models, "tokens": args.tokens, "fill_s": round(fill_s, 1),
        "backlog_rows": folded, "backlog_rollup_s": round(backlog_s, 1), "rollup_rows": rollup_rows,
        "render": steady, "render_with_new_rows": {**with_new, "new_rows_per_render": args.fresh},
        "database": "sqlite (the default setup)",
    }  # fmt: skip
    print(f"{args.rows:,} usage rows over 30 days; {args.models} models, {args.tokens} tokens")
    print(f"fill {fill_s:.1f} s; one-time rollup of the backlog {backlog_s:.1f} s into {rollup_rows:,} rollup rows")
    print(f"{'dashboard render':<34}{'median ms':>12}{'p95 ms':>10}")
    print(f"{'nothing new since the last look':<34}{steady['median_ms']:>12}{steady['p95_ms']:>10}")
    label = f"{args.fresh} new rows each time"
    print(f"{label:<34}{with_new['median_ms']:>12}{with_new['p95_ms']:>10}")
    out = ROOT / "bench" / "results" / "dashboard.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
