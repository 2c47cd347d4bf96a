"""Secrets never leave sglguard and server text is shown as text: planted secrets are searched
for in the database, the logs, the CLI output and the notifications received."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sglguard.checks.base import CheckConfig, CheckContext, Status
from sglguard.checks.registry import CHECKS
from sglguard.client import SGLangClient
from sglguard.config.models import TargetConfig
from sglguard.emulator.hostile import HostileServer, answer
from sglguard.receiver import AlertReceiver
from sglguard.redact import REDACTED, Redactor, clean, for_terminal, remember

from conftest import PYTHON, Loopback, free_port, wait_for

API_KEY = "sk-plain-key-7f3a9c0e11d2"
CRLF_KEY = "sk-crlf-key-5b8e2d4c6a1f"  # read from a CRLF env file: it ends in \r
ADMIN_KEY = "sk-admin-key-0d9e8f7a6b5c"
PASSWORD = "basic-pass-93kd82"
HOOK_TOKEN = "XoXbT0kenInAPath4f8e2a"
PLANTED = (API_KEY, CRLF_KEY, ADMIN_KEY, PASSWORD, HOOK_TOKEN)
HOSTILE_TEXT = "\x1b[2J\x1b[H ALL CHECKS OK [/] [bold]x\x00 <!channel>\nforged log line"


# --- the boundary itself --------------------------------------------------------------------


def test_clean_replaces_known_secrets_and_their_whitespace_variants() -> None:
    remember([API_KEY, CRLF_KEY + "\r"])
    text = clean(f"key {API_KEY} and {CRLF_KEY} and {CRLF_KEY}\r")
    assert API_KEY not in text and CRLF_KEY not in text
    assert text.count(REDACTED) == 3


def test_clean_recognises_secrets_it_was_not_told() -> None:
    redactor = Redactor()
    said = redactor.scrub("GET http://ops:s3cr3t-pw@host/x with Authorization: Bearer abc.def "
                          "and --api-key sk-123 and X-Auth-Token: tok123")
    for secret in ("s3cr3t-pw", "abc.def", "sk-123", "tok123"):
        assert secret not in said


def test_url_secrets_include_tokens_in_the_path() -> None:
    redactor = Redactor([f"slack://T01ABCDEF/B02GHIJKL/{HOOK_TOKEN}/#ops"])
    assert HOOK_TOKEN not in redactor.scrub(f"posting to .../{HOOK_TOKEN} failed")


def test_clean_neutralises_escapes_controls_and_nul_and_caps_the_length() -> None:
    text = clean(HOSTILE_TEXT)
    assert "\x1b" not in text and "\x00" not in text
    assert "ALL CHECKS OK" in text and "\nforged" in text
    assert "\n" not in clean(HOSTILE_TEXT, one_line=True)
    assert clean("\u202eevil").startswith("\\u202e")
    long = clean("x" * 10_000, 100)
    assert long.startswith("x" * 100) and long.endswith("(9900 more characters)")


def test_terminal_text_escapes_rich_markup() -> None:
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(for_terminal("closing [/] and [bold]not bold[/bold]"))
    assert "closing [/] and [bold]not bold[/bold]" in console.export_text()


# --- NaN, JSON ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["NaN", "+Inf", "-Inf"])
def test_a_non_finite_metric_is_unknown_with_a_message(value: str) -> None:
    page = f"# TYPE sglang:num_queue_reqs gauge\nsglang:num_queue_reqs {value}\n".encode()
    with HostileServer(answer(200, page)) as server:
        target = TargetConfig(name="local", url=server.url)
        model = CheckConfig.model_validate({"name": "queue", "target": "local", "kind": "metric",
                                            "metric": "sglang:num_queue_reqs",
                                            "critical": "> 10"})
        result = CHECKS["metric"](model, CheckContext(target, SGLangClient(server.url))).execute()
    assert result.status is Status.UNKNOWN
    assert result.value is None
    assert "not a finite number" in result.message


def test_check_json_is_valid_json_whatever_the_server_said(tmp_path: Path) -> None:
    page = b"# TYPE sglang:num_queue_reqs gauge\nsglang:num_queue_reqs NaN\n"
    with HostileServer(answer(200, page)) as server:
        path = tmp_path / "sglguard.yaml"
        path.write_text(f"""\
