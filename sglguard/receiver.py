"""A loopback receiver for `json://` notifications: the demo prints them, tests read them."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class AlertReceiver:
    """Collects the JSON bodies POSTed to it, answering each in a single write."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *,
                 on_alert: Callable[[dict[str, Any]], None] | None = None,
                 status: int = 200) -> None:
        self.alerts: list[dict[str, Any]] = []
        self.status = status
        self._on_alert = on_alert
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> AlertReceiver:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        kwargs={"poll_interval": 0.05},
                                        name="alert-receiver")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def received(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.alerts)

    def _accept(self, body: bytes) -> int:
        try:
            alert = json.loads(body or b"{}")
        except ValueError:
            alert = {"raw": body.decode("utf-8", "replace")}
        if self.status == 200:
            with self._lock:
                self.alerts.append(alert)
            if self._on_alert is not None:
                self._on_alert(alert)
        return self.status

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                status = receiver._accept(self.rfile.read(length))
                payload = b'{"ok": true}'
                head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
                        "Content-Type: application/json\r\n"
                        f"Content-Length: {len(payload)}\r\n\r\n").encode()
                self.wfile.write(head + payload)  # one write: no delayed-ACK stall

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
