"""`abort_requests`: load shedding. POST /abort_request {"abort_all": true} drops every running
and waiting request (each counts in `sglang:num_aborted_requests_total`), e.g. when the queue
explodes and the requests in it would time out at their clients anyway."""

from __future__ import annotations

from typing import Literal

from sglguard.client import TargetError
from sglguard.remediations.base import Remediation, RemediationConfig, RemediationError


class AbortRequestsConfig(RemediationConfig):
    """Abort every running and waiting request of the target."""

    destructive = True

    kind: Literal["abort_requests"]


class AbortRequests(Remediation[AbortRequestsConfig]):
    """POST /abort_request {"abort_all": true} with the admin key when the target has one."""

    kind = "abort_requests"
    config_model = AbortRequestsConfig

    def plan(self) -> list[str]:
        return [f'POST {self.context.client.base_url}/abort_request {{"abort_all": true}} '
                "(drops every running and waiting request)"]

    def execute(self) -> str:
        try:
            answer = self.context.client.abort_all()
        except TargetError as exc:
            raise RemediationError(f"could not abort requests: {exc}") from None
        if answer.ok:
            return "aborted every running and waiting request"
        raise RemediationError(f"POST /abort_request answered {answer.status}: {answer.message}",
                               permanent=answer.status in (401, 403, 404))
