"""The dashboard's usage rollup on PostgreSQL: its upsert, and two rollups at once counting each row once."""

import subprocess
import sys

from tests.scaleout.cluster import ROOT

ROWS = 2000
FOLD = "from models_app.usage_rollup import roll_up_usage; print(roll_up_usage(batch=97))"


def test_two_rollups_at_once_count_each_row_once(cluster):
    (token_id,) = cluster.sql(
        "INSERT INTO models_app_apitoken (name, owner_id, prefix, secret_hash, scopes, revoked, lane, created_at) "
        "SELECT 'pg-rollup', owner_id, 'khk_pgroll0', md5(random()::text) || md5(random()::text), "
        "'[\"inference\"]', false, 'interactive', now() FROM models_app_apitoken LIMIT 1 RETURNING id"
    )[0]
    cluster.sql(
        "INSERT INTO models_app_usagerecord (request_id, token_id, model_id, endpoint, lane, status, prompt_tokens, "
        "completion_tokens, time_to_first_token_ms, duration_ms, error_message, created_at, finished_at, rolled_up) "
        "SELECT 'pgroll-' || i, %s, 'smollm2', 'chat.completions', 'interactive', 'completed', 10, 5, 20.0, 100.0, "
        "'', now() - make_interval(mins => i %% 180), now(), false FROM generate_series(1, %s) AS i",
        token_id, ROWS,
    )  # fmt: skip
    folds = [
        subprocess.Popen(
            [sys.executable, "manage.py", "shell", "-c", FOLD],
            env=cluster.env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [fold.communicate(timeout=300) for fold in folds]
    assert all(fold.returncode == 0 for fold in folds), outputs
    for span in ("hour", "day"):
        (total,) = cluster.sql(
            "SELECT coalesce(sum(requests), 0), coalesce(sum(completion_tokens), 0) FROM models_app_usagerollup "
            "WHERE token_id = %s AND span = %s",
            token_id, span,
        )  # fmt: skip
        assert total == (ROWS, 5 * ROWS), span
    assert cluster.sql(
        "SELECT count(*) FROM models_app_usagerecord WHERE token_id = %s AND NOT rolled_up", token_id
    ) == [(0,)]
    hours = cluster.sql("SELECT count(*) FROM models_app_usagerollup WHERE token_id = %s AND span = 'hour'", token_id)
    assert hours[0][0] in (3, 4)  # 180 minutes of rows touch three or four clock hours
