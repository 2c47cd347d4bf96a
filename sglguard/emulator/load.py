"""Synthetic traffic (`--load RPS`): requests served internally, as if sent to /generate."""

from __future__ import annotations

import logging
import threading
import time

from .context import EmulatorContext
from .engine import Job, new_rid, run_job

logger = logging.getLogger(__name__)

ENDPOINT = "/generate"
METHOD = "POST"
# When the schedule falls this far behind (a suspended laptop), start afresh instead of
# firing the missed requests in one burst.
MAX_LAG_S = 1.0
# Output lengths cycle through 24..64 tokens: at ~11 ms a token each request runs 0.27 s or
# more, so from 5 requests/s on there is always one running.
MIN_NEW_TOKENS = 24
NEW_TOKENS_SPREAD = 41
PROMPTS = (
    "Summarise the incident report for the on-call engineer.",
    "Translate the release notes into plain English.",
    "Write a haiku about GPU memory.",
    "List three ways to reduce time to first token.",
)


class SyntheticLoad:
    """Starts requests at a steady rate, each in a short-lived thread; stops with the server.

    Arrivals are evenly spaced (no randomness): request n goes at start + n / rps. Every
    fourth request streams. Requests go through the engine like /generate's, count in the
    HTTP metrics as POST /generate and take the `error`/`errors` faults; while the server
    starts, drains, hangs or stalls no new ones arrive (a stuck scheduler takes nothing in).
    """

    def __init__(self, ctx: EmulatorContext, rps: float) -> None:
        self._ctx = ctx
        self._interval = 1.0 / rps
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._in_flight = 0
        # Beyond this many the rest are dropped: a paused or slow server must not pile up threads.
        self._max_in_flight = ctx.options.max_running_requests + 64
        self._sent = 0
        self._thread = threading.Thread(
            target=self._loop, name="sglguard-emulator-load", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)

    def _loop(self) -> None:
        next_at = time.monotonic()
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            now = time.monotonic()
            next_at = max(next_at + self._interval, now - MAX_LAG_S)
            if self._accepting():
                self._arrive()

    def _accepting(self) -> bool:
        state, faults = self._ctx.state, self._ctx.faults
        if state.is_starting() or state.flags.draining or state.flags.stopping:
            return False
        return not (faults.is_active("hang") or faults.is_active("stall"))

    def _arrive(self) -> None:
        with self._lock:
            if self._in_flight >= self._max_in_flight:
                return
            self._in_flight += 1
            self._sent += 1
            number = self._sent
        worker = threading.Thread(
            target=self._serve, args=(number,), name="sglguard-emulator-synthetic", daemon=True
        )
        worker.start()

    def _serve(self, number: int) -> None:
        try:
            serve_synthetic(self._ctx, number)
        except Exception:
            logger.exception("synthetic request %d failed", number)
        finally:
            with self._lock:
                self._in_flight -= 1


def serve_synthetic(ctx: EmulatorContext, number: int) -> int:
    """Serve synthetic request `number` as POST /generate would; returns the status."""
    state = ctx.state
    state.http_started(ENDPOINT, METHOD)
    status = 500
    try:
        status = ctx.faults.error_status() or 200
        if status == 200:
            prompt = PROMPTS[number % len(PROMPTS)]
            max_new_tokens = MIN_NEW_TOKENS + (number * 7) % NEW_TOKENS_SPREAD
            streaming = number % 4 == 0
            run_job(
                ctx,
                Job(
                    new_rid(),
                    prompt,
                    max_new_tokens,
                    None,
                    streaming,
                    time.monotonic(),
                    synthetic=True,
                ),
            )
    finally:
        state.http_finished(ENDPOINT, METHOD, status)
    return status


WARMUP_PROMPT = "The capital city of France is"
WARMUP_NEW_TOKENS = 8


def warm_up(ctx: EmulatorContext) -> None:
    """SGLang's warm-up: one POST /generate as start-up ends (unless --skip-server-warmup), so
    the latency histograms and token counters exist before the first real request."""
    state = ctx.state
    state.http_started(ENDPOINT, METHOD)
    status = 500
    try:
        run_job(ctx, Job(new_rid(), WARMUP_PROMPT, WARMUP_NEW_TOKENS, None, False,
                         time.monotonic()))
        status = 200
    finally:
        state.http_finished(ENDPOINT, METHOD, status)
