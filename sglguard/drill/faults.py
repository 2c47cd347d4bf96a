"""The faults a drill can inject: every emulator fault, and a few safe, reversible actions on a
real server (SIGKILL, SIGSTOP/SIGCONT for a bounded time, a bounded burst, an impossible regex).

Each fault is a small class: `plan()` says what it would do (for --dry-run), `inject()` does it,
`clear()` undoes it (always called, also when the drill is interrupted)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

import requests

from sglguard.client import SGLangClient
from sglguard.config.models import TargetConfig

logger = logging.getLogger(__name__)


class DrillError(Exception):
    """A fault cannot be drilled on this target (no pid, not the emulator...)."""


@dataclass
class Settings:
    """The bounds a drill of a real server keeps to."""

    stop_for: float = 30.0  # SIGSTOP held at most this long
    burst: int = 64  # requests in a burst
    burst_tokens: int = 64  # max_new_tokens of each
    time_scale: float = 1.0  # the catalog's durations were multiplied by this (--time-scale)


@dataclass
class Scene:
    """What a fault acts on."""

    target: TargetConfig
    client: SGLangClient
    pid: Callable[[], int | None]
    settings: Settings


class Fault:
    """One drill: what it does, and how it is undone."""

    name: ClassVar[str]
    emulator: ClassVar[bool] = False  # only the emulator can act it out
    hold: ClassVar[float | None] = None  # the longest the fault may stay injected (seconds)

    def __init__(self, scene: Scene) -> None:
        self.scene = scene

    def plan(self) -> str:
        raise NotImplementedError

    def inject(self) -> None:
        raise NotImplementedError

    def clear(self) -> None:
        """Undo what inject did; safe to call twice, or without inject."""

    def max_hold(self) -> float | None:
        return self.hold


class EmulatorFault(Fault):
    """Sets the emulator's fault through its control route, and clears it afterwards."""

    emulator = True
    mode: ClassVar[str]

    def fault_mode(self) -> str:
        """The emulator's fault text, as this drill sets it."""
        return self.mode

    def plan(self) -> str:
        url = str(self.scene.target.url).rstrip("/")
        return f"POST {url}/_emulator/fault {{\"mode\": \"{self.fault_mode()}\"}}"

    def inject(self) -> None:
        self._set(self.fault_mode())

    def clear(self) -> None:
        # a crashed or restarting emulator has no fault to clear
        with contextlib.suppress(requests.RequestException):
            self._set(None)

    def _set(self, mode: str | None) -> None:
        url = f"{str(self.scene.target.url).rstrip('/')}/_emulator/fault"
        try:
            answer = requests.post(url, json={"mode": mode}, timeout=5)
        except requests.ConnectionError:
            if mode is not None and mode.startswith("crash"):
                return  # it may be gone before it answers
            raise
        if answer.status_code != 200:
            raise DrillError(f"the emulator refused fault {mode!r}: {answer.text[:200]}")


def emulator_fault(name: str, mode: str, doc: str) -> type[EmulatorFault]:
    return type(f"Emulator_{name}", (EmulatorFault,),
                {"name": name, "mode": mode, "__doc__": f"{doc} (emulator fault {mode})"})


class MemoryGrowth(EmulatorFault):
    """KV cache memory leaks, filling the 54 GB cache in 2 s (emulator fault memory_growth)"""

    name = "memory_growth"
    mode = "memory_growth"
    FILL_SECONDS = 2.0  # so fast that the time measured is the check's, not the leak's
    CACHE_MIB = 54.4 * 1024  # the emulator's KV cache

    def fault_mode(self) -> str:
        seconds = self.FILL_SECONDS * self.scene.settings.time_scale
        return f"memory_growth:{round(self.CACHE_MIB * 60 / seconds)}"


EMULATOR_FAULTS: tuple[type[Fault], ...] = (
    emulator_fault("crash", "crash:0.2", "the server exits"),
    emulator_fault("hang", "hang", "every request hangs, /health included"),
    emulator_fault("stall", "stall", "requests run but no token is generated"),
    emulator_fault("slow_ttft", "slow_ttft:8", "8 s more to the first token"),
    emulator_fault("5xx", "error:503", "inference requests answer 503"),
    emulator_fault("bad_output", "bad_output", "structured output breaks its schema"),
    emulator_fault("queue", "queue:1000", "1000 requests waiting"),
    MemoryGrowth,
)


