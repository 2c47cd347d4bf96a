"""The status page: Jinja2 templates, autoescaped, rendered on the server (no script, no build)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from sglguard.notify.notice import host_name
from sglguard.web.chart import CHART_HOURS, build_chart
from sglguard.web.view import View

if TYPE_CHECKING:
    from sglguard.telemetry import Pulse, Runtime


def _clock(iso: str | None) -> str:
    return iso[:19].replace("T", " ") if iso else "-"


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never run"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{max(seconds, 0):.0f} s ago"


def environment() -> Environment:
    env = Environment(loader=PackageLoader("sglguard.web", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["clock"] = _clock
    env.filters["ago"] = _ago
    return env


class Pages:
    """Renders the status page, a check's page and an incident's page from a View."""

    def __init__(self, view: View, *, refresh_s: int = 10,
                 runtime: Runtime | None = None) -> None:
        self.view = view
        self.runtime = runtime
        self.refresh_s = refresh_s
        self.env = environment()
        self.host = host_name()

    def _render(self, name: str, root: str, **values: Any) -> str:
        now = self.view.clock().replace(microsecond=0, tzinfo=None)
        return self.env.get_template(name).render(
            root=root, host=self.host, now=datetime.isoformat(now, sep=" "),
            refresh=self.refresh_s, hours=CHART_HOURS, **values)

    def index(self) -> str:
        checks = [_drawn(item) for item in self.view.checks(chart=True)]
        incidents = self.view.incidents(limit=20)
        return self._render(
            "index.html", "", targets=self.view.targets(), checks=checks,
            agents=self.view.agents(), by_agent=self.view.by_agent(), schedule=self._pulse(),
            open_incidents=[item for item in incidents if item["status"] == "open"],
            recent_incidents=[item for item in incidents if item["status"] != "open"])

    def _pulse(self) -> Pulse | None:
        """How the schedule was kept lately, when the service runs beside the page."""
        if self.runtime is None:
            return None
        from sglguard.web.metrics import LAG_SPAN

        return self.runtime.pulse(LAG_SPAN.total_seconds())

    def check(self, name: str) -> str | None:
        item = self.view.check(name)
        if item is None:
            return None
        return self._render("check.html", "../", c=_drawn(item, width=720, height=120))

    def incident(self, incident_id: int) -> str | None:
        item = self.view.incident(incident_id)
        return None if item is None else self._render("incident.html", "../", i=item)


def _drawn(item: dict[str, Any], width: int = 240, height: int = 48) -> dict[str, Any]:
    item["drawn"] = build_chart(item.get("chart", []), warning=item["warning"],
                                critical=item["critical"], width=width, height=height)
    return item
