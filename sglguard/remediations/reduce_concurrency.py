"""`reduce_concurrency`: restart the server with a lower `--max-running-requests` (optionally also
`--max-queued-requests` and `--mem-fraction-static`), because SGLang cannot change them at run time
(`/set_internal_state` answers `[false]`).

The value in force is read from `/server_info` (`internal_states[0].
effective_max_running_requests_per_dp`, else `max_running_requests`), multiplied by `factor` and
rounded down, never below `min`. The lowered level is kept in the store (`target_levels`): every
later restart of the target, by any remediation, keeps it; after `restore_after` of healthy
running it steps back up one level at a time (`sglguard.remediations.restore`).

How the flags reach the server depends on the control: `process` and `command` rewrite their
start arguments (`--flag value` or `--flag=value`, appended when absent); `systemd` writes a
drop-in with `Environment=SGLANG_MAX_RUNNING_REQUESTS=N` (the unit's ExecStart must use
`--max-running-requests ${SGLANG_MAX_RUNNING_REQUESTS}`, with a default from an `Environment=`
line of the unit; see `sglguard.controls.systemd`); `docker` cannot, and says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Literal

from pydantic import Field

from sglguard.client import TargetError
from sglguard.config.base import ConfigModel
from sglguard.config.types import Duration, format_duration
from sglguard.controls.base import Control, ControlError
from sglguard.remediations.base import Remediation, RemediationConfig, RemediationError
from sglguard.remediations.health import plan_wait, wait_until_healthy
from sglguard.remediations.levels import (
    INTEGER_SETTINGS,
    Level,
    TargetLevels,
    format_value,
    lowered,
    overrides_of,
    stepped_up,
)
from sglguard.remediations.restart import control_of

MAIN = "max_running_requests"


class Lowering(ConfigModel):
    """How far one more launch setting goes down with each reduction."""

    factor: float = Field(gt=0, lt=1)
    min: float = Field(gt=0)


class ReduceConcurrencyConfig(RemediationConfig):
    """Restart with max_running_requests * factor (not below min); restore later."""

    destructive = True

    kind: Literal["reduce_concurrency"]
    factor: float = Field(default=0.5, gt=0, lt=1)
    min: int = Field(default=8, ge=1)
    restore_after: Duration = Field(
        default=timedelta(minutes=30),
        description="healthy running after which the level steps back up by one")
    max_queued_requests: Lowering | None = None
    mem_fraction_static: Lowering | None = None
    health_path: str = "/health"

    def lowerings(self) -> dict[str, Lowering]:
        found = {MAIN: Lowering(factor=self.factor, min=self.min)}
        for setting in ("max_queued_requests", "mem_fraction_static"):
            lowering = getattr(self, setting)
            if lowering is not None:
                found[setting] = lowering
        return found

    def factor_of(self, setting: str) -> float:
        lowering = self.lowerings().get(setting)
        return lowering.factor if lowering is not None else self.factor


def value_in_force(info: dict[str, Any], setting: str) -> float | None:
    """A launch setting as the running server reports it; the effective concurrency first."""
    if setting == MAIN:
        states = info.get("internal_states")
        if isinstance(states, list) and states and isinstance(states[0], dict):
            effective = states[0].get("effective_max_running_requests_per_dp")
            if isinstance(effective, int | float) and not isinstance(effective, bool):
                return float(effective)
    value = info.get(setting)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


class ReduceConcurrency(Remediation[ReduceConcurrencyConfig]):
    """Lowers launch settings by restarting with rewritten flags; keeps the level in the store."""

    kind = "reduce_concurrency"
    config_model = ReduceConcurrencyConfig
    requires_control = True
    changes_launch_flags = True

    def control(self) -> Control[Any]:
        control = control_of(self)
        if not control.supports_overrides:
            raise RemediationError(
                f"reduce_concurrency cannot change launch flags through the {control.kind} "
                f"control of target {self.context.target.name} (use a process, command or "
                "systemd control)", permanent=True)
        return control

    @property
    def levels(self) -> TargetLevels:
        if self.context.levels is None:
            raise RemediationError("reduce_concurrency needs the store to keep its levels",
                                   permanent=True)
        return self.context.levels

    def lowered_levels(self) -> tuple[list[Level], list[Level], list[str]]:
        """(levels now, levels after this reduction, notes on settings left as they are)."""
        before = {level.setting: level for level in self.levels.all()}
        info = self._server_info(before)
        now = self.context.clock()
        after = dict(before)
        notes: list[str] = []
        for setting, lowering in self.config.lowerings().items():
            kept = before.get(setting)
            current = value_in_force(info, setting) if info else None
            current = current if current is not None else kept.current if kept else None
            if current is None:
                if setting == MAIN:
                    raise RemediationError(f"/server_info does not report {MAIN}")
                why = "not set on the server (no limit)" if info else "unknown (server down)"
                notes.append(f"{setting} is {why}: left as is")
                continue
            new = lowered(current, lowering.factor, lowering.min,
                          integer=setting in INTEGER_SETTINGS)
            if new is None:
                if setting == MAIN:
                    raise RemediationError(
                        f"{MAIN} is already at the minimum ({format_value(current)}, "
                        f"min {self.config.min})", permanent=True)
                notes.append(f"{setting} is already at its minimum ({format_value(current)})")
                continue
            original = kept.original if kept else current
            steps = kept.steps + 1 if kept else 1
            after[setting] = Level(setting, original, new, steps, now)
        return list(before.values()), list(after.values()), notes

    def _server_info(self, kept: dict[str, Level]) -> dict[str, Any] | None:
        try:
            return self.context.client.server_info()
        except TargetError as exc:
            if MAIN in kept:
                return None  # the server is down: go on from the level in force
            raise RemediationError(f"cannot read {MAIN} from the server: {exc}") from None

    def plan(self) -> list[str]:
        control = self.control()
        before, after, notes = self.lowered_levels()
        old, new = overrides_of(before), overrides_of(after)
        try:
            steps = [
                *describe_changes(before, after), *notes,
                f"launch now: {control.describe_launch(old)}",
                f"launch after: {control.describe_launch(new)}",
                *control.plan_restart(new),
            ]
        except ControlError as exc:
            raise RemediationError(str(exc), permanent=exc.permanent) from None
        after_text = format_duration(self.config.restore_after)
        return [*steps, plan_wait(self.context, control, self.config.health_path),
                f"keep the level in the store; step back up one level after {after_text} of "
                "healthy running"]

    def execute(self) -> str:
        control = self.control()
        before, after, notes = self.lowered_levels()
        # Kept before the restart: were sglguard to die during it, later restarts stay low.
        self.levels.save(after)
        done, took = self._restart(control, overrides_of(after))
        self._verify(after)
        changes = "; ".join([*describe_changes(before, after), *notes])
        return f"{changes}; {done}; healthy after {took:.1f} s"

    def plan_restore(self) -> list[str]:
        control = self.control()
        before, kept, removed = self.raised_levels()
        if not before:
            return ["nothing to restore: no lowered launch settings"]
        new = overrides_of(kept)
        try:
            steps = [*describe_changes(before, kept, removed),
                     f"launch after: {control.describe_launch(new)}",
                     *control.plan_restart(new)]
        except ControlError as exc:
            raise RemediationError(str(exc), permanent=exc.permanent) from None
        return [*steps, plan_wait(self.context, control, self.config.health_path)]

    def raised_levels(self) -> tuple[list[Level], list[Level], list[str]]:
        """(levels now, levels one step up, settings back at their original)."""
        before = self.levels.all()
        now = self.context.clock()
        kept: list[Level] = []
        removed: list[str] = []
        for level in before:
            up = stepped_up(level, self.config.factor_of(level.setting), now)
            if up is None:
                removed.append(level.setting)
            else:
                kept.append(up)
        return before, kept, removed

    def restore(self) -> str:
        """Step every lowered setting of the target up one level: restart with them, and keep
        them once the server is healthy. On failure the lower levels stay in force, and their
        time starts again (the next step waits another restore_after)."""
        control = self.control()
        before, kept, removed = self.raised_levels()
        if not before:
            return "nothing to restore"
        try:
            done, took = self._restart(control, overrides_of(kept))
        except RemediationError:
            now = self.context.clock()
            self.levels.save([Level(lv.setting, lv.original, lv.current, lv.steps, now)
                              for lv in before])
            raise
        self.levels.save(kept, removed)
        changes = "; ".join(describe_changes(before, kept, removed))
        return f"{changes}; {done}; healthy after {took:.1f} s"

    def _restart(self, control: Control[Any], overrides: dict[str, str]) -> tuple[str, float]:
        try:
            done = control.restart(overrides)
        except ControlError as exc:
            raise RemediationError(str(exc), permanent=exc.permanent) from None
        return done, wait_until_healthy(self.context, control, self.config.health_path)

    def _verify(self, after: list[Level]) -> None:
        """The restarted server must run with the lowered value (a systemd unit that does not
        use the variable would silently ignore the drop-in)."""
        wanted = next(level for level in after if level.setting == MAIN)
        try:
            running = value_in_force(self.context.client.server_info(), MAIN)
        except TargetError as exc:
            raise RemediationError(f"restarted, but cannot read {MAIN} back: {exc}") from None
        if running is not None and running > wanted.current:
            raise RemediationError(
                f"restarted, but the server runs with {MAIN} {format_value(running)}, not "
                f"{wanted.value}: its launch command does not take {wanted.flag} from sglguard",
                permanent=True)


def describe_changes(before: Sequence[Level], after: Sequence[Level],
                     removed: Sequence[str] = ()) -> list[str]:
    """`max_running_requests: 256 -> 128` for each setting that changes."""
    old = {level.setting: level for level in before}
    lines = []
    for level in after:
        previous = old.get(level.setting)
        if previous is None or previous.current != level.current:
            start = previous.value if previous else format_value(level.original)
            lines.append(f"{level.setting}: {start} -> {level.value}")
    for setting in removed:
        level = old[setting]
        lines.append(f"{setting}: {level.value} -> {format_value(level.original)} (original)")
    return lines
