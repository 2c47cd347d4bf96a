"""Pydantic models of the YAML catalog."""

from __future__ import annotations

from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
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
from sglguard.config.base import ConfigModel, Name, RelativePath
from sglguard.config.maintenance import MaintenanceWindow
from sglguard.config.notifier_urls import apprise_problem
from sglguard.config.types import Duration, DurationOrZero, HttpUrl
from sglguard.controls.base import ControlConfig
from sglguard.notify.routing import notifier_problems
from sglguard.notify.templates import check_template
from sglguard.remediations.base import RemediationConfig

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


def _usable_by_apprise(url: SecretStr) -> SecretStr:
    problem = apprise_problem(url.get_secret_value())
    if problem is not None:
        raise ValueError(problem)
    return url


AppriseUrl = Annotated[SecretStr, AfterValidator(_usable_by_apprise)]


class TargetConfig(ConfigModel):
    """One SGLang server (or gateway) that sglguard watches."""

    name: Name
    url: HttpUrl
    role: Literal["server", "gateway"] = Field(
        default="server",
        description="gateway: an SGLang model gateway (smg / sglang-router) in front of "
                    "servers, not a server: its http checks ask /readiness by default, its "
                    "metrics are read from metrics_url, and its messages speak of a gateway")
    api_key: SecretStr | None = None
    admin_api_key: SecretStr | None = None
    timeout: Duration = timedelta(seconds=10)
    control: ControlConfig | None = None
    metrics_url: HttpUrl | None = Field(
        default=None,
        description="where metric and progress checks read the Prometheus page (a proxy, a "
                    "gateway's metrics port); no API key is sent there. Default: url/metrics")
    metrics_max_age: DurationOrZero = Field(
        default=timedelta(seconds=5),
        description="checks of this target starting within this long of a scrape share it "
                    "(one GET /metrics per tick); 0s: each check fetches its own")
    crash_dump_folder: RelativePath | None = Field(
        default=None, description="the server's --crash-dump-folder: its newest dump goes into "
                                  "the incident's diagnostics")


class NotifierConfig(ConfigModel):
    """A set of Apprise URLs, the messages routed to them, and where to turn if they fail."""

    name: Name
    urls: tuple[AppriseUrl, ...] = Field(min_length=1)
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


class NotificationsConfig(ConfigModel):
    """Defaults for every notifier: grouping, repeats, time bound and templates."""

    group_wait: DurationOrZero = Field(
        default=timedelta(seconds=10),
        description="incidents of one target opening this close together are one message; 0: off")
    repeat_interval: Duration = Field(
        default=timedelta(hours=4), description="re-send open, unacknowledged incidents")
    timeout: Duration = Field(default=timedelta(seconds=15), description="bound on one delivery")
    expire: Duration = Field(
        default=timedelta(hours=1),
        description="a message not delivered (after retries and the fallback) is given up "
                    "this long after it was written, and recorded as expired")
    title: str | None = Field(default=None, description="template, see sglguard.notify.templates")
    body: str | None = Field(default=None, description="template, see sglguard.notify.templates")

    @field_validator("title", "body")
    @classmethod
    def _template(cls, text: str | None) -> str | None:
        return None if text is None else check_template(text)


class Retention(ConfigModel):
    """How long records are kept: raw results briefly, incidents and their audit trail long."""

    results: Duration = timedelta(days=14)
    incidents: Duration = timedelta(days=180)


class BacklogConfig(ConfigModel):
    """Where results wait while the store cannot be reached."""

    memory: int = Field(default=10_000, ge=1, description="results held in memory; past "
                        "this, everything held goes to the spill file")
    spill: RelativePath = Field(default=Path("sglguard-backlog.jsonl"), validate_default=True,
                                description="the spill file (relative: beside the catalog)")
    spill_max_mb: int = Field(default=64, ge=1, le=4096,
                              description="the spill file's bound, in MiB")


