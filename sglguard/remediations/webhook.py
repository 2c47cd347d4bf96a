"""`webhook`: POST a JSON body to a URL, for every action sglguard has no kind for (a runbook
automation, a Kubernetes operator, a ticket). A 2xx answer is success.

The body is the configured `body` with sglguard's own fields laid over it: `target`,
`target_url`, `remediation`, `incident_id` (when an incident triggered the run) and `at`.
Header values may be secrets (`${VAR}`): plans and errors show header names only, and the URL's
query values and password are hidden, since hooks often carry a token there."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import Field, SecretStr

from sglguard.client import TargetError, post_json
from sglguard.config.types import Duration, HttpUrl
from sglguard.remediations.base import Remediation, RemediationConfig, RemediationError

HIDDEN = "***"


class WebhookConfig(RemediationConfig):
    """POST JSON to `url` with optional headers and extra body fields."""

    kind: Literal["webhook"]
    url: HttpUrl
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    body: dict[str, Any] = Field(default_factory=dict, description="extra fields of the body")
    timeout: Duration = timedelta(seconds=10)


def shown_url(url: str) -> str:
    """The URL without its password and query values."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password:
        netloc = netloc.replace(f":{parts.password}@", f":{HIDDEN}@")
    query = urlencode([(key, HIDDEN) for key, _ in parse_qsl(parts.query, keep_blank_values=True)],
                      safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class Webhook(Remediation[WebhookConfig]):
    """One POST with a timeout; anything but 2xx is a failure."""

    kind = "webhook"
    config_model = WebhookConfig

    def body(self) -> dict[str, Any]:
        context = self.context
        own: dict[str, Any] = {
            "target": context.target.name,
            "target_url": context.target.url,
            "remediation": self.config.name,
            "at": context.clock().isoformat(),
        }
        if context.incident_id is not None:
            own["incident_id"] = context.incident_id
        return {**self.config.body, **own}

    def plan(self) -> list[str]:
        names = ", ".join(sorted(self.config.headers)) or "none"
        fields = ", ".join(sorted(self.body()))
        seconds = self.config.timeout.total_seconds()
        return [f"POST {shown_url(self.config.url)} with JSON fields {fields} "
                f"(extra headers: {names}; timeout {seconds:g} s; 2xx is success)"]

    def execute(self) -> str:
        shown = shown_url(self.config.url)
        headers = {name: value.get_secret_value() for name, value in self.config.headers.items()}
        try:
            answer = post_json(self.config.url, self.body(), headers=headers, shown=shown,
                               timeout=self.config.timeout.total_seconds())
        except TargetError as exc:
            raise RemediationError(f"webhook failed: {self._scrub(str(exc))}") from None
        if not answer.ok:
            raise RemediationError(f"webhook {shown} answered {answer.status}: "
                                   f"{self._scrub(answer.message)[:200]}",
                                   permanent=answer.status in (400, 401, 403, 404, 405))
        return f"webhook {shown} answered {answer.status}"

    def _scrub(self, text: str) -> str:
        """requests names the URL's path and query in some errors; a receiver may echo them."""
        parts = urlsplit(self.config.url)
        for secret in (parts.query, parts.password or "",
                       *(value.get_secret_value() for value in self.config.headers.values())):
            if secret:
                text = text.replace(secret, HIDDEN)
        return text