class _PidFault(Fault):
    def _pid(self) -> int:
        pid = self.scene.pid()
        if pid is None:
            raise DrillError(f"{self.name} needs the server's pid: give target "
                             f"{self.scene.target.name} a process or command control with a "
                             "pidfile")
        return pid


def _tree(pid: int) -> list[int]:
    """The server and its children (SGLang's scheduler and detokenizer processes)."""
    import psutil

    try:
        return [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        return [pid]


class Kill(_PidFault):
    """SIGKILL the server: what an OOM kill or a crashed child does."""

    name = "sigkill"

    def plan(self) -> str:
        pid = self.scene.pid()
        return f"SIGKILL pid {pid if pid is not None else '(from the pidfile)'}; the catalog's " \
               "restart brings it back"

    def inject(self) -> None:
        os.kill(self._pid(), signal.SIGKILL)


class Stop(_PidFault):
    """SIGSTOP the server and its children for a bounded time, then SIGCONT."""

    name = "sigstop"

    def __init__(self, scene: Scene) -> None:
        super().__init__(scene)
        self.stopped: list[int] = []
        self.lock = threading.Lock()

    def max_hold(self) -> float | None:
        return self.scene.settings.stop_for

    def plan(self) -> str:
        pid = self.scene.pid()
        return (f"SIGSTOP pid {pid if pid is not None else '(from the pidfile)'} and its "
                f"children, SIGCONT after detection or {self.scene.settings.stop_for:g} s at most")

    def inject(self) -> None:
        pids = _tree(self._pid())
        with self.lock:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGSTOP)
                    self.stopped.append(pid)
                except ProcessLookupError:
                    pass

    def clear(self) -> None:
        with self.lock:
            pids, self.stopped = self.stopped, []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # restarted meanwhile
                os.kill(pid, signal.SIGCONT)


class Burst(Fault):
    """A bounded burst of concurrent generation requests."""

    name = "burst"

    def plan(self) -> str:
        settings = self.scene.settings
        return (f"{settings.burst} concurrent POST /generate of {settings.burst_tokens} tokens "
                "each, once")

    def inject(self) -> None:
        settings = self.scene.settings
        body = {"text": "Count slowly to one hundred.",
                "sampling_params": {"max_new_tokens": settings.burst_tokens}}

        def one(_: int) -> Any:
            try:
                return self.scene.client.generate(body, timeout=60.0)
            except Exception as exc:
                return exc

        def fire() -> None:
            with ThreadPoolExecutor(max_workers=min(64, settings.burst)) as pool:
                list(pool.map(one, range(settings.burst)))

        threading.Thread(target=fire, name="drill-burst", daemon=True).start()


class ImpossibleRegex(Fault):
    """One structured-output request whose regex no text can match."""

    name = "regex"
    REGEX = "[^\\s\\S]+"  # matches nothing

    def plan(self) -> str:
        return f"one POST /generate with sampling_params.regex {self.REGEX!r} (matches nothing)"

    def inject(self) -> None:
        body = {"text": "Answer.", "sampling_params": {"max_new_tokens": 16,
                                                       "regex": self.REGEX}}

        def fire() -> None:
            try:
                self.scene.client.generate(body, timeout=60.0)
            except Exception as exc:
                logger.info("drill regex request: %s", exc)

        threading.Thread(target=fire, name="drill-regex", daemon=True).start()


REAL_FAULTS: tuple[type[Fault], ...] = (Kill, Stop, Burst, ImpossibleRegex)
FAULTS: dict[str, type[Fault]] = {cls.name: cls for cls in (*EMULATOR_FAULTS, *REAL_FAULTS)}


def is_emulator(target: TargetConfig) -> bool:
    """The target answers the emulator's fault route (a real SGLang server answers 404)."""
    try:
        answer = requests.get(f"{str(target.url).rstrip('/')}/_emulator/fault", timeout=3)
        return answer.status_code == 200 and "mode" in answer.json()
    except (requests.RequestException, ValueError):
        return False
