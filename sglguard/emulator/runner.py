"""Starting and stopping an emulated server, in a thread (tests) or in the foreground (demo)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType, TracebackType

from .context import EmulatorContext
from .controller import FaultController
from .faults import parse_optional_fault
from .load import SyntheticLoad, warm_up
from .options import EmulatorOptions
from .profiles import PROFILES
from .server import EmulatorHTTPServer
from .state import EmulatorState

logger = logging.getLogger(__name__)

# After SIGTERM SGLang lets in-flight requests finish; the emulator's finish fast, so this is
# only a backstop for requests held by a fault.
DRAIN_TIMEOUT_S = 5.0
POLL_INTERVAL_S = 0.05  # how fast serve_forever notices shutdown(); stop() waits up to this


class Emulator:
    """An emulated SGLang server serving from a daemon thread."""

    def __init__(
        self,
        options: EmulatorOptions,
        *,
        exit_fn: Callable[[int], object] = os._exit,
        health_check_timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`clock` is what the memory_growth fault measures its minutes with (tests fake it)."""
        self.options = options
        self._initial_fault = parse_optional_fault(options.fault)  # bad text fails here
        self._exit_fn = exit_fn
        ctx = EmulatorContext(
            options,
            EmulatorState(
                options.max_running_requests,
                PROFILES[options.metrics_version].histograms,
                dp_size=options.dp_size,
                priority_scheduling=options.enable_priority_scheduling,
                default_priority_value=options.default_priority_value,
                prefill_only=options.disaggregation_mode == "prefill",
                decode_only=options.disaggregation_mode == "decode",
                decode_speed=options.decode_speed,
                streaming_counters=PROFILES[options.metrics_version].streaming_counters,
            ),
            FaultController(self._crash, clock),
        )
        if health_check_timeout is not None:
            ctx.health_check_timeout = health_check_timeout
        self._ctx = ctx
        self._server: EmulatorHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._load: SyntheticLoad | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Bind, start serving in a daemon thread, return once listening."""
        with self._lock:
            if self._server is not None:
                raise RuntimeError("emulator is already running")
            server = EmulatorHTTPServer((self.options.host, self.options.port), self._ctx)
            self._ctx.port = server.server_port
            self._ctx.state.mark_started(self.options.startup_delay)
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": POLL_INTERVAL_S},
                name=f"sglguard-emulator-{server.server_port}",
                daemon=True,
            )
            thread.start()
            self._server, self._thread = server, thread
            load = SyntheticLoad(self._ctx, self.options.load) if self.options.load > 0 else None
            self._load = load
        logger.info("emulator listening on %s", self.url)
        self._ctx.set_fault(self._initial_fault)
        if self.options.startup_delay > 0 or self._initial_fault is not None:
            threading.Thread(target=self._ready, name="sglguard-emulator-warmup",
                             daemon=True).start()
        else:
            self._ready()  # at once: a test sees the warmed-up server as start() returns
        if load is not None:
            load.start()  # after the initial fault, so that a `stall` at launch holds it too

    def _ready(self) -> None:
        """What SGLang does as start-up ends: report its phases, send one warm-up request."""
        delay = self.options.startup_delay
        if delay > 0 and not self._ctx.state.pause_for(delay):
            return
        spent = max(delay, 0.05)
        self._ctx.state.set_startup({
            "load_weight": round(spent * 0.55, 3), "kv_cache_allocation": round(spent * 0.05, 3),
            "scheduler_e2e": round(spent * 0.9, 3), "tokenizer_e2e": round(spent, 3)})
        if not self.options.skip_server_warmup:
            warm_up(self._ctx)

    def stop(self) -> None:
        """Close the server: stop accepting, wake requests held by faults, cut connections."""
        with self._lock:
            server, thread, load = self._server, self._thread, self._load
            self._server = self._thread = self._load = None
        if server is None:
            return
        if load is not None:
            load.stop()
        self._ctx.faults.close()
        self._ctx.state.close()
        server.shutdown()
        server.server_close()
        server.cut_connections()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)
        logger.info("emulator on port %d stopped", self._ctx.port)

    @property
    def url(self) -> str:
        host = self.options.host or "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self._ctx.port}"

    @property
    def fault(self) -> str | None:
        current = self._ctx.faults.current
        return None if current is None else str(current)

    @property
    def active_requests(self) -> int:
        """HTTP requests being answered now (the control API aside), hung ones included."""
        return sum(self._ctx.state.snapshot().http_active.values())

    def set_fault(self, text: str | None) -> None:
        """Change the fault; None or "none" clears it. ValueError for bad text."""
        self._ctx.set_fault(parse_optional_fault(text))

    def drain(self, timeout: float = DRAIN_TIMEOUT_S) -> bool:
        """Act on SIGTERM as SGLang does: /health answers 503 while in-flight requests finish."""
        self._ctx.state.set_flag("draining", True)
        return self._ctx.state.wait_idle(timeout)

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _crash(self) -> None:
        logger.error("emulator crashing on purpose (fault crash)")
        self._exit_fn(1)
        # Only an injected exit function returns; a crashed server serves nothing either.
        self.stop()


def run_emulator(options: EmulatorOptions) -> int:
    """Serve in the foreground until SIGTERM or SIGINT, then drain and return 0."""
    emulator = Emulator(options)
    stop_requested = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        emulator.start()
        sys.stderr.write(f"sglguard emulator listening on {emulator.url}\n")
        sys.stderr.flush()
        while not stop_requested.wait(1.0):
            pass
        started = time.monotonic()
        drained = emulator.drain()
        logger.info("emulator drained=%s in %.3f s", drained, time.monotonic() - started)
    finally:
        emulator.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