version: 1
targets: [{{name: local, url: "{server.url}"}}]
checks:
  - {{name: queue, kind: metric, target: local, metric: sglang:num_queue_reqs}}
""")
        done = subprocess.run([PYTHON, "-m", "sglguard", "check", "--config", str(path),
                               "--json"], capture_output=True, text=True, timeout=60)
    items = json.loads(done.stdout, parse_constant=lambda name: pytest.fail(name))
    assert items[0]["status"] == "unknown" and items[0]["value"] is None
    assert not any(isinstance(v, float) and not math.isfinite(v) for v in items[0].values())


# --- the whole service ----------------------------------------------------------------------


def echo(request: Any) -> tuple[int, str, bytes]:
    """A server that puts what it was sent, and hostile text, into its error messages."""
    _, path, headers, _ = request
    said = (f"denied {path}: Authorization={headers.get('Authorization')}; user ops password "
            f"{PASSWORD}; hook {HOOK_TOKEN}; {HOSTILE_TEXT}")
    return 500, "application/json", json.dumps({"error": {"message": said}}).encode()


@pytest.fixture
def echoing() -> Iterator[Loopback]:
    server = Loopback(echo)
    yield server
    server.close()


def test_planted_secrets_reach_no_database_log_cli_output_or_notification(
        tmp_path: Path, echoing: Loopback) -> None:
    receiver = AlertReceiver().start()
    port = echoing.url.rsplit(":", 1)[1]
    closed = free_port()
    path = tmp_path / "sglguard.yaml"
    path.write_text(f"""\
version: 1
store: {{flush_interval: 0.2s}}
targets:
  - name: echo
    url: http://127.0.0.1:{port}
    api_key: ${{SGL_KEY}}
    admin_api_key: ${{SGL_ADMIN_KEY}}
  - name: crlf
    url: http://ops:{PASSWORD}@127.0.0.1:{closed}
    api_key: ${{SGL_CRLF_KEY}}
checks:
  - {{name: generation, kind: generate, target: echo, interval: 0.5s, timeout: 2s,
      failure_threshold: 1, remediate: [flush]}}
  - {{name: gone, kind: http, target: crlf, interval: 0.5s, timeout: 1s,
      failure_threshold: 1}}
remediations:
  - {{name: flush, kind: flush_cache}}
notifications: {{group_wait: 0.1s}}
notifiers:
  - name: ops
    urls: ["json://127.0.0.1:{receiver.port}/hooks/{HOOK_TOKEN}"]
