"""Talking to an SGLang gateway (smg, sglang-router) about its workers: finding a worker by URL
whatever host name it was registered under, the registration to re-add it with, and what a
gateway's error means for the remediation chain.

smg 1.13 lists each worker with its `id`, `url`, `worker_type`, `bootstrap_port`, `priority`,
`cost`, `labels`, `model_id`, `status` (ready/draining) and `load` (requests it has in flight
there). `POST /workers` with only `url` registers a *regular* worker with default priority and
cost: the whole registration must go back, or a PD prefill worker returns as a regular one.

Not all of it, though: the gateway fills most `labels` itself from the worker's own
`/server_info` and `/model_info` when it registers it (its version, model path, parallel sizes,
...), and a label sent in `POST /workers` wins over what it discovers. Sent back as stored, a
worker restarted into a new release would be listed with its old version for good: only what
an operator gives (url, type, bootstrap port, priority, cost, model, and the labels the gateway
does not discover) goes back, and the gateway discovers the rest again."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from sglguard.client import HTTPStatusError, TargetError
from sglguard.remediations.base import RemediationError
from sglguard.resolver import RESOLVER, ResolveTimeout

# What a gateway answers when asking again cannot help: no key, wrong key, no such route.
PERMANENT = {401: "the gateway wants a key (set api_key)",
             403: "the gateway refused the key (it needs an admin key)",
             404: "the gateway has no such route",
             405: "the gateway does not allow this method there"}
REGISTRATION_FIELDS = ("url", "worker_type", "bootstrap_port", "priority", "cost", "labels",
                       "model_id")
# The labels smg 1.13 fills itself from a worker's /server_info and /model_info (a worker
# registered without labels is listed with exactly these).
DISCOVERED_LABELS = frozenset({
    "architectures", "dp_size", "has_audio_understanding", "has_image_understanding",
    "is_generation", "max_model_len", "max_running_requests", "model_path", "model_type",
    "pp_size", "served_model_name", "tokenizer_path", "tp_size", "version"})
_LOOPBACK = "127.0.0.1"
LOOKUP_S = 2.0  # a gateway's worker names: a resolver that does not answer holds no drain


class GatewayDown(Exception):
    """The gateway could not be asked (refused, timed out) or answered 5xx."""


def _address(host: str) -> str:
    """The host as an address: loopback names are one, other names resolve when they can
    (within LOOKUP_S: a late answer is not cached, the next call asks again)."""
    try:
        return _resolved(host)
    except ResolveTimeout:
        return host


@lru_cache(maxsize=256)
def _resolved(host: str) -> str:
    if host in ("localhost", "localhost.localdomain", "0.0.0.0", "::", "::1"):
        return _LOOPBACK
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        try:
            found = RESOLVER.lookup(host, None, 0, socket.SOCK_STREAM, LOOKUP_S)
            address = ipaddress.ip_address(str(found[0][4][0]))
        except (OSError, ValueError, IndexError):
            return host
    return _LOOPBACK if address.is_loopback else str(address)


def normalised(url: str) -> tuple[str, str, int]:
    """(scheme, address, port) of a worker URL: `http://localhost:30000/` and
    `http://127.0.0.1:30000` are one worker; a missing port is the scheme's."""
    parts = urlsplit(url.strip() if "://" in url else f"http://{url.strip()}")
    scheme = (parts.scheme or "http").lower()
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        port = 0
    return scheme, _address((parts.hostname or "").lower()), port


def same_worker(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/") or normalised(a) == normalised(b)


def find(entries: Sequence[Mapping[str, Any]], url: str) -> Mapping[str, Any] | None:
    """The gateway's entry for a worker URL (exact spelling first, then normalised)."""
    for entry in entries:
        if isinstance(entry.get("url"), str) and entry["url"].rstrip("/") == url.rstrip("/"):
            return entry
    for entry in entries:
        if isinstance(entry.get("url"), str) and same_worker(entry["url"], url):
            return entry
    return None


def registration(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The body of POST /workers that registers the worker again as the operator did: the
    labels the gateway discovers from the worker are left for it to discover again."""
    body = {key: entry[key] for key in REGISTRATION_FIELDS if entry.get(key) is not None}
    labels = body.pop("labels", None)
    if isinstance(labels, Mapping):
        own = {key: value for key, value in labels.items() if key not in DISCOVERED_LABELS}
        if own:
            body["labels"] = own
    return body


def describe(body: Mapping[str, Any]) -> str:
    """`prefill, bootstrap port 8998, priority 10, cost 2.5, 3 labels`."""
    parts = [str(body.get("worker_type", "regular"))]
    if body.get("bootstrap_port") is not None:
        parts.append(f"bootstrap port {body['bootstrap_port']}")
    for key in ("priority", "cost"):
        if body.get(key) is not None:
            parts.append(f"{key} {body[key]}")
    if body.get("labels"):
        count = len(body["labels"])
        parts.append(f"{count} label{'' if count == 1 else 's'}")
    return ", ".join(parts)


def load_of(entry: Mapping[str, Any]) -> int:
    """Requests the gateway has in flight on the worker."""
    value = entry.get("load", 0)
    return int(value) if isinstance(value, int | float) else 0


def permanent(status: int, gateway: str, call: str, message: str) -> RemediationError | None:
    """The escalating error for a 401/403/404/405 answer, None for any other status."""
    why = PERMANENT.get(status)
    if why is None:
        return None
    return RemediationError(f"gateway {gateway}: {call} answered {status} ({why}): {message}",
                            permanent=True)


@contextmanager
def asking(gateway: str, call: str) -> Iterator[None]:
    """Gateway errors as sglguard sees them: GatewayDown (it cannot be asked, or answers 5xx),
    a permanent RemediationError (401/403/404/405), else a retryable RemediationError."""
    try:
        yield
    except HTTPStatusError as exc:
        error = permanent(exc.status, gateway, call, str(exc))
        if error is not None:
            raise error from None
        if exc.status >= 500:
            raise GatewayDown(f"gateway {gateway}: {exc}") from None
        raise RemediationError(f"gateway {gateway}: {exc}") from None
    except TargetError as exc:
        raise GatewayDown(f"gateway {gateway}: {call}: {exc}") from None
