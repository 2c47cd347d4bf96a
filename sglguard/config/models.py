"""Pydantic models of the YAML catalog."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal, get_args

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

import sglguard.checks.registry
import sglguard.controls.registry
import sglguard.remediations.registry  # noqa: F401  (the registries bind the kinds)
from sglguard.checks.base import CheckConfig
from sglguard.config.base import ConfigModel, Name
from sglguard.config.types import Duration, DurationOrZero
from sglguard.controls.base import ControlConfig
from sglguard.remediations.base import RemediationConfig
from sglguard.routing import notifier_problems
from sglguard.silences import MaintenanceWindow
from sglguard.templates import check_template

Event = Literal[
    "incident_opened",
    "incident_repeated",
    "incident_escalated",
    "incident_resolved",
    "acknowledged",
    "remediation_started",
    "remediation_succeeded",
    "remediation_failed",
    "flapping_started",
    "flapping_stopped",
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
    metrics_url: str | None = Field(
        default=None, pattern=r"^https?://[^\s/]+(/\S*)?$",
        description="where metric and progress checks read the Prometheus page (a proxy, a "
                    "gateway's metrics port); no API key is sent there. Default: url/metrics")
    metrics_max_age: DurationOrZero = Field(
        default=timedelta(seconds=5),
        description="checks of this target starting within this long of a scrape share it "
                    "(one GET /metrics per tick); 0s: each check fetches its own")


class NotifierConfig(ConfigModel):
    """A set of Apprise URLs, the messages routed to them, and where to turn if they fail."""

    name: Name
    urls: tuple[SecretStr, ...] = Field(min_length=1)
    events: tuple[Event, ...] = Field(
        default=EVENTS, description="budget_spent also selects every incident_escalated")
    min_severity: Literal["info", "warning", "critical"] = Field(
        default="info", description="resolved/remediation/repeat messages carry the "
                                    "incident's severity here; unknown counts as warning")
    targets: tuple[Name, ...] = Field(default=(), description="only these targets; empty: all")
    checks: tuple[Name, ...] = Field(default=(), description="only these checks; empty: all")
    escalation: bool = Field(
        default=False, description="escalations go only to notifiers marked so (if any is)")
    fallback: Name | None = Field(
        default=None, description="notifier used when this one's delivery finally fails")
    repeat_interval: Duration | None = Field(
        default=None, description="default: notifications.repeat_interval")
    timeout: Duration | None = Field(default=None, description="default: notifications.timeout")
    title: str | None = Field(default=None, description="template; default: notifications.title")
    body: str | None = Field(default=None, description="template; default: notifications.body")

    @field_validator("title", "body")
    @classmethod
    def _template(cls, text: str | None) -> str | None:
        return None if text is None else check_template(text)

    @field_validator("events")
    @classmethod
    def _budget_spent_means_escalations(cls, events: tuple[Event, ...]) -> tuple[Event, ...]:
        if "budget_spent" in events and "incident_escalated" not in events:
            return (*events, "incident_escalated")
        return events

    @field_validator("urls")
    @classmethod
    def _urls_have_scheme(cls, urls: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        for index, url in enumerate(urls):
            if "://" not in url.get_secret_value():
                raise ValueError(f"urls[{index}] is not an Apprise URL (expected scheme://...)")
        return urls


class NotificationsConfig(ConfigModel):
    """Defaults for every notifier: grouping, repeats, time bound and templates."""

    group_wait: DurationOrZero = Field(
        default=timedelta(seconds=10),
        description="incidents of one target opening this close together are one message; 0: off")
    repeat_interval: Duration = Field(
        default=timedelta(hours=4), description="re-send open, unacknowledged incidents")
    timeout: Duration = Field(default=timedelta(seconds=15), description="bound on one delivery")
    title: str | None = Field(default=None, description="template, see sglguard.templates")
    body: str | None = Field(default=None, description="template, see sglguard.templates")

    @field_validator("title", "body")
    @classmethod
    def _template(cls, text: str | None) -> str | None:
        return None if text is None else check_template(text)


class Retention(ConfigModel):
    """How long records are kept: raw results briefly, incidents and their audit trail long."""

    results: Duration = timedelta(days=14)
    incidents: Duration = timedelta(days=180)


class StoreConfig(ConfigModel):
    """Where results, incidents and audit records are kept (an SQLAlchemy URL)."""

    url: str = "sqlite:///sglguard.db"
    retention: Retention = Retention()
    flush_interval: DurationOrZero = Field(
        default=timedelta(seconds=30), le=timedelta(minutes=5),
        description="results that change nothing (OK after OK) are written together this often; "
                    "anything that changes a check's state is written at once; 0s: every "
                    "result at once")


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
    notifications: NotificationsConfig = NotificationsConfig()
    maintenance: tuple[MaintenanceWindow, ...] = ()

    @model_validator(mode="wrap")
    @classmethod
    def _notifier_references(cls, data: Any, handler: Any) -> Any:
        """Fallbacks and notifier filters name what exists; reported with the other errors."""
        found: list[Any] = [
            {"type": PydanticCustomError("reference", message), "loc": loc, "input": None}
            for loc, message in notifier_problems(data)]
        try:
            catalog = handler(data)
        except ValidationError as exc:
            if not found:
                raise
            earlier: list[Any] = [
                {"type": PydanticCustomError(error["type"], error["msg"]), "loc": error["loc"],
                 "input": error["input"]} for error in exc.errors()]
            raise ValidationError.from_exception_data(exc.title, [*earlier, *found]) from None
        if found:
            raise ValidationError.from_exception_data(cls.__name__, found)
        return catalog

    def target(self, name: str) -> TargetConfig:
        return next(target for target in self.targets if target.name == name)

    def check(self, name: str) -> CheckConfig:
        return next(check for check in self.checks if check.name == name)

    def remediation(self, name: str) -> RemediationConfig:
        return next(item for item in self.remediations if item.name == name)

    def notifier(self, name: str) -> NotifierConfig:
        return next(item for item in self.notifiers if item.name == name)

    def secrets(self) -> tuple[str, ...]:
        """Every secret value in the catalog, to scrub from messages."""
        values: list[str] = []
        for target in self.targets:
            values += [key.get_secret_value() for key in (target.api_key, target.admin_api_key)
                       if key is not None]
        for notifier in self.notifiers:
            values += [url.get_secret_value() for url in notifier.urls]
        return tuple(value for value in values if value)


