"""Requests and replies as the routes see them, independent of the socket handling."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain; charset=utf-8"
SSE_TYPE = "text/event-stream; charset=utf-8"


class BadRequest(Exception):
    """A request the server refuses; carries the status and JSON body to answer with."""

    def __init__(self, body: Any, status: int = 400) -> None:
        super().__init__(str(body))
        self.body = body
        self.status = status


def _connected() -> bool:
    return False


@dataclass(frozen=True)
class Request:
    """One HTTP request: method, path without query, query, lower-cased headers and body, and
    whether its client has hung up since (asked of the socket each time)."""

    method: str
    path: str
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    disconnected: Callable[[], bool] = field(default=_connected, compare=False, repr=False)

    def json(self) -> Any:
        """The body parsed as JSON; an empty body reads as {}."""
        if not self.body.strip():
            return {}
        try:
            return json.loads(self.body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadRequest({"error": {"message": f"Invalid JSON body: {exc}"}}) from None

    def json_object(self) -> dict[str, Any]:
        body = self.json()
        if not isinstance(body, dict):
            raise BadRequest({"error": {"message": "The request body must be a JSON object."}})
        return body


@dataclass(frozen=True)
class Reply:
    """A complete response, sent in one write."""

    status: int
    body: bytes = b""
    content_type: str | None = None


@dataclass(frozen=True)
class StreamReply:
    """A response whose body goes out piece by piece with chunked transfer encoding."""

    status: int
    chunks: Iterable[bytes]
    content_type: str = SSE_TYPE


def json_reply(status: int, body: Any) -> Reply:
    return Reply(status, json.dumps(body).encode(), JSON_TYPE)


def text_reply(status: int, text: str) -> Reply:
    return Reply(status, text.encode(), TEXT_TYPE)


def empty_reply(status: int) -> Reply:
    return Reply(status)


def sse_event(payload: Any) -> bytes:
    """One server-sent event as SGLang writes it: ``data: {json}`` and a blank line."""
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {text}\n\n".encode()


def status_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
