"""sglguard's listener in a thread of its own: the standard library's WSGI server.

wsgiref with a thread per request needs nothing beyond the standard library, is enough for a
page that a few people and one Prometheus read, and stays asleep between requests: the accept
loop blocks instead of polling, and stop() wakes it by shutting the listening socket.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from sglguard.config.models import Catalog, is_loopback, split_listen
from sglguard.store import Store
from sglguard.web.app import WebApp
from sglguard.web.view import View

if TYPE_CHECKING:
    from sglguard.telemetry import Runtime

logger = logging.getLogger(__name__)


class _Handler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("web %s: " + format, self.address_string(), *args)  # noqa: G003


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class WebServer:
    """Serves a WSGI app on host:port from a daemon thread; start() and stop()."""

    def __init__(self, app: WebApp, listen: str) -> None:
        host, port = split_listen(listen)
        kind = _Server6 if ":" in host else _Server
        self.app = app
        self._server = kind((host, port), _Handler)
        self._server.set_app(app)
        self._server.timeout = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="sglguard-web", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def address(self) -> str:
        host = str(self._server.server_address[0])
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def start(self) -> WebServer:
        self._thread.start()
        logger.info("status page, API and /metrics on http://%s/", self.address)
        return self

    def _serve(self) -> None:
        while not self._stopping.is_set():
            self._server.handle_request()  # blocks in accept: no wake-up while idle

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._server.socket.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept
        self._thread.join(timeout=timeout)
        self._server.server_close()


def serve(catalog: Catalog, store: Store, *, listen: str | None = None,
          runtime: Runtime | None = None) -> WebServer:
    """Start the listener the catalog's `http` section asks for (or on `listen`); `runtime`:
    the service it runs beside, whose scheduler and queues it reports on (none for `serve`)."""
    http = catalog.http
    token = http.token.get_secret_value() if http is not None and http.token else None
    refresh = int(http.refresh.total_seconds()) if http is not None else 10
    address = listen or (http.listen if http is not None else "127.0.0.1:9466")
    if not is_loopback(split_listen(address)[0]) and not token:
        raise ValueError(f"listen {address} is beyond loopback: set http.token in the catalog "
                         "so the page and API are not open to everyone")
    hosts = [split_listen(address)[0]]
    if http is not None and http.external_url is not None:
        hosts.append(urlsplit(http.external_url).hostname or "")
    app = WebApp(View(catalog, store), token=token, refresh_s=max(1, refresh), hosts=hosts,
                 runtime=runtime)
    return WebServer(app, address).start()
