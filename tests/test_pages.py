"""One scrape per target per tick: checks of a target that run together share one GET /metrics,
from the target itself or from its `metrics_url`."""

from __future__ import annotations

import contextlib
import re
import urllib.request
from collections.abc import Callable

from sglguard.checks.base import Status
from sglguard.checks.pages import SharedPages
from sglguard.checks.promql import Page
from sglguard.client import SGLangClient, TargetError
from sglguard.config.models import Catalog
from sglguard.emulator import Emulator
from sglguard.service import run_once
from sglguard.store import Store

from conftest import FIXTURES, FixtureServer, free_port

METRIC_CHECKS = """\
  - {name: queue, kind: metric, target: t, metric: "sglang:num_queue_reqs"}
  - {name: kv, kind: metric, target: t, metric: "sglang:token_usage", aggregate: max}
  - {name: ttft, kind: metric, target: t, metric: "sglang:time_to_first_token_seconds",
     quantile: 0.95, window: 5m}
  - {name: errors, kind: metric, target: t, metric: "sglang:http_responses_total",
     labels: {status_code: "5.."}, window: 5m, ratio_to: {metric: "sglang:http_responses_total"}}
  - {name: hang, kind: progress, target: t}
"""


def metrics_requests(url: str) -> float:
    """GET /metrics as the emulator counted them, this request excluded."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.search(r'http_requests_total\{endpoint="/metrics",method="GET"\} (\S+)', text)
    assert found is not None
    return float(found.group(1)) - 1


def test_checks_of_one_target_run_together_share_one_scrape(
        emulator: Emulator, make_catalog: Callable[[str], Catalog], store: Store) -> None:
    catalog = make_catalog(f'version: 1\ntargets: [{{name: t, url: "{emulator.url}"}}]\n'
                           "checks:\n" + METRIC_CHECKS)
    before = metrics_requests(emulator.url)
    results = run_once(catalog, store, [check.name for check in catalog.checks])
    assert len(results) == 5 and all(not result.skipped for result in results)
    assert metrics_requests(emulator.url) - before - 1 == 1  # five checks, one GET /metrics


def test_metrics_max_age_zero_gives_each_check_its_own_scrape(
        emulator: Emulator, make_catalog: Callable[[str], Catalog], store: Store) -> None:
    target = f'{{name: t, url: "{emulator.url}", metrics_max_age: 0s}}'
    catalog = make_catalog(f"version: 1\ntargets: [{target}]\nchecks:\n" + METRIC_CHECKS)
    before = metrics_requests(emulator.url)
    run_once(catalog, store, [check.name for check in catalog.checks])
    assert metrics_requests(emulator.url) - before - 1 == 5


def test_metrics_url_reads_the_page_elsewhere(make_catalog: Callable[[str], Catalog],
                                              store: Store) -> None:
    page = FixtureServer((FIXTURES / "sglang-0.5.23-dp8-page.txt").read_bytes())
    try:
        catalog = make_catalog(f"""\
            version: 1
            targets: [{{name: t, url: "http://127.0.0.1:{free_port()}",
                        metrics_url: "{page.url}/proxied/metrics"}}]
            checks:
              - {{name: queue, kind: metric, target: t, metric: "sglang:num_queue_reqs"}}
            """)
        [result] = run_once(catalog, store, ["queue"])
    finally:
        page.close()
    assert (result.status, result.value) == (Status.OK, 108.0)


def test_a_failed_scrape_is_shared_too() -> None:
    client = SGLangClient(f"http://127.0.0.1:{free_port()}", timeout=1.0)
    from sglguard.config.models import TargetConfig

    target = TargetConfig(name="t", url=client.base_url)
    pages = SharedPages()
    errors = []
    for _ in range(3):
        try:
            pages.page(client, target, 1.0)
        except TargetError as exc:
            errors.append(str(exc))
    assert len(errors) == 3 and pages.fetches(client) == 1
    assert "refused" in errors[0]
    now = [0.0]
    later = SharedPages(clock=lambda: now[0])
    for step in (0.0, 0.5, 1.5):  # a failure is shared for a second, a page for max_age
        now[0] = step
        with contextlib.suppress(TargetError):
            later.page(client, target, 1.0)
    assert later.fetches(client) == 2


def test_a_page_parses_each_family_once_and_only_those_asked_for() -> None:
    page = Page((FIXTURES / "sglang-0.5.23-dp8-page.txt").read_text())
    queue = page.scrape(["sglang:num_queue_reqs"])
    assert set(queue.samples) == {"sglang:num_queue_reqs"}
    both = page.scrape(["sglang:num_requests_total", "sglang:time_to_first_token_seconds_bucket"])
    assert {"sglang:num_requests_total", "sglang:time_to_first_token_seconds_bucket",
            "sglang:time_to_first_token_seconds_count"} <= set(both.samples)
    assert len(both.samples["sglang:num_requests_total"]) == 2
