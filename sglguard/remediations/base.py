"""What every remediation kind shares: config, context, errors, plan() and execute()."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydantic import Field

from sglguard.clock import utcnow
from sglguard.config.base import ConfigModel, KindModel, Name
from sglguard.config.types import Duration

if TYPE_CHECKING:
    from sglguard.client import SGLangClient
    from sglguard.config.models import TargetConfig
    from sglguard.controls.base import Control
    from sglguard.remediations.levels import TargetLevels
    from sglguard.store import Store


class Budget(ConfigModel):
    """At most `max` automatic runs per target within `within`."""

    max: int = Field(default=3, ge=1, le=1000)
    within: Duration = timedelta(minutes=30)


class Backoff(ConfigModel):
    """Delay between automatic runs: `initial`, doubling to `max`; forgotten after `reset_after`
    without a run (Kubernetes' restart backoff: 10 s, 20 s, 40 s ... 5 min, reset after 10 min)."""

    initial: Duration = timedelta(seconds=10)
    max: Duration = timedelta(minutes=5)
    reset_after: Duration = timedelta(minutes=10)


class RemediationConfig(KindModel):
    """Fields every remediation has; a kind's model adds its own."""

    family: ClassVar[str] = "remediation"
    # Takes capacity away (a restart, fewer slots, requests dropped): it runs only on evidence
    # of harm, never on a check that could not evaluate, unless the check opts in.
    destructive: ClassVar[bool] = False
    name: Name
    budget: Budget = Budget()
    backoff: Backoff = Backoff()
    cooldown: Duration | None = Field(
        default=None, description="after each run, no automatic run of it for this long")
    verify: Name | None = Field(
        default=None, description="the check that must pass afterwards (default: the trigger)")
    verify_within: Duration | None = Field(
        default=None, description="default: the target's startup_timeout, else 2m")


class RemediationError(Exception):
    """A remediation failed; `permanent` when running it again cannot help."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class RemediationContext:
    """What a remediation may use: its target, the client, the control, a stop signal, the
    launch levels kept lowered for the target, the incident it acts on (if any), and the store
    (for what must outlive the run, e.g. the registration of a drained worker)."""

    target: TargetConfig
    client: SGLangClient
    control: Control[Any] | None
    stop: threading.Event = field(default_factory=threading.Event)
    clock: Callable[[], datetime] = field(default=utcnow)
    levels: TargetLevels | None = None
    incident_id: int | None = None
    store: Store | None = None

    def overrides(self) -> dict[str, str]:
        """The launch flags every restart of the target must keep (reduce_concurrency)."""
        return self.levels.overrides() if self.levels is not None else {}


ConfigT = TypeVar("ConfigT", bound=RemediationConfig)


class Remediation(Generic[ConfigT]):
    """Base of remediation kinds."""

    kind: ClassVar[str]
    config_model: ClassVar[type[RemediationConfig]]
    requires_control: ClassVar[bool] = False
    changes_launch_flags: ClassVar[bool] = False  # needs a control with supports_overrides

    def __init__(self, config: ConfigT, context: RemediationContext) -> None:
        self.config = config
        self.context = context

    def plan(self) -> list[str]:
        """Exactly what execute() would do: commands with their arguments, HTTP calls."""
        raise NotImplementedError

    def execute(self) -> str:
        """Do it; return a one-line account. Raises RemediationError."""
        raise NotImplementedError

    def after_chain(self, succeeded: bool) -> str | None:
        """Called once the remediations after this one in the chain have run (`succeeded`:
        the chain ended well), for a kind that must undo something (drain re-adds the worker).
        Returns what was done, or None when there was nothing to do. Raises RemediationError."""
        return None
