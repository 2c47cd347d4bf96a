"""Notifications: what a message says (`messages`, `notice`), where it goes (`routing`), how it
is shaped (`templates`), reminders and acknowledgement (`reminders`), delivery through the
outbox (`delivery`), and the one call to Apprise (`channel`).

Importing the package loads none of them: `Notifications`, `Message` and the rest are loaded
at first use, so the catalog's models can use the routing and templates without the store."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sglguard.notify.delivery import DeliveryFailed, Notifications, url_secrets
    from sglguard.notify.notice import Message, host_name

__all__ = ["DeliveryFailed", "Message", "Notifications", "host_name", "url_secrets"]
_FROM = {"DeliveryFailed": "delivery", "Notifications": "delivery", "url_secrets": "delivery",
         "Message": "notice", "host_name": "notice"}


def __getattr__(name: str) -> Any:
    if name not in _FROM:
        raise AttributeError(f"module 'sglguard.notify' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"sglguard.notify.{_FROM[name]}"), name)