""")
    env = {**os.environ, "SGL_KEY": API_KEY, "SGL_ADMIN_KEY": ADMIN_KEY,
           "SGL_CRLF_KEY": CRLF_KEY + "\r"}
    log = tmp_path / "service.log"
    with log.open("wb") as output:
        service = subprocess.Popen([PYTHON, "-m", "sglguard", "--log-level", "debug", "run",
                                    "--config", str(path)], stdout=output,
                                   stderr=subprocess.STDOUT, env=env)
        database = tmp_path / "sglguard.db"
        try:
            wait_for(lambda: _count(database, "remediation_runs where finished_at is not null")
                     and _count(database, "check_results where check_name = 'gone'")
                     and len(receiver.received()) >= 2, 20)
        finally:
            service.send_signal(signal.SIGTERM)
            service.wait(timeout=15)
            receiver.stop()

    cli = [subprocess.run([PYTHON, "-m", "sglguard", *args, "--config", str(path)],
                          capture_output=True, text=True, env=env, timeout=60)
           for args in (["history"], ["incidents"], ["incidents", "--show", "1"],
                        ["history", "--json"], ["check", "--json"],
                        ["incidents", "--show", "2"])]
    for done in cli:
        assert "Traceback" not in done.stderr, done.stderr
    # The server's text is shown, as text (markup such as [/] once crashed these commands).
    assert "ALL CHECKS OK [/] [bold]x" in cli[2].stdout + cli[5].stdout
    json.loads(cli[3].stdout)

    with sqlite3.connect(database) as connection:
        dump = "\n".join(connection.iterdump())
    places = {"database": dump, "logs": log.read_text(errors="replace"),
              "cli": "".join(done.stdout + done.stderr for done in cli),
              "notifications": json.dumps(receiver.received())}
    for where, text in places.items():
        for secret in PLANTED:
            assert secret not in text, f"{secret} found in the {where}"
        assert "\x1b[" not in text, f"an escape sequence in the {where}"
    assert "denied" in places["database"] and REDACTED in places["database"]
    assert "\nforged log line" not in places["logs"]


def _count(database: Path, what: str) -> int:
    try:
        with sqlite3.connect(database) as connection:
            return int(connection.execute(f"select count(*) from {what}").fetchone()[0])
    except sqlite3.Error:
        return 0


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_nul_in_server_text_never_blocks_a_write(backend: str, tmp_path: Path,
                                                   request: pytest.FixtureRequest) -> None:
    from datetime import UTC, datetime

    from sglguard.checks.base import CheckResult
    from sglguard.store import Store, queries
    from sglguard.store.models import CheckResultRow

    url = (f"sqlite:///{tmp_path / 'sglguard.db'}" if backend == "sqlite"
           else request.getfixturevalue("postgres_url"))
    remember([API_KEY])  # as the catalog's loading does
    store = Store.open(url)
    try:
        result = CheckResult("probe", "local", Status.CRITICAL, None, "", f"bad\x00 {API_KEY}",
                             1.0, datetime(2026, 1, 1, tzinfo=UTC))
        with store.session() as session:
            queries.add_result(session, result)
        with store.session() as session:
            stored = session.query(CheckResultRow).one().message
    finally:
        store.close()
    assert stored == f"bad {REDACTED}"


# --- what reaches a chat --------------------------------------------------------------------


def tls_files(folder: Path, host: str) -> tuple[Path, Path, Path]:
    """A CA of the test's own (its certificate) and a certificate for `host` it signed (and
    its key), made by the openssl command."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.pem", "-days", "1", "-subj", "/CN=sglguard test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "host.key", "-out", "host.csr",
            "-subj", f"/CN={host}")
    (folder / "host.ext").write_text(
        f"subjectAltName=DNS:{host}\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n")
    openssl("x509", "-req", "-in", "host.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "host.pem", "-days", "1", "-extfile", "host.ext")
    return folder / "ca.pem", folder / "host.pem", folder / "host.key"


class SlackStandIn:
    """hooks.slack.com as Apprise reaches it through an HTTPS proxy: a loopback proxy that ends
    the CONNECT tunnel itself, with a certificate for hooks.slack.com from the test's own CA
    (which requests trusts through REQUESTS_CA_BUNDLE), and records each request's body."""

    def __init__(self, tmp_path: Path) -> None:
        import socket
        import ssl
        import threading

        self.bundle, cert, key = tls_files(tmp_path, "hooks.slack.com")
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.bodies: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                try:
                    self._tunnel(conn)
                except OSError:
                    continue

    def _tunnel(self, conn: Any) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.recv(4096) or b"\r\n\r\n"
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        with self.context.wrap_socket(conn, server_side=True) as tls:
            data = b""
            while b"\r\n\r\n" not in data:
                data += tls.recv(65536) or b"\r\n\r\n"
            head, _, body = data.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(body) < length:
                body += tls.recv(65536)
            self.bodies.append(body)
            tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
                        b"Connection: close\r\n\r\nok")

    def close(self) -> None:
        self.listener.close()


def test_server_text_reaches_slack_as_text_not_mentions_or_links(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sglguard.notify.channel import send

    slack = SlackStandIn(tmp_path)
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{slack.port}")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(slack.bundle))
    said = clean("error: <!channel> see <https://evil.example/login|the runbook> & " +
                 HOSTILE_TEXT)
    try:
        error = send(["slack://T1ABCDEFG/B2ABCDEFG/abcdefghijklmnopqrstuvwx/#ops"],
                     "critical", "queue on gpu-1", said, timeout=10)
    finally:
        slack.close()
    assert error is None, error
    text = json.dumps(json.loads(slack.bodies[0]))
    assert "<!channel>" not in text and "<https://evil" not in text
    assert "&lt;!channel&gt;" in text and "&lt;https://evil.example/login|the runbook&gt;" in text
    assert "\\u001b" not in text
