"""The SGLang client against real loopback servers: the emulator and a tiny scripted server."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sglguard.client import (
    REDACTED,
    ConnectionRefused,
    SGLangClient,
    TargetError,
    TargetTimeout,
    redact_secrets,
)
from sglguard.emulator import Emulator, EmulatorOptions

from conftest import Loopback, free_port

KEY = "sk-test-0123456789abcdef"
ADMIN_KEY = "sk-admin-fedcba9876543210"
HANG_TIMEOUT = 0.3

Route = tuple[int, str, bytes]  # status, content type, body


class ScriptedServer(Loopback):
    """Answers each path from a table (404 otherwise)."""

    def __init__(self, routes: dict[str, Route]) -> None:
        missing = (404, "application/json", b'{"detail": "Not Found"}')
        super().__init__(lambda request: routes.get(request[1], missing))

    @property
    def seen(self) -> list[tuple[str, str | None]]:
        """(path, Authorization header) of each request."""
        return [(path, headers.get("Authorization")) for _, path, headers, _ in self.requests]


def json_route(body: Any) -> Route:
    return 200, "application/json", json.dumps(body).encode()


@pytest.fixture
def scripted() -> Iterator[Callable[[dict[str, Route]], ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def serve(routes: dict[str, Route]) -> ScriptedServer:
        server = ScriptedServer(routes)
        servers.append(server)
        return server

    yield serve
    for server in servers:
        server.close()


@pytest.fixture
def keyed() -> Iterator[Emulator]:
    """An emulator launched with --api-key KEY."""
    server = Emulator(EmulatorOptions(port=0, health_latency=0.01, api_key=KEY))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def client_for() -> Iterator[Callable[..., SGLangClient]]:
    clients: list[SGLangClient] = []

    def make(url: str, **options: Any) -> SGLangClient:
        client = SGLangClient(url, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


MakeClient = Callable[..., SGLangClient]


# --- authentication -------------------------------------------------------------------------


def test_api_key_is_needed_for_server_info_and_sent_as_bearer(
    keyed: Emulator, client_for: MakeClient
) -> None:
    anonymous = client_for(keyed.url)
    authorized = client_for(keyed.url, api_key=KEY)

    assert anonymous.request("GET", "/server_info").status_code == 401
    assert authorized.request("GET", "/server_info").status_code == 200
    with pytest.raises(TargetError, match="401"):
        anonymous.server_info()


def test_authorization_header_is_bearer_key_and_admin_key_only_when_asked(
    scripted: Callable[[dict[str, Route]], ScriptedServer], client_for: MakeClient
) -> None:
    server = scripted({"/ping": (200, "text/plain", b"")})
    client = client_for(server.url, api_key=KEY, admin_api_key=ADMIN_KEY)
    anonymous = client_for(server.url)

    client.request("GET", "/ping")
    client.request("GET", "/ping", admin=True)
    anonymous.request("GET", "/ping")

    assert [header for _, header in server.seen] == [
        f"Bearer {KEY}", f"Bearer {ADMIN_KEY}", None,
    ]


def test_admin_request_falls_back_to_the_api_key_without_an_admin_key(
    scripted: Callable[[dict[str, Route]], ScriptedServer], client_for: MakeClient
) -> None:
    server = scripted({"/flush_cache": (200, "text/plain", b"Cache flushed.")})

    client_for(server.url, api_key=KEY).request("GET", "/flush_cache", admin=True)

    assert server.seen == [("/flush_cache", f"Bearer {KEY}")]


def test_health_and_metrics_are_open_without_a_key(
    keyed: Emulator, client_for: MakeClient
) -> None:
    anonymous = client_for(keyed.url)

    assert anonymous.request("GET", "/health").status_code == 200
    assert "sglang:num_queue_reqs" in anonymous.metrics_text()


# --- /server_info ---------------------------------------------------------------------------


def test_server_info_falls_back_to_get_server_info_on_older_releases(
    scripted: Callable[[dict[str, Route]], ScriptedServer], client_for: MakeClient
) -> None:
    server = scripted({"/get_server_info": json_route({"version": "0.4.0", "tp_size": 2})})

    info = client_for(server.url).server_info()

    assert info == {"version": "0.4.0", "tp_size": 2}
    assert [path for path, _ in server.seen] == ["/server_info", "/get_server_info"]


def test_server_info_redacts_the_key_the_server_echoes(
    keyed: Emulator, client_for: MakeClient
) -> None:
    info = client_for(keyed.url, api_key=KEY).server_info()

    assert info["api_key"] == REDACTED
    assert info["max_running_requests"] == 256  # the rest is intact
    # launch_command carries `--api-key <key>` inside one string.
    assert f"--api-key {REDACTED}" in info["launch_command"]
    assert KEY not in json.dumps(info)


def test_server_info_scrubs_the_clients_keys_from_every_string(
    scripted: Callable[[dict[str, Route]], ScriptedServer], client_for: MakeClient
) -> None:
    body = {
        "api_key": KEY,
        "admin_api_key": None,  # unset keys stay as they are
        "launch_command": f"python3 -m sglang.launch_server --admin-api-key={ADMIN_KEY}",
        "notes": [{"text": f"key {KEY} and {ADMIN_KEY}"}],
    }
    server = scripted({"/server_info": json_route(body)})

    info = client_for(server.url, api_key=KEY, admin_api_key=ADMIN_KEY).server_info()

    assert info == {
        "api_key": REDACTED,
        "admin_api_key": None,
        "launch_command": f"python3 -m sglang.launch_server --admin-api-key={REDACTED}",
        "notes": [{"text": f"key {REDACTED} and {REDACTED}"}],
    }


def test_redact_secrets_replaces_key_fields_at_any_depth() -> None:
    value = {"a": [{"api_key": "x", "admin_api_key": "y", "other": "x"}], "api_key": ""}

    assert redact_secrets(value) == {
        "a": [{"api_key": REDACTED, "admin_api_key": REDACTED, "other": "x"}],
        "api_key": "",
    }


@pytest.mark.parametrize(
    ("route", "error"),
    [((200, "text/plain", b"not json"), "not JSON"),
     (json_route([1, 2]), "not a JSON object"),
     ((500, "text/plain", b""), "HTTP 500")],
)
def test_server_info_refuses_bad_answers(
    scripted: Callable[[dict[str, Route]], ScriptedServer], client_for: MakeClient,
    route: Route, error: str,
) -> None:
    server = scripted({"/server_info": route})

    with pytest.raises(TargetError, match=error):
        client_for(server.url).server_info()


# --- failures -------------------------------------------------------------------------------


def test_refused_connection_raises_connection_refused(client_for: MakeClient) -> None:
    client = client_for(f"http://127.0.0.1:{free_port()}", api_key=KEY)

    with pytest.raises(ConnectionRefused, match="connection refused") as caught:
        client.request("GET", "/health", timeout=2.0)

    assert caught.value.reason == "refused"
    assert KEY not in str(caught.value)


def test_hanging_server_raises_target_timeout(keyed: Emulator, client_for: MakeClient) -> None:
    keyed.set_fault("hang")
    client = client_for(keyed.url, api_key=KEY)

    with pytest.raises(TargetTimeout, match=f"no answer within {HANG_TIMEOUT:g} s") as caught:
        client.server_info(timeout=HANG_TIMEOUT)

    assert caught.value.reason == "timeout"
    assert KEY not in str(caught.value)


def test_metrics_404_says_to_enable_metrics(
    scripted: Callable[[dict[str, Route]], ScriptedServer], client_for: MakeClient
) -> None:
    server = scripted({})

    with pytest.raises(TargetError, match="--enable-metrics"):
        client_for(server.url).metrics_text()


def test_keys_never_show_in_repr_or_errors(
    keyed: Emulator, client_for: MakeClient
) -> None:
    client = client_for(keyed.url, api_key=KEY, admin_api_key=ADMIN_KEY)
    wrong = client_for(keyed.url, api_key=ADMIN_KEY)

    with pytest.raises(TargetError) as caught:
        wrong.server_info()

    for text in (repr(client), str(caught.value), repr(caught.value)):
        assert KEY not in text
        assert ADMIN_KEY not in text


def test_keys_on_an_echoed_command_line_are_scrubbed_even_when_unknown() -> None:
    echoed = {"launch_command": "python -m sglang.launch_server --api-key k1 "
                                "--admin-api-key=k2 --port 30000"}
    assert redact_secrets(echoed) == {
        "launch_command": "python -m sglang.launch_server --api-key *** "
                          "--admin-api-key=*** --port 30000"}
