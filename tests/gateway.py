"""The real SGLang model gateway (`smg`, pinned in the test extras) on free loopback ports.

Tests judge a drain by what the gateway itself says (`GET /workers`) and by requests sent
through it. If the gateway cannot be started, the test fails with its log: it is never skipped.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import requests

from conftest import free_port, wait_for

PYTHON = sys.executable


class SmgGateway:
    """One `smg launch` child process in front of the given workers."""

    def __init__(self, log: Path, *, workers: Sequence[str] = (),
                 prefill: Sequence[tuple[str, int]] = (), decode: Sequence[str] = (),
                 extra: Sequence[str] = (), port: int | None = None) -> None:
        self.port, self.metrics_port = port or free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}"
        self.log = log
        command = [PYTHON, "-m", "smg", "launch", "--host", "127.0.0.1",
                   "--port", str(self.port), "--prometheus-host", "127.0.0.1",
                   "--prometheus-port", str(self.metrics_port), "--policy", "round_robin",
                   "--health-check-interval-secs", "1", "--log-level", "warn"]
        if prefill or decode:
            command.append("--pd-disaggregation")
            for url, bootstrap in prefill:
                command += ["--prefill", url, str(bootstrap)]
            for url in decode:
                command += ["--decode", url]
        elif workers:
            command += ["--worker-urls", *workers]
        command += list(extra)
        self.expected = len(workers) + len(prefill) + len(decode)
        self._log_file = log.open("wb")
        self.process = subprocess.Popen(command, stdout=self._log_file,
                                        stderr=subprocess.STDOUT)
        self.session = requests.Session()
        self.session.trust_env = False

    def wait_ready(self, headers: dict[str, str] | None = None, timeout: float = 20.0) -> None:
        """Until the gateway answers and lists every worker it was started with as ready."""
        def ready() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"smg exited with status {self.process.returncode}:\n"
                            f"{self.log.read_text(errors='replace')[-3000:]}")
            try:
                items = self.workers(headers)
            except (requests.RequestException, ValueError):
                return False
            return sum(1 for item in items if item.get("status") == "ready") >= self.expected
        try:
            wait_for(ready, timeout=timeout, every=0.1)
        except AssertionError:
            pytest.fail(f"smg did not list its workers as ready within {timeout} s:\n"
                        f"{self.log.read_text(errors='replace')[-3000:]}")

    def workers(self, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
        response = self.session.get(f"{self.url}/workers", headers=headers, timeout=5)
        response.raise_for_status()
        items: list[dict[str, Any]] = response.json()["workers"]
        return items

    def worker(self, url: str) -> dict[str, Any] | None:
        """The gateway's entry for a worker URL (as the gateway wrote it)."""
        return next((item for item in self.workers() if item["url"] == url), None)

    def wait_worker(self, url: str, *, present: bool = True, status: str = "ready",
                    timeout: float = 15.0) -> dict[str, Any] | None:
        def check() -> Any:
            item = self.worker(url)
            if not present:
                return item is None
            return item if item is not None and item.get("status") == status else None
        found = wait_for(check, timeout=timeout, every=0.1)
        return found if present else None

    def generate(self, text: str = "hello", *, stream: bool = False,
                 timeout: float = 30.0) -> requests.Response:
        body = {"text": text, "stream": stream, "sampling_params": {"max_new_tokens": 4}}
        return self.session.post(f"{self.url}/generate", json=body, timeout=timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()  # on SIGTERM it waits out a grace period of ~5 s
            self.process.wait()
        self._log_file.close()
        self.session.close()

