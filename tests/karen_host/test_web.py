"""`python -m karen_host.web`, what `make run` serves with: what it imports."""

import os
import subprocess
import sys

import pytest
from django.conf import settings

_LEAN = """
import os, sys
os.environ["DJANGO_SETTINGS_MODULE"] = "karen_host.settings"
from karen_host.web import skip_postgres_extras
print(skip_postgres_extras())
import karen_host.asgi
from django.urls import get_resolver
get_resolver().url_patterns
from rest_framework import compat
print("psycopg" in sys.modules, compat.postgres_fields is None)
"""


@pytest.mark.parametrize(
    ("database_url", "expected"),
    [("", ["True", "False True"]), ("postgres://nobody@127.0.0.1:1/none", ["False", "True False"])],
)
def test_web_server_leaves_postgres_extras_out_on_another_database(tmp_path, database_url, expected):
    environ = {**os.environ, "VAR_DIR": str(tmp_path), "DATABASE_URL": database_url}
    if not database_url:
        environ.pop("DATABASE_URL")
    result = subprocess.run([sys.executable, "-c", _LEAN], env=environ, cwd=settings.BASE_DIR, capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.stdout.split("\n")[:2] == expected, result.stderr[-2000:]
