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


class Budget(ConfigModel):
    """At most `max` automatic runs per target within `within`."""

    max: int = Field(default=3, ge=1, le=1000)
    within: Duration = timedelta(minutes=30)


class RemediationConfig(KindModel):
    """Fields every remediation has; a kind's model adds its own."""

    family: ClassVar[str] = "remediation"
    name: Name
    budget: Budget = Budget()


class RemediationError(Exception):
    """A remediation failed; `permanent` when running it again cannot help."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class RemediationContext:
    """What a remediation may use: its target, the client, the control, a stop signal."""

    target: TargetConfig
    client: SGLangClient
    control: Control[Any] | None
    stop: threading.Event = field(default_factory=threading.Event)
    clock: Callable[[], datetime] = field(default=utcnow)


ConfigT = TypeVar("ConfigT", bound=RemediationConfig)


class Remediation(Generic[ConfigT]):
    """Base of remediation kinds."""

    kind: ClassVar[str]
    config_model: ClassVar[type[RemediationConfig]]
    requires_control: ClassVar[bool] = False

    def __init__(self, config: ConfigT, context: RemediationContext) -> None:
        self.config = config
        self.context = context

    def plan(self) -> list[str]:
        """Exactly what execute() would do: commands with their arguments, HTTP calls."""
        raise NotImplementedError

    def execute(self) -> str:
        """Do it; return a one-line account. Raises RemediationError."""
        raise NotImplementedError
