"""The WSGI application behind sglguard's listener: page, read-only API, /metrics, /healthz.

Everything is GET (HEAD) and read-only. A token, when set, is required on every path but
/healthz, as `Authorization: Bearer TOKEN` or as the password of basic auth (so a browser can
open the page). Responses forbid scripts and framing (Content-Security-Policy), so even a string
that got past the template's escaping could not run.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import re
from collections.abc import Callable, Iterable
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote

from sglguard.web.view import View

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from sglguard.telemetry import Runtime
    from sglguard.web.pages import Pages

logger = logging.getLogger(__name__)

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
Response = tuple[str, str, bytes]  # status line, content type, body
API = "/api/v1"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
HTML = "text/html; charset=utf-8"
JSON = "application/json"
SECURITY_HEADERS = [
    ("Content-Security-Policy",
     "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'none'; "
     "frame-ancestors 'none'; base-uri 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
]


def _json(value: Any, status: str = "200 OK") -> Response:
    return status, JSON, json.dumps(value, indent=1).encode()


def _missing(what: str) -> Response:
    return _json({"error": f"no {what}"}, "404 Not Found")


class WebApp:
    """Routes a request to the page, the API, /metrics or /healthz."""

    def __init__(self, view: View, *, token: str | None = None, refresh_s: int = 10,
                 hosts: Iterable[str] = (), runtime: Runtime | None = None) -> None:
        self.view = view
        self.runtime = runtime  # the service beside it (`sglguard run`); None for `serve`
        self.refresh_s = refresh_s
        self._token = token.encode() if token else None
        # Without a token, only these Host names are answered: a web page elsewhere cannot
        # point its own name at 127.0.0.1 (DNS rebinding) and read the page from a browser.
        self._hosts = frozenset({*LOOPBACK_NAMES, *(host.lower() for host in hosts)})
        self._routes: list[tuple[re.Pattern[str], Callable[..., Response | None]]] = [
            (re.compile(r"/"), self._index),
            (re.compile(r"/checks/([^/]+)"), self._check_page),
            (re.compile(r"/incidents/(\d+)"), self._incident_page),
            (re.compile(API + r"/targets"), lambda q: _json({"targets": view.targets()})),
            (re.compile(API + r"/agents"), lambda q: _json({"agents": view.agents(),
                                                             "results": view.by_agent()})),
            (re.compile(API + r"/checks"), lambda q: _json({"checks": view.checks()})),
            (re.compile(API + r"/checks/([^/]+)"), self._check),
            (re.compile(API + r"/checks/([^/]+)/results"), self._results),
            (re.compile(API + r"/incidents"), self._incidents),
            (re.compile(API + r"/incidents/(\d+)"), self._incident),
            (re.compile(r"/metrics"), self._metrics),
            (re.compile(r"/healthz"), self._healthz),
        ]

    # Built at the first request that needs them: a listener nobody opens costs no templates.
    @cached_property
    def pages(self) -> Pages:
        from sglguard.web.pages import Pages

        return Pages(self.view, refresh_s=self.refresh_s, runtime=self.runtime)

    @cached_property
    def registry(self) -> CollectorRegistry:
        from sglguard.web.metrics import metrics_registry

        return metrics_registry(self.view, self.runtime)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "/") or "/"
        if method not in ("GET", "HEAD"):
            status, kind, body = _json({"error": "read-only: GET only"}, "405 Method Not Allowed")
            extra = [("Allow", "GET, HEAD")]
        elif self._token is None and _host_name(environ.get("HTTP_HOST", "")) not in self._hosts:
            status, kind, body = _json({"error": "unknown Host; set http.external_url (or a "
                                                 "token) to serve it"}, "421 Misdirected Request")
            extra = []
        elif path != "/healthz" and not self._authorized(environ.get("HTTP_AUTHORIZATION", "")):
            status, kind, body = _json({"error": "a token is required"}, "401 Unauthorized")
            extra = [("WWW-Authenticate", 'Basic realm="sglguard", charset="UTF-8"')]
        else:
            query = {key: values[-1] for key, values in
                     parse_qs(environ.get("QUERY_STRING", "")).items()}
            status, kind, body = self._route(path, query)
            extra = []
        headers = [("Content-Type", kind), ("Content-Length", str(len(body))),
                   *SECURITY_HEADERS, *extra]
        start_response(status, headers)
        return [b""] if method == "HEAD" else [body]

    def _authorized(self, header: str) -> bool:
        if self._token is None:
            return True
        scheme, _, credentials = header.partition(" ")
        given = b""
        if scheme.lower() == "bearer":
            given = credentials.strip().encode()
        elif scheme.lower() == "basic":
            try:
                given = base64.b64decode(credentials.strip(), validate=True).partition(b":")[2]
            except (binascii.Error, ValueError):
                return False
        return hmac.compare_digest(given, self._token)

    def _route(self, path: str, query: dict[str, str]) -> Response:
        for pattern, handler in self._routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            try:
                found = handler(query, *(unquote(group) for group in match.groups()))
            except ValueError as exc:
                return _json({"error": str(exc)}, "400 Bad Request")
            except Exception:
                outage = self._store_outage(path)
                if outage is not None:  # said once by the service's log, not per request
                    return outage
                logger.exception("web: %s failed", path)
                return _json({"error": "internal error; see sglguard's log"},
                             "500 Internal Server Error")
            return found if found is not None else _missing("such page")
        return _missing("such page")

    def _store_outage(self, path: str) -> Response | None:
        """While the service beside this listener cannot reach the store, the page and the
        API say so (what it holds and that it keeps watching) instead of an error."""
        if self.runtime is None:
            return None
        pulse = self.runtime.pulse(60)
        if pulse.store_outage_s is None:
            return None
        said = (f"The store has been unreachable for {pulse.store_outage_s:.0f} s. sglguard "
                f"keeps running its checks and repairing a dead server; {pulse.backlog_pending} "
                "results are held and will be written, in order, when the store answers.")
        if path.startswith("/api/"):
            return _json({"error": said, "store_outage_s": round(pulse.store_outage_s)},
                         "503 Service Unavailable")
        return "503 Service Unavailable", HTML, (
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>sglguard: store "
            "unreachable</title><meta http-equiv=\"refresh\" content=\"10\"></head><body>"
            f"<h1>Store unreachable</h1><p id=\"store-outage\">{said}</p></body></html>"
        ).encode()

    def _index(self, _query: dict[str, str]) -> Response:
        return "200 OK", HTML, self.pages.index().encode()

    def _check_page(self, _query: dict[str, str], name: str) -> Response | None:
        page = self.pages.check(name)
        return None if page is None else ("200 OK", HTML, page.encode())

    def _incident_page(self, _query: dict[str, str], number: str) -> Response | None:
        page = self.pages.incident(int(number))
        return None if page is None else ("200 OK", HTML, page.encode())

    def _check(self, _query: dict[str, str], name: str) -> Response:
        item = self.view.check(name)
        return _missing(f"check {name}") if item is None else _json(item)

    def _results(self, query: dict[str, str], name: str) -> Response:
        found = self.view.results(name, _limit(query, 100))
        return _missing(f"check {name}") if found is None else _json({"results": found})

    def _incidents(self, query: dict[str, str]) -> Response:
        open_only = query.get("open", "") in ("1", "true", "yes")
        return _json({"incidents": self.view.incidents(open_only=open_only,
                                                       limit=_limit(query, 50))})

    def _incident(self, _query: dict[str, str], number: str) -> Response:
        item = self.view.incident(int(number))
        return _missing(f"incident #{number}") if item is None else _json(item)

    def _metrics(self, _query: dict[str, str]) -> Response:
        from sglguard.web.metrics import exposition

        return "200 OK", "text/plain; version=0.0.4; charset=utf-8", exposition(self.registry)

    def _healthz(self, _query: dict[str, str]) -> Response:
        from sglguard.web.metrics import health

        found = health(self.view, self.runtime)
        return _json(found.detail, "200 OK" if found.healthy else "503 Service Unavailable")


def _host_name(header: str) -> str:
    """The name of a Host header, without its port (`[::1]:9466` -> `::1`)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


def _limit(query: dict[str, str], default: int) -> int:
    text = query.get("limit", str(default))
    if not text.isdigit() or not 1 <= int(text) <= 10000:
        raise ValueError(f"limit must be a number from 1 to 10000, not {text!r}")
    return int(text)
