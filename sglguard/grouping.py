"""Grouping: incidents of one target that open within `group_wait` become one message.

The first `incident_opened` of a target starts a window of `group_wait` (real time: this is a
delivery delay, not a schedule). Until the window closes, further openings of that target join
the group, and any other message about the target (a remediation started, a resolution) waits
behind it, so a person never reads "restart succeeded" before "incident opened". An
escalation ("a person is needed"), or the resolution of an incident in the group, does not
wait: it closes its target's window at once, the group goes out, then the message. When a
window closes a timer thread hands the group to `release`; `release_all()` (flush, stop) hands
over every group at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sglguard.notice import ESCALATIONS, Message

logger = logging.getLogger(__name__)


@dataclass
class Held:
    """The openings of one target waiting for their window to close, and what came after."""

    target: str
    due: float
    opened: list[Message] = field(default_factory=list)
    after: list[Message] = field(default_factory=list)


def _closes(message: Message, held: Held) -> bool:
    """An escalation, or the resolution of an incident in the group, closes the window: the
    group goes out now (announcing as open later what has already resolved would mislead)."""
    if message.event in ESCALATIONS:
        return True
    if message.event != "incident_resolved":
        return False
    opened = {number for item in held.opened for number in item.incident_ids}
    return bool(opened & set(message.incident_ids))


class Grouper:
    """Holds openings per target for `wait` seconds, then releases them together."""

    def __init__(self, wait: float, release: Callable[[Held], None]) -> None:
        self.wait = wait
        self._release = release
        self._held: dict[str, Held] = {}
        # Targets whose group is being handed over, and what arrived for them meanwhile:
        # it goes out after the group, never before it.
        self._releasing: set[str] = set()
        self._late: dict[str, list[Message]] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def hold(self, message: Message) -> bool:
        """Keep the message for its target's group; False if it should go out now.

        An escalation closes its target's window: the group goes out, then the escalation."""
        target = message.target
        if self.wait <= 0 or target is None or message.event == "test":
            return False
        with self._cond:
            held = self._held.get(target)
            if message.event == "incident_opened":
                if held is None:
                    held = self._held[target] = Held(target, time.monotonic() + self.wait)
                    self._cond.notify()
                held.opened.append(message)
                return True
            if held is not None and not _closes(message, held):
                held.after.append(message)
                return True
            if held is None and target not in self._releasing:
                return False
            self._late.setdefault(target, []).append(message)
            if held is not None:
                self._take(held)
        if held is not None:
            self._hand_over(held)
        return True

    def held_incidents(self) -> set[int]:
        with self._cond:
            return {number for held in self._held.values() for item in held.opened
                    for number in item.incident_ids}

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="notify-group", daemon=True)
        self._thread.start()

    def release_all(self) -> None:
        with self._cond:
            groups = list(self._held.values())
            for held in groups:
                self._take(held)
        for held in groups:
            self._hand_over(held)

    def stop(self) -> None:
        """Stop the timer and release every group now."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5.0)
        self.release_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                now = time.monotonic()
                ready = [held for held in self._held.values() if held.due <= now]
                for held in ready:
                    self._take(held)
                if not ready:
                    due = min((held.due for held in self._held.values()), default=None)
                    self._cond.wait(None if due is None else due - now)
                    continue
            for held in ready:
                self._hand_over(held)

    def _take(self, held: Held) -> None:
        """Under the lock: the group leaves the window and its target is being released."""
        del self._held[held.target]
        self._releasing.add(held.target)

    def _hand_over(self, held: Held) -> None:
        batch = held
        while True:
            try:
                self._release(batch)
            except Exception:
                logger.exception("could not release the notifications held for %s", held.target)
            with self._cond:
                late = self._late.pop(held.target, [])
                if not late:
                    self._releasing.discard(held.target)
                    return
            batch = Held(held.target, 0.0, after=late)
