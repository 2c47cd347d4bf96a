"""The one place sglguard calls Apprise: send one title and body to a notifier's URLs.

Apprise costs about 10 MiB of imports: it is loaded at the first delivery, not at start-up."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from typing import Any

_TYPES = {"critical": "failure", "warning": "warning", "unknown": "warning", "ok": "success",
          "info": "info"}


def send(urls: Sequence[str], severity: str, title: str, body: str,
         timeout: float, attach: str | None = None) -> str | None:
    """Deliver to every URL; None when Apprise says it went through, else what it said.
    `attach`: a file to attach where the channel takes attachments (e-mail, Slack...);
    channels that do not take them get the message without it."""
    import apprise

    sender = apprise.Apprise()
    for url in urls:
        if not sender.add(url):
            return "Apprise could not load one of the notifier's URLs"
    # Plain text: server text must not become mentions, links or markup in a chat.
    options: dict[str, Any] = {"body": body, "title": title,
                               "body_format": apprise.NotifyFormat.TEXT,
                               "notify_type": apprise.NotifyType(_TYPES.get(severity, "info"))}
    if attach is not None:
        options["attach"] = attach
    if "timeout" in inspect.signature(sender.notify).parameters:  # Apprise 2
        options["timeout"] = timeout
    capture = apprise.LogCapture(  # type: ignore[no-untyped-call]
        level=logging.WARNING, fmt="%(message)s")
    with capture as captured:
        result = sender.notify(**options)
        logs = str(captured.getvalue()).strip()
    if result:
        return None
    if hasattr(result, "logs"):
        logs = "\n".join(entry.message for entry in result.logs()) or logs
    return logs.replace("\n", "; ") or "Apprise reported a failed delivery"
