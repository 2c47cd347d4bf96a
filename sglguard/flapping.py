"""Flap detection as Nagios does it, and `X of Y` failure windows, over a check's recent states.

States are kept newest last as letters: o(k), w(arning), c(ritical), u(nknown); a `-` marks
runs skipped while a dependency was down: an `X of Y` window starts again after it."""

from __future__ import annotations

HISTORY = 21  # states kept: 20 transitions
# Kinds that probe the server's life: at CRITICAL the server is down, not noisy, and flapping
# never hides it (it pages and is repaired).
HARD_DOWN_KINDS = frozenset({"http", "process", "generate"})
LETTERS = {"ok": "o", "warning": "w", "critical": "c", "unknown": "u"}
GAP = "-"


def remember(recent: str, status: str, keep: int = HISTORY) -> str:
    """The history with one more state appended, oldest dropped beyond `keep`."""
    return (recent + LETTERS[status])[-keep:]


def remember_gap(recent: str, keep: int = HISTORY) -> str:
    """The history with a gap appended (once for a stretch of skipped runs)."""
    return recent if recent.endswith(GAP) else (recent + GAP)[-keep:]


def since_gap(recent: str) -> str:
    """The states after the last gap."""
    return recent.rsplit(GAP, 1)[-1]


def percent_state_change(recent: str) -> float:
    """Weighted share of the last 20 transitions that changed state, 0..100.

    The oldest transition weighs 0.8 and the newest 1.2, linearly between (Nagios)."""
    states = recent.replace(GAP, "")[-HISTORY:]
    transitions = HISTORY - 1
    changed = 0.0
    offset = transitions - (len(states) - 1)  # a short history fills the newest slots
    for index in range(1, len(states)):
        if states[index] != states[index - 1]:
            position = offset + index - 1
            changed += 0.8 + 0.4 * position / (transitions - 1)
    return changed / transitions * 100.0


def next_flapping(recent: str, flapping: bool, high: float, low: float) -> bool:
    """Start at or above `high` percent, stop below `low` (hysteresis)."""
    percent = percent_state_change(recent)
    return percent >= low if flapping else percent >= high


def failures_within(recent: str, within: int) -> int:
    """How many of the last `within` states since the last gap were not OK."""
    return sum(1 for state in since_gap(recent)[-within:] if state != "o")