class StoreConfig(ConfigModel):
    """Where results, incidents and audit records are kept (an SQLAlchemy URL)."""

    url: str = "sqlite:///sglguard.db"
    retention: Retention = Retention()
    flush_interval: DurationOrZero = Field(
        default=timedelta(seconds=30), le=timedelta(minutes=5),
        description="results that change nothing (OK after OK) are written together this often; "
                    "anything that changes a check's state is written at once; 0s: every "
                    "result at once")
    backlog: BacklogConfig = Field(default_factory=dict, validate_default=True)


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def split_listen(listen: str) -> tuple[str, int]:
    """`host:port` (`[::1]:9466` for IPv6) as a host and a port; raises ValueError."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"invalid listen address {listen!r}: expected host:port, "
                         "e.g. 127.0.0.1:9466")
    return host.removeprefix("[").removesuffix("]"), int(port)


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS or host.startswith("127.")


class HttpConfig(ConfigModel):
    """sglguard's own listener: the status page, the read-only API, /metrics and /healthz."""

    listen: str = Field(
        default="127.0.0.1:9466",
        description="host:port; an address beyond loopback requires `token`")
    token: SecretStr | None = Field(
        default=None, description="required as `Authorization: Bearer TOKEN` (or as the "
                                  "password of basic auth); use ${VAR}")
    external_url: str | None = Field(
        default=None, pattern=r"^https?://\S+$",
        description="how people reach the page (e.g. https://gpu-07.example.com/sglguard): "
                    "notifications link to the check and incident pages under it")
    refresh: Duration = Field(default=timedelta(seconds=10),
                              description="how often the status page reloads itself")

    @field_validator("listen")
    @classmethod
    def _host_port(cls, listen: str) -> str:
        split_listen(listen)
        return listen

    @model_validator(mode="after")
    def _token_off_loopback(self) -> HttpConfig:
        host, _ = split_listen(self.listen)
        if not is_loopback(host) and (self.token is None or not self.token.get_secret_value()):
            raise ValueError(f"listen {self.listen} is beyond loopback: set `token` "
                             "(e.g. token: ${SGLGUARD_HTTP_TOKEN}) so the page and API are "
                             "not open to everyone")
        return self


class RequestDumpsConfig(ConfigModel):
    """While an incident of a target is open, SGLang keeps the requests it answers: request
    dumps are switched on through `/configure_logging` when the incident opens and back when
    the last open incident of the target resolves."""

    folder: str = Field(min_length=1, description="where the server writes the dumps (a path on "
                                                  "the server's host: dump_requests_folder)")
    threshold: int = Field(default=100, ge=1, le=100_000,
                           description="requests per dump file (dump_requests_threshold): the "
                                       "server writes a file each time it holds this many")
    log_requests: bool = Field(default=False,
                               description="also log each request in the server's log")
    targets: tuple[Name, ...] = Field(
        default=(), description="only these targets (default: every target)")

    def covers(self, target: str) -> bool:
        return not self.targets or target in self.targets


class DiagnosticsConfig(ConfigModel):
    """The evidence captured when an incident opens and before a destructive remediation."""

    enabled: bool = True
    timeout: Duration = Field(default=timedelta(seconds=5),
                              description="bound on one capture; a remediation waits no longer")
    max_bytes: int = Field(default=4_000_000, ge=20_000, le=100_000_000,
                           description="bound on one bundle, uncompressed")
    log_lines: int = Field(default=200, ge=0, le=100_000,
                           description="last lines of the server's log")
    copy_crash_dump_below: int = Field(default=1_000_000, ge=0,
                                       description="a crash dump this small is copied whole")
    stacks: Literal["hang", "always", "never"] = Field(
        default="hang", description="Python stacks of the server's processes (py-spy)")
    request_dumps: RequestDumpsConfig | None = Field(
        default=None, description="switch the server's request dumps on while an incident is "
                                  "open (SGLang's /configure_logging); off unless given")


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
    http: HttpConfig | None = Field(
        default=None, description="serve the status page, API and /metrics while running")
    diagnostics: DiagnosticsConfig = DiagnosticsConfig()

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
        return self.targets_by_name[name]

    def check(self, name: str) -> CheckConfig:
        return self.checks_by_name[name]

    # Every check run looks its check and target up: by name, not by a scan of the catalog.
    @cached_property
    def targets_by_name(self) -> dict[str, TargetConfig]:
        return {target.name: target for target in self.targets}

    @cached_property
    def checks_by_name(self) -> dict[str, CheckConfig]:
        return {check.name: check for check in self.checks}

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
        if self.http is not None and self.http.token is not None:
            values.append(self.http.token.get_secret_value())
        return tuple(value for value in values if value)


