"""Run-time request logging and request dumps, as SGLang's `/configure_logging` sets them.

SGLang's tokenizer manager keeps each finished request (its input, its output, when it was
created and finished) in a list while `dump_requests_folder` is set, and writes the list to
`FOLDER/%Y-%m-%d_%H-%M-%S.pkl` (a pickle of {"server_args", "requests"}) each time it holds
`dump_requests_threshold` requests. An empty folder switches dumping off; requests still in the
list stay there until it is switched on again. The emulator does the same for the requests it
answers over HTTP (not for its synthetic load)."""

from __future__ import annotations

import logging
import pickle
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from .wire import BadRequest

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 1000  # SGLang's dump_requests_threshold
FIELDS: dict[str, type] = {  # ConfigureLoggingReq: each optional, None leaves it as it is
    "log_requests": bool,
    "log_requests_level": int,
    "log_requests_format": str,
    "dump_requests_folder": str,
    "dump_requests_threshold": int,
    "crash_dump_folder": str,
}
TYPE_WORDS = {bool: "a valid boolean", int: "a valid integer", str: "a valid string"}


class RequestLog:
    """The settings /configure_logging changes, and the list of requests awaiting a dump."""

    def __init__(self, server_args: dict[str, Any]) -> None:
        self._lock = threading.Lock()
        self.settings: dict[str, Any] = {
            "log_requests": False, "log_requests_level": 2, "log_requests_format": "text",
            "dump_requests_folder": "", "dump_requests_threshold": DEFAULT_THRESHOLD,
            "crash_dump_folder": None,
        }
        self._server_args = server_args
        self._pending: list[tuple[Any, ...]] = []

    def configure(self, body: dict[str, Any]) -> None:
        """Apply a /configure_logging body; a field of the wrong type is FastAPI's 422."""
        for name, kind in FIELDS.items():
            value = body.get(name)
            if value is None:
                continue
            fits = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
            if not fits:
                raise BadRequest({"detail": [{"type": "value_error", "loc": ["body", name],
                                              "msg": f"Input should be {TYPE_WORDS[kind]}"}]},
                                 status=422)
        with self._lock:
            for name in FIELDS:
                if body.get(name) is not None:
                    self.settings[name] = body[name]
        logger.info("Config logging: obj=%s", {name: body.get(name) for name in FIELDS})

    def view(self) -> dict[str, Any]:
        with self._lock:
            return {**self.settings, "pending": len(self._pending)}

    def finished(self, request: Any, output: Any, created: float) -> None:
        """A request answered: logged when log_requests is on, kept for a dump when dumps are."""
        with self._lock:
            settings = dict(self.settings)
            if settings["log_requests"]:
                logger.info("Finish: obj=%s, out=%s", request, output)
            folder = settings["dump_requests_folder"]
            if not folder:
                return
            self._pending.append((request, output, created, time.time()))
            if len(self._pending) < max(1, settings["dump_requests_threshold"]):
                return
            batch, self._pending = self._pending, []
        path = Path(folder) / (datetime.now().strftime("%Y-%m-%d_%H-%M-%S") + ".pkl")
        logger.info("Dump %s requests to %s", len(batch), path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as out:
                pickle.dump({"server_args": self._server_args, "requests": batch}, out)
        except OSError as exc:
            logger.warning("request dump to %s failed: %s", path, exc)
