"""The one boundary every string crosses before sglguard stores, logs, prints or sends it.

Text comes from servers sglguard does not control (error bodies, echoed headers, command
lines) and from its own catalog (keys, notifier URLs). `clean()` replaces every known secret
(the catalog's and the environment's, with their trailing-whitespace variants, URL passwords
and tokens in URL paths), removes NUL, neutralises control characters and terminal escape
sequences, and caps the length. `for_terminal()` also escapes rich markup.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

if TYPE_CHECKING:
    from sglguard.config.models import Catalog

REDACTED = "***"
MAX_TEXT = 4000  # a message, an error, an event's detail
MAX_STORED = 1024 * 1024  # any string parameter of a database statement
MIN_SECRET = 6  # shorter values would redact ordinary words

# Terminal escape sequences (CSI, OSC, other ESC sequences), then lone control characters.
_ESCAPES = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-_])?")
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_CONTROLS_AND_NEWLINES = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
# Secrets sglguard may not know by value: URL user-info, bearer tokens, `--api-key X`.
_PATTERNS = (
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s/:@]*:)[^\s/@]+@"), rf"\1{REDACTED}@"),
    (re.compile(r"(?i)\b(bearer\s+)[^\s\"',;]+"), rf"\1{REDACTED}"),
    (re.compile(r"(--(?:admin-)?api-key(?:=|\s+))(\S+)"), rf"\1{REDACTED}"),
    (re.compile(r"(?i)((?:x-auth-token|x-api-key|api[_-]?key|authorization)[\"']?\s*[:=]\s*"
                r"[\"']?)(?!bearer\b)[^\s\"',;]+"), rf"\1{REDACTED}"),
)
_PATTERN_WORDS = ("://", "bearer", "api-key", "api_key", "apikey", "auth")
_SECRET_NAME = re.compile(r"(?i)(key|token|secret|passw|auth|credential|webhook)")


def _escape(match: re.Match[str]) -> str:
    char = match.group(0)
    return "\\n" if char == "\n" else f"\\x{ord(char):02x}" if ord(char) < 0x100 \
        else f"\\u{ord(char):04x}"


class Redactor:
    """Replaces the secrets it knows, and those the patterns recognise, in any text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()
        self._known: set[str] = set()
        self.remember(secrets)

    def remember(self, secrets: Iterable[str]) -> None:
        """Add secrets (kept for the life of the process: a reload may leave old text)."""
        found = set()
        for secret in secrets:
            found.update(variants(secret))
        with self._lock:
            if found <= self._known:
                return
            self._known |= found
            self._secrets = tuple(sorted(self._known, key=len, reverse=True))

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        # The patterns cost more than the test for what each one needs (most text has none).
        lowered = text.lower()
        if any(word in lowered for word in _PATTERN_WORDS):
            for pattern, replacement in _PATTERNS:
                text = pattern.sub(replacement, text)
        return text


def variants(secret: str) -> set[str]:
    """A secret as it may show up: as given, stripped (a key from a CRLF env file ends in
    `\\r`), and for a URL its password and token-like parts of its path and query."""
    found = {secret, secret.strip(), secret.rstrip("\r\n")}
    if "://" in secret:
        parts = urlsplit(secret.strip())
        found.add(parts.password or "")
        found.add(parts.username or "" if parts.password else "")
        found.update(piece for piece in parts.path.split("/") if _token_like(piece))
        found.update(value for _, value in parse_qsl(parts.query) if _token_like(value))
        found.update(piece for piece in (parts.hostname or "").split(".")
                     if len(piece) >= 24 and _token_like(piece))
    return {item for item in found if len(item) >= MIN_SECRET}


def _token_like(piece: str) -> bool:
    return len(piece) >= 16 or (len(piece) >= 8 and any(c.isdigit() for c in piece)
                                and any(c.isalpha() for c in piece))


