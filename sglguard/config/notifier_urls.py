"""Notifier URLs checked the way Apprise will read them, offline: nothing is sent, and no part
of a URL (tokens, passwords) appears in what is said about it."""

from __future__ import annotations

import difflib
import logging
import re
import threading
from functools import cache

_LOCK = threading.Lock()


@cache
def _schemas() -> frozenset[str]:
    try:
        from apprise.manager_plugins import NotificationManager

        manager = NotificationManager()  # type: ignore[no-untyped-call]
        return frozenset(schema.lower() for schema in manager.schemas())  # type: ignore[no-untyped-call]
    except (ImportError, AttributeError):  # another Apprise layout: instantiate() still judges
        return frozenset()


class _Collect(logging.Handler):
    """Apprise's warnings about one URL, from this thread only."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.reasons: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread and record.levelno == logging.WARNING:
            self.reasons.append(record.getMessage())


def _hidden(text: str, url: str) -> str:
    """`text` with every part of `url` past its scheme (tokens, users, hosts) replaced."""
    parts = sorted({part for part in re.split(r"[/:@?&=#,;+]+", url.partition("://")[2])
                    if len(part) >= 3}, key=len, reverse=True)
    for part in parts:
        text = text.replace(part, "***")
    return text


def apprise_problem(url: str) -> str | None:
    """Why Apprise cannot use `url`, or None when it can. Only the scheme is named."""
    import apprise

    scheme, separator, _ = url.partition("://")
    if not separator or not scheme:
        return "not an Apprise URL (expected scheme://..., e.g. slack://..., mailto://...)"
    shown = f"{scheme}://..."
    collect = _Collect()
    logger = logging.getLogger("apprise")
    with _LOCK:  # its warnings are collected here, not logged: they may quote a token
        level, propagate = logger.level, logger.propagate
        logger.addHandler(collect)
        logger.setLevel(logging.WARNING)
        logger.propagate = False
        try:
            plugin = apprise.Apprise.instantiate(url, suppress_exceptions=True)
        finally:
            logger.removeHandler(collect)
            logger.setLevel(level)
            logger.propagate = propagate
    if plugin or disabled_here(scheme):
        return None  # (a service this host lacks the libraries for is a warning, not an error)
    schemas = _schemas()
    if schemas and scheme.lower() not in schemas:
        close = difflib.get_close_matches(scheme.lower(), sorted(schemas), n=1)
        hint = f" (did you mean {close[0]}://?)" if close else ""
        return f"{shown}: Apprise has no service with the scheme {scheme!r}{hint}"
    reasons = "; ".join(dict.fromkeys(_hidden(reason, url).strip().rstrip(":.").strip()
                                      for reason in collect.reasons))
    return (f"{shown}: Apprise cannot read this URL"
            + (f": {reasons}" if reasons else ": a part is missing or malformed")
            + f" (see Apprise's page for {scheme}://)")


def disabled_here(scheme: str) -> bool:
    """Apprise knows the service but turned it off on this host (a library it needs, such as
    D-Bus's for desktop notifications, is not installed)."""
    try:
        from apprise.manager_plugins import NotificationManager

        plugin = NotificationManager()[scheme.lower()]  # type: ignore[no-untyped-call]
    except (ImportError, KeyError, AttributeError, TypeError):
        return False
    return getattr(plugin, "enabled", True) is False
