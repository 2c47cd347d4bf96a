"""Pydantic models of the YAML catalog."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal, get_args

from pydantic import Field, SecretStr, field_validator

import sglguard.checks.registry
import sglguard.controls.registry
import sglguard.remediations.registry  # noqa: F401  (the registries bind the kinds)
from sglguard.checks.base import CheckConfig
from sglguard.config.base import ConfigModel, Name
from sglguard.config.types import Duration
from sglguard.controls.base import ControlConfig
from sglguard.remediations.base import RemediationConfig

Event = Literal[
    "incident_opened",
    "incident_resolved",
    "remediation_succeeded",
    "remediation_failed",
    "budget_spent",
    "test",
]
EVENTS: tuple[Event, ...] = get_args(Event)


class TargetConfig(ConfigModel):
    """One SGLang server (or gateway) that sglguard watches."""

    name: Name
    url: str = Field(pattern=r"^https?://[^\s/]+(/\S*)?$")
    api_key: SecretStr | None = None
    admin_api_key: SecretStr | None = None
    timeout: Duration = timedelta(seconds=10)
    control: ControlConfig | None = None


class NotifierConfig(ConfigModel):
    """A set of Apprise URLs and the events sent to them."""

    name: Name
    urls: tuple[SecretStr, ...] = Field(min_length=1)
    events: tuple[Event, ...] = EVENTS

    @field_validator("urls")
    @classmethod
    def _urls_have_scheme(cls, urls: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        for index, url in enumerate(urls):
            if "://" not in url.get_secret_value():
                raise ValueError(f"urls[{index}] is not an Apprise URL (expected scheme://...)")
        return urls


class StoreConfig(ConfigModel):
    """Where results, incidents and audit records are kept (an SQLAlchemy URL)."""

    url: str = "sqlite:///sglguard.db"


class Catalog(ConfigModel):
    """The whole catalog file."""

    version: Literal[1]
    mode: Literal["active", "passive"] = Field(
        default="active", description="passive: detect and notify, never remediate"
    )
    store: StoreConfig = StoreConfig()
    targets: tuple[TargetConfig, ...] = Field(min_length=1)
    checks: tuple[CheckConfig, ...] = ()
    remediations: tuple[RemediationConfig, ...] = ()
    notifiers: tuple[NotifierConfig, ...] = ()

    def target(self, name: str) -> TargetConfig:
        return next(target for target in self.targets if target.name == name)

    def check(self, name: str) -> CheckConfig:
        return next(check for check in self.checks if check.name == name)

    def remediation(self, name: str) -> RemediationConfig:
        return next(item for item in self.remediations if item.name == name)

    def secrets(self) -> tuple[str, ...]:
        """Every secret value in the catalog, to scrub from messages."""
        values: list[str] = []
        for target in self.targets:
            values += [key.get_secret_value() for key in (target.api_key, target.admin_api_key)
                       if key is not None]
        for notifier in self.notifiers:
            values += [url.get_secret_value() for url in notifier.urls]
        return tuple(value for value in values if value)


