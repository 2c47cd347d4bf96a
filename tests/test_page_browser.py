"""The status page in a real headless browser (Debian's chromium driven by Selenium), after a
crash-restart-resolve cycle of the emulator under `sglguard run`.

Screenshots are kept in $SGLGUARD_TEST_ARTIFACTS (default: the test's tmp folder). Without
chromium and its driver the test is skipped; under CI=true it fails instead.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from sglguard.controls.process import read_pidfile

from conftest import PYTHON, emulator_command, free_port, pid_alive, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
HOSTILE_MODEL = '<script>document.title="pwned"</script>'
RED, GREEN = "rgba(208, 52, 44, 1)", "rgba(46, 155, 79, 1)"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None or DRIVER is None:
        message = "chromium and chromedriver are needed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("SGLGUARD_TEST_ARTIFACTS", tmp_path / "screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_catalog(directory: Path, port: int, web: int) -> Path:
    start = emulator_command(port, "--model-path", HOSTILE_MODEL)
    path = directory / "sglguard.yaml"
    path.write_text(f"""\
version: 1
store: {{url: sqlite:///page.db, flush_interval: 1s}}
http: {{listen: 127.0.0.1:{web}, refresh: 1m}}
targets:
  - name: local
    url: http://127.0.0.1:{port}
    control:
      kind: process
      start: {json.dumps(start)}
      pidfile: local.pid
      startup_timeout: 15s
checks:
  - {{name: liveness, kind: http, target: local, path: /health, interval: 0.3s, timeout: 1s,
     failure_threshold: 2, remediate: [restart], warning: "> 0.5"}}
  - {{name: kv-cache, kind: server_info, target: local, unit: GB, interval: 0.5s,
     timeout: 1s, path: internal_states.0.memory_usage.kvcache}}
remediations:
  - {{name: restart, kind: restart, backoff: {{initial: 0.2s, max: 1s}}}}
notifications: {{group_wait: 0.2s}}
notifiers:
  - {{name: ops, urls: ["json://127.0.0.1:9/alerts"]}}
""")
    return path


def api(web: int, path: str) -> Any:
    try:
        return requests.get(f"http://127.0.0.1:{web}/api/v1/{path}", timeout=2).json()
    except requests.RequestException:
        return None


def resolved(web: int) -> list[dict[str, Any]]:
    return [item for item in (api(web, "incidents") or {}).get("incidents", [])
            if item["status"] == "resolved" and item["check"] == "liveness"]


def test_page_after_a_crash_restart_resolve_cycle(tmp_path: Path, browser: Any,
                                                  artifacts: Path) -> None:
    from selenium.webdriver.common.by import By

    port, web = free_port(), free_port()
    catalog = write_catalog(tmp_path, port, web)
    log = (tmp_path / "service.log").open("wb")
    service = subprocess.Popen([PYTHON, "-m", "sglguard", "run", "--config", str(catalog)],
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        # No server at first: an incident opens, restart starts the emulator, it resolves.
        wait_for(lambda: resolved(web), 30)
        first = read_pidfile(tmp_path / "local.pid")
        assert first is not None and pid_alive(first)
        os.kill(first, signal.SIGKILL)  # the crash
        incident = wait_for(lambda: [item for item in resolved(web) if item["id"] > 1], 30)[0]
        incident = incident["id"]
        pid = read_pidfile(tmp_path / "local.pid")
        assert pid is not None and pid != first and pid_alive(pid)
        wait_for(lambda: len(api(web, "checks/kv-cache")["chart"]) >= 2, 15)

        browser.get(f"http://127.0.0.1:{web}/")
        browser.save_screenshot(str(artifacts / "status.png"))
        cells = browser.find_elements(By.CSS_SELECTOR, 'tr.check[data-name="liveness"] a.cell')
        statuses = [cell.get_attribute("data-status") for cell in cells]
        colours = [cell.value_of_css_property("background-color") for cell in cells]
        first_red = statuses.index("critical")
        assert "ok" in statuses[first_red:], statuses
        assert colours[first_red] == RED
        assert colours[statuses.index("ok", first_red)] == GREEN
        assert "ms" in (cells[first_red].get_attribute("title") or "")

        # The server's model name is a string from the server: shown as text, never run.
        server = browser.find_element(By.CSS_SELECTOR, 'tr.target[data-name="local"]').text
        assert HOSTILE_MODEL in server
        assert browser.title != "pwned"
        assert browser.execute_script("return document.scripts.length") == 0

        line = browser.find_element(By.CSS_SELECTOR,
                                    'tr.check[data-name="kv-cache"] svg.chart polyline')
        assert len((line.get_attribute("points") or "").split()) >= 2
        assert line.rect["width"] > 0

        browser.get(f"http://127.0.0.1:{web}/incidents/{incident}")
        browser.save_screenshot(str(artifacts / "incident.png"))
        entries = browser.find_elements(By.CSS_SELECTOR, "ol.timeline li")
        kinds = [entry.get_attribute("data-kind") for entry in entries]
        assert kinds[0] == "opened", kinds
        assert kinds.index("remediation_started") < kinds.index("remediation_run") < \
            kinds.index("remediation_succeeded") < kinds.index("resolved"), kinds
        times = [datetime.fromisoformat(item["at"]) for item in
                 api(web, f"incidents/{incident}")["timeline"]]
        assert times == sorted(times)
        assert "restart (restart): succeeded" in browser.find_element(
            By.CSS_SELECTOR, 'li[data-kind="remediation_run"]').text

        browser.get(f"http://127.0.0.1:{web}/checks/kv-cache")
        browser.save_screenshot(str(artifacts / "check.png"))
        assert browser.find_elements(By.CSS_SELECTOR, "svg.chart polyline")
    finally:
        service.send_signal(signal.SIGTERM)
        code = service.wait(timeout=15)
        log.close()
        pid = read_pidfile(tmp_path / "local.pid")
        if pid is not None and pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
    assert code == 0, (tmp_path / "service.log").read_text()[-3000:]
    assert {path.name for path in artifacts.iterdir()} >= {"status.png", "incident.png",
                                                            "check.png"}
