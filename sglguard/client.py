"""The one place sglguard talks HTTP to an SGLang server: timeouts, auth, version fallbacks."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import quote

import requests
import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NameResolutionError,
    NewConnectionError,
    ReadTimeoutError,
)

from sglguard.bounded import (
    WATCHDOG,
    Guard,
    GuardedAdapter,
    Overrun,
    ResolveTimeoutError,
    guarded,
    iter_capped,
    lines,
    load,
    read_capped,
    send,
)

logger = logging.getLogger(__name__)

REDACTED = "***"
# An SGLang gateway (smg) marks its own errors; its 404 body has this code.
GATEWAY_HEADER = "x-smg-error-code"
_GATEWAY_404 = b'"code":"unknown_url"'
_SECRET_KEYS = frozenset({"api_key", "admin_api_key"})
# A launch command echoes keys sglguard may not know, e.g. `--admin-api-key X`.
_KEY_FLAG = re.compile(r"(--(?:admin-)?api-key(?:=|\s+))(\S+)")


class TargetError(Exception):
    """The server could not be asked: refused, timed out, or answered garbage."""

    reason = "error"


class ConnectionRefused(TargetError):
    """Nothing listens at the address: the server process is gone."""

    reason = "refused"


class TargetTimeout(TargetError):
    """The server accepted the connection or the request but did not answer in time."""

    reason = "timeout"


class HTTPStatusError(TargetError):
    """The server answered, with a status that is not the one asked for."""

    reason = "status"

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class AnswerTooLarge(TargetError):
    """The answer, decompressed, went past the size cap; reading stopped there."""

    reason = "too_large"


_CURRENT: contextvars.ContextVar[Guard | None] = contextvars.ContextVar("fetch", default=None)


@contextlib.contextmanager
def _bounded(method: str, path: str, limit: float, where: str,
             owner: SGLangClient | None = None) -> Iterator[Guard]:
    """One fetch within `limit` seconds of wall time (and the run's budget) and the size cap,
    with network errors turned into TargetErrors; a fetch inside another shares its guard."""
    outer = _CURRENT.get()
    if outer is not None:
        yield outer
        return
    guard = Guard(limit)
    guard.owner = owner
    if owner is not None and owner.aborted:
        guard.expire("aborted")
    token = _CURRENT.set(guard)
    try:
        with guarded(guard), _network_errors(method, path, guard.allowed, where):
            try:
                guard.check()
                yield guard
            except Overrun as exc:
                raise _overrun(exc, guard, method, path) from None
            except Exception as exc:
                if guard.expired is None or (guard.expired == "timeout"
                                             and _in_chain(exc, ResolveTimeoutError)):
                    raise  # a late name lookup says so (below)
                raise _overrun(Overrun("timeout", ""), guard, method, path) from None
    finally:
        _CURRENT.reset(token)


def _overrun(exc: Overrun, guard: Guard, method: str, path: str) -> TargetError:
    if guard.expired == "aborted":
        return TargetError(f"{method} {path}: abandoned, sglguard is stopping")
    if exc.reason == "timeout" or guard.expired:
        return TargetTimeout(f"{method} {path}: timed out, no answer within {guard.allowed:g} s "
                             "(connect, headers and body together)")
    if exc.reason == "too_large":
        return AnswerTooLarge(f"{method} {path}: {exc}, stopped reading (max_answer)")
    return TargetError(f"{method} {path}: {exc}")


def redact_secrets(value: Any, secrets: Sequence[str] = ()) -> Any:
    """Copy of a JSON value with every `api_key`-like field replaced, at any depth, and each of
    `secrets` scrubbed from every string (`launch_command` echoes `--api-key <key>`)."""
    if isinstance(value, Mapping):
        return {
            key: (REDACTED if key in _SECRET_KEYS and item else redact_secrets(item, secrets))
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [redact_secrets(item, secrets) for item in value]
    if isinstance(value, str):
        value = _KEY_FLAG.sub(rf"\1{REDACTED}", value)
        for secret in secrets:
            if secret:
                value = value.replace(secret, REDACTED)
    return value


def _in_chain(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether `kind` is anywhere among the causes urllib3 and requests wrap around `exc`."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kind):
            return True
        stack.extend([current.__cause__, current.__context__])
        stack.extend(arg for arg in current.args if isinstance(arg, BaseException))
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            stack.append(reason)
    return False


def _is_refused(exc: BaseException) -> bool:
    return _in_chain(exc, ConnectionRefusedError) or "Connection refused" in str(exc)


@contextlib.contextmanager
def _network_errors(method: str, path: str, limit: float, where: str) -> Iterator[None]:
    """Turn what requests raises into TargetError subclasses that say what happened."""
    try:
        yield
    except (requests.ConnectTimeout, requests.ReadTimeout) as exc:
        raise _transport_error(_wrapped(exc), method, path, limit, where) from None
    except requests.ConnectionError as exc:
        if _in_chain(exc, ReadTimeoutError):  # the body, not the headers, was late
            raise _late_body(method, path, limit) from None
        raise _transport_error(_wrapped(exc), method, path, limit, where) from None
    except requests.RequestException as exc:
        raise TargetError(f"{method} {path}: request failed: {_short(exc)}") from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:  # a probe: urllib3 directly
        raise _transport_error(exc, method, path, limit, where) from None


def _wrapped(exc: requests.RequestException) -> BaseException:
    """The urllib3 error that requests wrapped."""
    inner = exc.args[0] if exc.args else None
    return inner if isinstance(inner, BaseException) else exc


def _late_body(method: str, path: str, limit: float) -> TargetTimeout:
    return TargetTimeout(f"{method} {path}: timed out reading the answer after {limit:g} s")


def _transport_error(exc: BaseException, method: str, path: str, limit: float,
                     where: str) -> TargetError:
    """What urllib3 raised (directly for a probe, wrapped by requests otherwise)."""
    cause = exc.reason if isinstance(exc, MaxRetryError) and exc.reason else exc
    if isinstance(cause, ResolveTimeoutError):
        return TargetTimeout(f"{method} {path}: {cause.args[-1]}")
    if isinstance(cause, NameResolutionError):
        return TargetError(f"{method} {path}: could not resolve the host name of {where}: "
                           f"{_short(cause.__cause__ or cause)}")
    if _is_refused(cause):
        return ConnectionRefused(f"{method} {path}: connection refused at {where} "
                                 "(nothing is listening: the server process is gone)")
    if isinstance(cause, ConnectTimeoutError) and not isinstance(cause, NewConnectionError):
        return TargetTimeout(f"{method} {path}: connect timed out after {limit:g} s")
    if isinstance(cause, ReadTimeoutError | TimeoutError):
        return TargetTimeout(f"{method} {path}: timed out, no answer within {limit:g} s")
    return TargetError(f"{method} {path}: connection failed: {_short(exc)}")


@dataclass(frozen=True)
class Probe:
    """The answer to a probe, read whole."""

    status: int
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Answer:
    """Status and message of an answer whose body only says how it went."""

    status: int
    message: str

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def _answer(response: requests.Response) -> Answer:
    with response:
        return Answer(response.status_code, error_message(response))


def post_json(url: str, body: Any, *, headers: Mapping[str, str], timeout: float,
              shown: str | None = None) -> Answer:
    """POST JSON to a URL that is not an SGLang server (a webhook), with the same timeout and
    error handling as everything else sglguard sends; errors name it as `shown`."""
    label = shown or url
    with requests.Session() as session, _bounded("POST", label, timeout, label) as guard:
        for scheme in ("http://", "https://"):
            session.mount(scheme, GuardedAdapter())
        prepared = session.prepare_request(requests.Request(
            "POST", url, json=body, headers=dict(headers)))
        return _answer(load(send(session, prepared, guard), guard))


class SGLangClient:
    """HTTP client for one SGLang server (or gateway)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        admin_api_key: str | None = None,
        timeout: float = 10.0,
        connections: int = 10,
        gateway: bool = False,
    ) -> None:
        """`connections`: how many connections the pool keeps open for reuse; size it to the
        requests that can be in flight together, or the ones beyond it are closed after use.
        `gateway`: the URL is an SGLang gateway (smg), known as one from the catalog; an
        undeclared one is recognised by its answers."""
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.gateway = gateway
        self._api_key = api_key
        self._admin_api_key = admin_api_key
        self._session = requests.Session()
        # The server is reached directly: proxy variables and ~/.netrc are for the host's
        # outbound traffic, not for a local inference server (and reading them every request
        # was a third of a probe's CPU).
        self._session.trust_env = False
        # Kept at hand for `probe`.
        self._adapter = GuardedAdapter(pool_maxsize=max(1, connections))
        for scheme in ("http://", "https://"):
            self._session.mount(scheme, self._adapter)
        self._prepared: dict[tuple[str, str, bool], requests.PreparedRequest] = {}
        self._pool: urllib3.HTTPConnectionPool | None = None
        self.aborted = False
        self._retries = urllib3.Retry(0, read=False)  # as requests' adapter: never retried

    def __repr__(self) -> str:  # never shows the keys
        return f"SGLangClient({self.base_url!r})"

    def close(self) -> None:
        self._session.close()
        self._pool = None

    def abort(self) -> None:
        """End every fetch in flight now and refuse new ones: the service is stopping."""
        self.aborted = True
        for guard in WATCHDOG.in_flight():
            if guard.owner is self:
                guard.expire("aborted")

    def _fetch(self, method: str, path: str,
               limit: float) -> contextlib.AbstractContextManager[Guard]:
        return _bounded(method, path, limit, self.base_url, self)

    def request(
        self,
        method: str,
        path: str,
        *,
        timeout: float | None = None,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        admin: bool = False,
        stream: bool = False,
    ) -> requests.Response:
        """Send one request; network failures become TargetError subclasses. The answer is
        read whole within `timeout` (wall time) and the size cap, unless `stream`: then the
        caller reads it inside its own `_fetch`."""
        limit = self.timeout if timeout is None else timeout
        if json is None and not params:
            prepared = self._bodiless(method, path, admin)
        else:
            prepared = self._prepare(method, path, admin, json, params)
        with self._fetch(method, path, limit) as guard:
            response = send(self._session, prepared, guard)
            return response if stream else load(response, guard)

    def probe(self, method: str, path: str, *, timeout: float | None = None) -> Probe:
        """A bodiless request that a check repeats every few seconds, read whole.

        It goes through the session's own urllib3 connection pool, as `request` does, but
        without building a `requests.Response` (hooks, cookie jars, redirect handling): that
        was about a third of a probe's CPU. Errors are the same TargetErrors."""
        limit = self.timeout if timeout is None else timeout
        prepared = self._bodiless(method, path, False)
        with self._fetch(method, path, limit) as guard:
            pool = self._pool
            if pool is None:
                # One host per client: the session's pool manager never evicts this pool.
                pool = self._pool = cast(urllib3.HTTPConnectionPool, self._adapter
                                         .get_connection_with_tls_context(prepared, verify=True))
            left = guard.remaining()
            response = pool.urlopen(
                method, prepared.path_url, headers=prepared.headers, redirect=False,
                assert_same_host=False, preload_content=False, retries=self._retries,
                timeout=urllib3.Timeout(connect=left, read=left))
            try:
                body = read_capped(response, guard)
            except BaseException:
                response.close()  # an unread rest must not reach the next request
                raise
            finally:
                response.release_conn()
        return Probe(response.status, body)

    def _bodiless(self, method: str, path: str, admin: bool) -> requests.PreparedRequest:
        """Probes repeat the same bodiless request: prepare it once."""
        prepared = self._prepared.get((method, path, admin))
        if prepared is None:
            prepared = self._prepared[(method, path, admin)] = self._prepare(
                method, path, admin, None, None)
        return prepared

    def _prepare(self, method: str, path: str, admin: bool, json: Any,
                 params: Mapping[str, str] | None) -> requests.PreparedRequest:
        key = self._admin_api_key if admin and self._admin_api_key else self._api_key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            return self._session.prepare_request(requests.Request(
                method, f"{self.base_url}{path}", headers=headers, json=json, params=params))
        except requests.exceptions.InvalidHeader:
            raise TargetError(f"{method} {path}: the API key holds a character a header cannot "
                              "carry (a trailing \\r from a file with CRLF line ends?)") from None

    def metrics_text(self, timeout: float | None = None) -> str:
        """The Prometheus text of `/metrics`."""
        response = self.probe("GET", "/metrics", timeout=timeout)
        if response.status == 404:
            if self.gateway or _GATEWAY_404 in response.body:
                raise TargetError(f"GET /metrics: 404: {self.base_url} is an SGLang gateway "
                                  "(smg), whose metrics are on its --prometheus-port "
                                  "(default 29000)")
            raise TargetError("GET /metrics: 404 (launch the server with --enable-metrics)")
        if response.status != 200:
            raise TargetError(f"GET /metrics: HTTP {response.status}")
        return response.text

    def generate(self, body: dict[str, Any], *, timeout: float) -> Generation:
        """POST /generate, streamed when `body["stream"]`; times first token and total."""
        began = time.perf_counter()
        streamed = bool(body.get("stream"))
        with self._fetch("POST", "/generate", timeout) as guard:
            response = self.request("POST", "/generate", json=body, timeout=timeout,
                                    stream=streamed)
            with response:
                if streamed and response.status_code == 200:
                    return self._read_stream(response, began, guard)
                if streamed:
                    load(response, guard)
        if response.status_code != 200:
            return Generation(response.status_code, error=error_message(response),
                              total=time.perf_counter() - began)
        answer = _json_object(response, "/generate")
        meta = answer.get("meta_info") or {}
        finish = meta.get("finish_reason") if isinstance(meta, dict) else None
        elapsed = time.perf_counter() - began
        return Generation(200, str(answer.get("text") or ""), None, elapsed, finish,
                          aborted=_abort_message(finish))

    def _read_stream(self, response: requests.Response, began: float,
                     guard: Guard) -> Generation:
        result = Generation(200)
        try:
            for line in lines(iter_capped(response.raw, guard)):
                if not line or not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                text = str(chunk.get("text") or "")
                if text and result.ttft is None:
                    result.ttft = time.perf_counter() - began
                result.text = text or result.text
                meta = chunk.get("meta_info") or {}
                result.finish_reason = meta.get("finish_reason", result.finish_reason)
                result.aborted = _abort_message(result.finish_reason) or result.aborted
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if guard.expired is not None or _in_chain(exc, ReadTimeoutError):
                raise
            raise TargetError(f"POST /generate: stream broke: {_short(exc)}") from None
        except ValueError:
            raise TargetError("POST /generate: a stream event is not JSON") from None
        result.total = time.perf_counter() - began
        return result

    def chat(self, body: dict[str, Any], *, timeout: float) -> Generation:
        """POST /v1/chat/completions (not streamed); the answer's first choice."""
        began = time.perf_counter()
        response = self.request("POST", "/v1/chat/completions", json=body, timeout=timeout)
        with response:
            if response.status_code != 200:
                return Generation(response.status_code, error=error_message(response),
                                  total=time.perf_counter() - began)
            answer = _json_object(response, "/v1/chat/completions")
        choices = answer.get("choices") or [{}]
        message = choices[0].get("message") or {} if isinstance(choices[0], dict) else {}
        return Generation(200, str(message.get("content") or ""), None,
                          time.perf_counter() - began, choices[0].get("finish_reason"))

    def server_info(self, timeout: float | None = None) -> dict[str, Any]:
        """`/server_info`, falling back to `/get_server_info` on older releases; keys redacted."""
        if self.gateway:
            raise TargetError(f"{self.base_url} is an SGLang gateway (smg), which has no "
                              "server info of its own: check its workers")
        response = self.request("GET", "/server_info", timeout=timeout)
        if response.status_code == 404 and GATEWAY_HEADER in response.headers:
            # The gateway would hand /get_server_info to one of its workers: not its own.
            response.close()
            raise TargetError(f"GET /server_info: {self.base_url} is an SGLang gateway (smg), "
                              "which has no server info of its own: check its workers")
        if response.status_code == 404:
            response = self.request("GET", "/get_server_info", timeout=timeout)
        if response.status_code != 200:
            raise TargetError(f"GET /server_info: HTTP {response.status_code}")
        body = _json_object(response, "/server_info")
        own_keys = [key for key in (self._api_key, self._admin_api_key) if key]
        redacted: dict[str, Any] = redact_secrets(body, own_keys)
        return redacted

    def flush_cache(self, wait: float) -> Answer:
        """POST /flush_cache?timeout=wait (admin): 200 flushed, 400 busy."""
        return _answer(self.request("POST", "/flush_cache", params={"timeout": f"{wait:g}"},
                                    timeout=wait + self.timeout, admin=True))

    def abort_all(self) -> Answer:
        """POST /abort_request {"abort_all": true} (admin): drops every running and waiting
        request."""
        return _answer(self.request("POST", "/abort_request", json={"abort_all": True},
                                    admin=True))

    # A gateway (smg / sglang-router) in front of several servers.

    def workers(self) -> list[dict[str, Any]]:
        """GET /workers of a gateway: `{"workers": [...]}` (or a bare list in some releases);
        HTTPStatusError for any answer but 200."""
        response = self.request("GET", "/workers")
        with response:
            if response.status_code != 200:
                raise HTTPStatusError(f"GET /workers: HTTP {response.status_code}: "
                                      f"{error_message(response)}", response.status_code)
            try:
                body = response.json()
            except ValueError:
                raise TargetError("GET /workers: answer is not JSON") from None
        items = body.get("workers") if isinstance(body, dict) else body
        if not isinstance(items, list):
            raise TargetError("GET /workers: no list of workers in the answer")
        return [item for item in items if isinstance(item, dict)]

    def add_worker(self, registration: Mapping[str, Any], *, legacy: bool = False) -> Answer:
        """POST /workers with the worker's registration (url, worker_type, bootstrap_port,
        priority, cost, labels, model_id), or the legacy router's POST /add_worker?url=."""
        if legacy:
            return _answer(self.request("POST", "/add_worker",
                                        params={"url": str(registration["url"])}))
        return _answer(self.request("POST", "/workers", json=dict(registration)))

    def remove_worker(self, worker: str, *, legacy: bool = False) -> Answer:
        """DELETE /workers/{id} (drains it), or the legacy POST /remove_worker?url=."""
        if legacy:
            return _answer(self.request("POST", "/remove_worker", params={"url": worker}))
        return _answer(self.request("DELETE", f"/workers/{quote(worker, safe='')}"))

    def running_requests(self) -> int:
        """Requests running or waiting on the server, by its own count (GET /v1/loads)."""
        response = self.request("GET", "/v1/loads")
        with response:
            if response.status_code != 200:
                raise HTTPStatusError(f"GET /v1/loads: HTTP {response.status_code}",
                                      response.status_code)
            body = _json_object(response, "/v1/loads")
        aggregate = body.get("aggregate")
        if not isinstance(aggregate, dict):
            raise TargetError("GET /v1/loads: no aggregate in the answer")
        return int(aggregate.get("total_running_reqs", 0)) + int(
            aggregate.get("total_waiting_reqs", 0))


@dataclass
class Generation:
    """What one generation request came back with."""

    status: int
    text: str = ""
    ttft: float | None = None
    total: float = 0.0
    finish_reason: Any = None
    error: str | None = None  # the server's error message, for a non-200 answer
    aborted: str | None = None  # the message of an abort chunk in a stream


def _json_object(response: requests.Response, path: str) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        raise TargetError(f"{path}: answer is not JSON") from None
    if not isinstance(body, dict):
        raise TargetError(f"{path}: answer is not a JSON object")
    return body


def error_message(response: requests.Response) -> str:
    """The message SGLang put in an error body (`{"error": ...}` in its shapes), or the text."""
    text = response.text[:2000]
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()[:300]
    error = body.get("error", body.get("detail", body)) if isinstance(body, dict) else body
    if isinstance(error, dict):
        error = error.get("message", error)
    return str(error)[:300]


def _abort_message(finish: Any) -> str | None:
    if isinstance(finish, dict) and finish.get("type") == "abort":
        return str(finish.get("message") or "aborted")
    return None


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:197] + "..."
