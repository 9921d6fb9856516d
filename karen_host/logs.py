"""Log records: secrets masked, the request they belong to attached, text or one JSON object per line.

settings.LOGGING wires these: `SecretFilter` and `ContextFilter` on the handler, then
`TextFormatter` or, with LOG_FORMAT=json, `JSONFormatter`. `bind(...)` attaches fields
(request_id, token, model, endpoint; a Celery task's id) to every record logged in the
same context, asyncio tasks and sync_to_async threads included.
"""

import contextlib
import contextvars
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("log_context", default=None)

# A token keeps its lookup prefix (khk_ + 8, shown in the admin, not enough to use); the rest goes.
_SECRETS = [
    (re.compile(r"\b(khk_[A-Za-z0-9_-]{8})[A-Za-z0-9_-]+"), r"\1…"),
    (re.compile(r"(?i)\b(bearer|basic)(\s+|\.)[A-Za-z0-9._~+/=:-]{6,}"), r"\1\2***"),
    (
        re.compile(
            r"(?i)(\"?\b(?:password|passwd|secret|api_key|apikey|access_token|refresh_token)\"?\s*[:=]\s*\"?)"
            r"[^\"\s,&}]+"
        ),
        r"\1***",
    ),
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]+:)[^@\s/]+@"), r"\1***@"),  # credentials in a URL
]
# What a LogRecord has of its own; anything else on it came as `extra` and is logged as a field.
_RECORD_FIELDS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def mask(text: str) -> str:
    """`text` with bearer tokens, passwords and URL credentials replaced."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


@contextlib.contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Attach `fields` to every record logged inside the block (and in tasks and threads started from it)."""
    token = _context.set({**(_context.get() or {}), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def bind_for_rest(**fields: Any) -> None:
    """Attach `fields` for the rest of the current context (a request's asyncio task ends with it)."""
    _context.set({**(_context.get() or {}), **fields})


class SecretFilter(logging.Filter):
    """Masks secrets in a record's message and traceback before any formatter or handler sees them."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = mask(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text)
        return True


class ContextFilter(logging.Filter):
    """Copies the bound context (request id, token, model, endpoint) onto the record; `extra` wins."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_context.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS and not k.startswith("_")}


class TextFormatter(logging.Formatter):
    """`time level logger: message [key=value ...]`, for a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = _fields(record)
        if not fields:
            return text
        head, _, tail = text.partition("\n")
        pairs = " ".join(f"{k}={v}" for k, v in fields.items())
        return f"{head} [{pairs}]" + (f"\n{tail}" if tail else "")


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the bound and `extra` fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, default=str, ensure_ascii=False)
