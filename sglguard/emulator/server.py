"""The socket side: a threading HTTP/1.1 server that sends each response in one write."""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import socketserver
import threading
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

from .app import handle
from .context import EmulatorContext
from .wire import Reply, Request, StreamReply, json_reply, status_phrase

logger = logging.getLogger(__name__)

# How long an idle keep-alive connection stays open (uvicorn: 5 s; generous for slow clients).
KEEP_ALIVE_S = 15.0
MAX_BODY_BYTES = 64 * 1024 * 1024


class EmulatorHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its connections, so stopping can cut them."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], ctx: EmulatorContext) -> None:
        self.ctx = ctx
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall for seconds.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up mid-answer (timeouts, a hang fault) are routine here.
        logger.debug("connection from %s ended with an error", client_address, exc_info=True)

    def track(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(conn)

    def untrack(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(conn)

    def cut_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):  # already closed by its handler
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = KEEP_ALIVE_S

    @property
    def _server(self) -> EmulatorHTTPServer:
        return cast(EmulatorHTTPServer, self.server)

    def setup(self) -> None:
        super().setup()
        # Streams write several times; without NODELAY delayed ACKs stall each write ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug(format, *args)

    def do_GET(self) -> None:
        self._answer()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    def _answer(self) -> None:
        req = self._read_request()
        if req is None:
            return
        reply = handle(self._server.ctx, req)
        if reply is None:
            self.close_connection = True
            return
        logger.debug("%s %s -> %d", req.method, req.path, reply.status)
        if isinstance(reply, StreamReply):
            self._send_stream(reply)
        else:
            self._send(reply)

    def _read_request(self) -> Request | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            # A gateway forwards a body over 1 MiB chunked; SGLang (uvicorn) takes it.
            chunked = self._read_chunked()
            if chunked is None:
                self._refuse(400, "bad chunked request body")
                return None
            body = chunked
        else:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_BODY_BYTES:
                self._refuse(400, "bad Content-Length")
                return None
            body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        return Request(
            method=self.command,
            path=parts.path or "/",
            query=dict(parse_qsl(parts.query)),
            headers={key.lower(): value for key, value in self.headers.items()},
            body=body,
            disconnected=self._client_gone,
        )

    def _client_gone(self) -> bool:
        """The client closed its side: the socket reads end-of-file (a pipelined next request
        is data, not a hang-up). uvicorn reports the same as `http.disconnect`."""
        conn = self.connection
        try:
            readable, _, _ = select.select([conn], [], [], 0)
            return bool(readable) and conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except (OSError, ValueError):  # reset, or closed here already
            return True

    def _read_chunked(self) -> bytes | None:
        """The body of a chunked request; None when malformed or past MAX_BODY_BYTES."""
        body = bytearray()
        while True:
            size_line = self.rfile.readline(1024)
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                return None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return bytes(body)
            if size < 0 or len(body) + size > MAX_BODY_BYTES:
                return None
            body += self.rfile.read(size)
            if self.rfile.readline(1024) not in (b"\r\n", b"\n"):
                return None

    def _refuse(self, status: int, message: str) -> None:
        self.close_connection = True
        self._send(json_reply(status, {"error": {"message": message}}))

    def _head(self, status: int, headers: list[tuple[str, str]]) -> bytes:
        lines = [
            f"HTTP/1.1 {status} {status_phrase(status)}",
            f"date: {formatdate(usegmt=True)}",
            "server: uvicorn",
        ]
        lines += [f"{name}: {value}" for name, value in headers]
        if self.close_connection:
            lines.append("connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _send(self, reply: Reply) -> None:
        headers = [("content-length", str(len(reply.body)))]
        if reply.content_type:
            headers.append(("content-type", reply.content_type))
        # Head and body in one write: split writes meet delayed ACKs and cost ~40 ms each.
        self.wfile.write(self._head(reply.status, headers) + reply.body)

    def _send_stream(self, reply: StreamReply) -> None:
        headers = [
            ("content-type", reply.content_type),
            ("transfer-encoding", "chunked"),
            ("cache-control", "no-cache"),
        ]
        try:
            self.wfile.write(self._head(reply.status, headers))
            for chunk in reply.chunks:
                if chunk:
                    self.wfile.write(b"%X\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        finally:  # a write failed (the client hung up): the stream's request is aborted now
            close = getattr(reply.chunks, "close", None)
            if close is not None:
                close()
