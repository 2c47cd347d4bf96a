"""How the CLI writes logs: text for people, or one JSON object per line for machines.

A record's `check`, `target` and `incident` come from `extra={...}` on the call, else from
the context a caller set with `log_context()` (the check being run, the incident acted on).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

FIELDS = ("check", "target", "incident")
_CONTEXT: ContextVar[dict[str, Any] | None] = ContextVar("sglguard_log_context", default=None)
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Records logged inside carry these fields (check=, target=, incident=)."""
    token = _CONTEXT.set({**(_CONTEXT.get() or {}), **{
        key: value for key, value in fields.items() if value is not None}})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message, the fields of the
    context, and the exception's traceback as text when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        item: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = _CONTEXT.get() or {}
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is None:
                value = context.get(name)
            if value is not None:
                item[name] = value
        if record.exc_info:
            item["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            item["stack"] = self.formatStack(record.stack_info)
        return json.dumps(item, default=str, ensure_ascii=False)


def formatter(kind: str) -> logging.Formatter:
    return JsonFormatter() if kind == "json" else logging.Formatter(TEXT_FORMAT)
