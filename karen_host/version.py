"""What is running: the package version and, when known, the git commit (for `/` and `/api/version`)."""

import functools
import os
import subprocess
from pathlib import Path

from karen_host import __version__

ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def commit() -> str | None:
    """GIT_COMMIT (an image build sets it), else the checkout's HEAD, else None; read once per process."""
    if value := os.environ.get("GIT_COMMIT", "").strip():
        return value[:40]
    if not (ROOT / ".git").exists():
        return None
    try:
        found = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                               text=True, timeout=2, check=True)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return found.stdout.strip() or None


def build_info() -> dict[str, str | None]:
    return {"version": __version__, "commit": commit()}