def catalog_secrets(catalog: Catalog) -> list[str]:
    """Every secret a catalog holds: keys, notifier URLs, target URL passwords, webhook URLs
    and header values."""
    found = list(catalog.secrets())
    for target in catalog.targets:
        password = urlsplit(str(target.url)).password
        if password:
            found.append(password)
    for remediation in catalog.remediations:
        url = getattr(remediation, "url", None)
        if isinstance(url, str):
            found += [piece for piece in urlsplit(url).path.split("/") if _token_like(piece)]
            found += [value for _, value in parse_qsl(urlsplit(url).query) if _token_like(value)]
            found.append(urlsplit(url).password or "")
        for value in (getattr(remediation, "headers", None) or {}).values():
            found.append(value.get_secret_value() if hasattr(value, "get_secret_value")
                         else str(value))
    return [item for item in found if item]


def environment_secrets() -> list[str]:
    """Values of environment variables whose names say they hold a secret."""
    return [value for name, value in os.environ.items()
            if _SECRET_NAME.search(name) and len(value.strip()) >= MIN_SECRET]


REDACTOR = Redactor()
_ENVIRONMENT_READ = False


def remember(secrets: Iterable[str]) -> None:
    REDACTOR.remember(secrets)


def remember_catalog(catalog: Catalog) -> None:
    """Make the boundary know a catalog's secrets (and the environment's, once)."""
    global _ENVIRONMENT_READ
    if not _ENVIRONMENT_READ:
        _ENVIRONMENT_READ = True
        REDACTOR.remember(environment_secrets())
    REDACTOR.remember(catalog_secrets(catalog))


def clean(value: Any, limit: int = MAX_TEXT, *, one_line: bool = False) -> str:
    """`text` safe to store, log, print or send: secrets replaced, NUL removed, escape
    sequences dropped and control characters shown as `\\xNN`, at most `limit` characters."""
    text = str(value).replace("\x00", "")
    text = REDACTOR.scrub(text)
    if not text.isprintable():  # all that follows needs a character that is not
        text = _ESCAPES.sub("", text)
        text = (_CONTROLS_AND_NEWLINES if one_line else _CONTROLS).sub(_escape, text)
    if len(text) > limit:
        cut = len(text) - limit
        text = f"{text[:limit]}... ({cut} more characters)"
    return text


def for_terminal(text: Any, limit: int = MAX_TEXT) -> str:
    """As `clean`, with rich markup escaped (a server's `[/]` would crash the table)."""
    from rich.markup import escape

    escaped: str = escape(clean(text, limit))
    return escaped


def clean_parameters(parameters: Any) -> Any:
    """Database statement parameters with every string cleaned (NUL would make PostgreSQL
    refuse the write; a secret would be kept for good)."""
    if isinstance(parameters, dict):
        return {key: _clean_value(value) for key, value in parameters.items()}
    if isinstance(parameters, tuple):
        return tuple(_clean_value(value) for value in parameters)
    if isinstance(parameters, list):
        return [clean_parameters(item) if isinstance(item, dict | tuple | list)
                else _clean_value(item) for item in parameters]
    return parameters


def _clean_value(value: Any) -> Any:
    return clean(value, MAX_STORED) if isinstance(value, str) and value else value


def scrub_statement(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any,
                    _executemany: bool) -> tuple[str, Any]:
    """SQLAlchemy `before_cursor_execute` hook: the store's write boundary (reads pass)."""
    if statement.lstrip()[:6].upper() not in ("INSERT", "UPDATE"):
        return statement, parameters
    return statement, clean_parameters(parameters)


class RedactingFilter(logging.Filter):
    """Cleans each log record: one line per message (no forged lines), secrets replaced."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = clean(record.getMessage(), MAX_TEXT, one_line=True)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = clean(logging.Formatter().formatException(record.exc_info),
                                    MAX_STORED)
        return True


def install_log_filter(handlers: Sequence[logging.Handler] | None = None) -> None:
    for handler in handlers if handlers is not None else logging.getLogger().handlers:
        if not any(isinstance(item, RedactingFilter) for item in handler.filters):
            handler.addFilter(RedactingFilter())
