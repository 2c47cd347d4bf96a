"""The resource check kinds: gpu, host, process and log.

`gpu` talks to NVML through `pynvml`; NVML is the one boundary faked here (tests/fake_pynvml.py,
installed as `sys.modules["pynvml"]` with monkeypatch), apart from one test against the real
pynvml of this machine. `host` and `process` read the real machine through psutil, with real
child processes; `log` reads real files. Time windows use the FakeClock and a real SQLite store.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest
from fake_pynvml import FakeGpu, FakeNVML
from pydantic import ValidationError

from sglguard.checks.base import Check, CheckConfig, CheckContext, Status
from sglguard.checks.host import cpu_reading
from sglguard.checks.registry import CHECKS
from sglguard.client import SGLangClient
from sglguard.config.loader import ConfigError
from sglguard.config.models import Catalog, TargetConfig
from sglguard.store import Store
from sglguard.store.samples import StoreSamples

from conftest import PYTHON, FakeClock, wait_for

UNUSED_URL = "http://127.0.0.1:9"  # these kinds never talk to the server
MakeCheck = Callable[..., Check[Any]]


@pytest.fixture
def make_check() -> Iterator[MakeCheck]:
    """Validate a check config as the catalog would and build the check; no run yet."""
    clients: list[SGLangClient] = []

    def make(config: dict[str, Any], *, target: TargetConfig | None = None,
             store: Store | None = None, clock: FakeClock | None = None) -> Check[Any]:
        model = CheckConfig.model_validate({"name": "probe", "target": "local", **config})
        client = SGLangClient(UNUSED_URL)
        clients.append(client)
        context = CheckContext(
            target or TargetConfig(name="local", url=UNUSED_URL), client,
            samples=StoreSamples(store) if store is not None else None,
            **({"clock": clock} if clock is not None else {}))
        return CHECKS[model.kind](model, context)

    yield make
    for client in clients:
        client.close()


# --- gpu ------------------------------------------------------------------------------------


def two_gpus() -> FakeNVML:
    return FakeNVML(
        FakeGpu(used_mib=61234, total_mib=81559, utilization=87, temperature=71,
                power_mw=312500, ecc=0, processes=[(4242, 60000), (4243, 1200)]),
        FakeGpu(used_mib=60010, total_mib=81559, utilization=45, temperature=65,
                power_mw=250000, ecc=2),
    )


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> FakeNVML:
    fake = two_gpus()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


@pytest.mark.parametrize(
    ("metric", "value", "unit", "shown"),
    [
        ("memory_used_mib", 61234.0, "MiB", "GPU0 61234 MiB, GPU1 60010 MiB; max 61234 MiB"),
        ("memory_used_ratio", 61234 / 81559, "ratio", "GPU0 0.751 (61234 of 81559 MiB)"),
        ("utilization_percent", 87.0, "%", "GPU0 87%, GPU1 45%; max 87%"),
        ("temperature_c", 71.0, "C", "GPU0 71 C, GPU1 65 C; max 71 C"),
        ("power_w", 312.5, "W", "GPU0 312.5 W, GPU1 250.0 W; max 312.5 W"),
        ("ecc_uncorrected", 2.0, "errors", "GPU0 0 errors, GPU1 2 errors; max 2 errors"),
    ],
)
def test_gpu_check_reads_each_metric_per_device_in_its_unit(
    nvml: FakeNVML, make_check: MakeCheck, metric: str, value: float, unit: str, shown: str
) -> None:
    result = make_check({"kind": "gpu", "metric": metric}).execute()

    assert (result.status, result.unit) == (Status.OK, unit)
    assert result.value == pytest.approx(value)
    assert shown in result.message


@pytest.mark.parametrize(("how", "expected"),
                         [("max", 61234.0), ("min", 60010.0), ("sum", 121244.0),
                          ("avg", 60622.0)])
def test_gpu_check_aggregates_across_devices(
    nvml: FakeNVML, make_check: MakeCheck, how: str, expected: float
) -> None:
    result = make_check({"kind": "gpu", "metric": "memory_used_mib", "aggregate": how}).execute()

    assert result.value == pytest.approx(expected)
    assert f"; {how} {expected:.0f} MiB" in result.message


def test_gpu_check_reads_only_the_listed_devices(nvml: FakeNVML, make_check: MakeCheck) -> None:
    result = make_check({"kind": "gpu", "metric": "temperature_c", "devices": [1]}).execute()

    assert (result.status, result.value) == (Status.OK, 65.0)
    assert result.message == "GPU1 65 C"


def test_gpu_check_device_out_of_range_is_unknown_naming_the_present_ones(
    nvml: FakeNVML, make_check: MakeCheck
) -> None:
    result = make_check({"kind": "gpu", "metric": "power_w", "devices": [0, 5]}).execute()

    assert (result.status, result.value, result.unit) == (Status.UNKNOWN, None, "W")
    assert result.message == "GPU 5 not present: this host has 2 GPUs (GPU0, GPU1)"


def test_gpu_check_threshold_breach_is_critical(nvml: FakeNVML, make_check: MakeCheck) -> None:
    result = make_check({"kind": "gpu", "metric": "temperature_c",
                         "warning": "> 60", "critical": "> 70"}).execute()

    assert (result.status, result.value) == (Status.CRITICAL, 71.0)
    assert "71 C > 70 (critical)" in result.message


def test_gpu_check_ecc_not_supported_is_unknown(nvml: FakeNVML, make_check: MakeCheck) -> None:
    nvml.gpus[1].ecc = None

    result = make_check({"kind": "gpu", "metric": "ecc_uncorrected"}).execute()

    assert (result.status, result.value) == (Status.UNKNOWN, None)
    assert result.message == "ECC not supported on GPU 1"


def test_gpu_check_memory_names_the_pids_that_hold_it(
    nvml: FakeNVML, make_check: MakeCheck
) -> None:
    result = make_check({"kind": "gpu", "metric": "memory_used_mib"}).execute()

    assert result.message.endswith("memory held by: GPU0 pid 4242 60000 MiB, pid 4243 1200 MiB")


def test_gpu_check_memory_growth_over_a_window_fires_past_300_mib(
    nvml: FakeNVML, make_check: MakeCheck, store: Store, clock: FakeClock
) -> None:
    check = make_check({"kind": "gpu", "metric": "memory_used_mib", "change_over": "3m",
                        "critical": "> 300"}, store=store, clock=clock)

    first = check.execute()
    clock.advance(60)
    nvml.gpus[0].used_mib += 100
    grown_100 = check.execute()
    clock.advance(60)
    nvml.gpus[0].used_mib += 250
    grown_350 = check.execute()

    assert (first.status, first.value, first.counts) == (Status.OK, None, False)
    assert "collecting samples for the 3m window" in first.message
    assert (grown_100.status, grown_100.value) == (Status.OK, pytest.approx(100.0))
    assert (grown_350.status, grown_350.value) == (Status.CRITICAL, pytest.approx(350.0))
    assert "memory_used_mib max changed by +350 MiB in 2m" in grown_350.message
    assert "350 MiB > 300 (critical)" in grown_350.message


def test_gpu_check_window_forgets_growth_older_than_it(
    nvml: FakeNVML, make_check: MakeCheck, store: Store, clock: FakeClock
) -> None:
    check = make_check({"kind": "gpu", "metric": "memory_used_mib", "change_over": "3m",
                        "critical": "> 300"}, store=store, clock=clock)
    check.execute()
    nvml.gpus[0].used_mib += 400
    for _ in range(4):  # the 400 MiB step falls out of the window after 3 minutes
        clock.advance(60)
        latest = check.execute()

    assert (latest.status, latest.value) == (Status.OK, 0.0)


def test_gpu_check_nvml_init_failure_is_unknown_and_can_count_as_critical(
    monkeypatch: pytest.MonkeyPatch, make_check: MakeCheck
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNVML(FakeGpu(), init_error=18))

    default = make_check({"kind": "gpu", "metric": "utilization_percent"}).execute()
    strict = make_check({"kind": "gpu", "metric": "utilization_percent",
                         "on_unavailable": "critical"}).execute()

    assert (default.status, default.value, default.unit) == (Status.UNKNOWN, None, "%")
    assert default.message == "NVML unavailable: Driver/library version mismatch"
    assert strict.status is Status.CRITICAL


def test_gpu_check_on_a_host_without_gpu_can_be_no_data(
    monkeypatch: pytest.MonkeyPatch, make_check: MakeCheck
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNVML(FakeGpu(), init_error=9))

    result = make_check({"kind": "gpu", "metric": "temperature_c",
                         "on_unavailable": "no_data"}).execute()

    assert (result.status, result.value, result.counts) == (Status.OK, None, False)
    assert result.message.startswith("no data: NVML unavailable")


def test_gpu_check_host_without_gpus_is_unavailable(
    monkeypatch: pytest.MonkeyPatch, make_check: MakeCheck
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNVML())

    result = make_check({"kind": "gpu", "metric": "memory_used_mib"}).execute()

    assert (result.status, result.message) == (Status.UNKNOWN, "NVML unavailable: no GPUs found")


def test_gpu_check_initialises_nvml_once_per_process(
    nvml: FakeNVML, make_check: MakeCheck
) -> None:
    for metric in ("memory_used_mib", "power_w", "temperature_c"):
        make_check({"kind": "gpu", "metric": metric}).execute()

    assert nvml.init_calls == 1


def test_gpu_check_retries_nvml_init_after_a_failure(
    monkeypatch: pytest.MonkeyPatch, make_check: MakeCheck
) -> None:
    fake = FakeNVML(FakeGpu(temperature=50), init_error=9)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    check = make_check({"kind": "gpu", "metric": "temperature_c"})

    before = check.execute()
    fake.init_error = None  # the driver was loaded
    after = check.execute()

    assert (before.status, before.message) == (Status.UNKNOWN,
                                               "NVML unavailable: Driver Not Loaded")
    assert (after.status, after.value) == (Status.OK, 50.0)


def test_gpu_check_hung_nvml_call_is_unknown_within_the_timeout(
    nvml: FakeNVML, make_check: MakeCheck
) -> None:
    check = make_check({"kind": "gpu", "metric": "memory_used_mib", "timeout": 0.2})
    nvml.hang.set()
    try:
        hung = check.execute()
        still = check.execute()  # does not start a second call into the stuck driver
    finally:
        nvml.release.set()

    assert (hung.status, hung.value) == (Status.UNKNOWN, None)
    assert hung.message == "NVML did not answer within 0.2 s: the GPU driver may be hung"
    assert 200 <= hung.duration_ms < 1000
    assert still.status is Status.UNKNOWN
    assert "has not returned" in still.message
    assert still.duration_ms < 100


def test_gpu_check_with_the_real_pynvml_and_no_gpu_is_unknown_not_a_crash(
    make_check: MakeCheck
) -> None:
    import pynvml

    assert not isinstance(pynvml, FakeNVML)
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pytest.skip("this machine has a working NVML")

    result = make_check({"kind": "gpu", "metric": "memory_used_mib"}).execute()

    assert (result.status, result.value, result.unit) == (Status.UNKNOWN, None, "MiB")
    assert result.message.startswith("NVML unavailable: ")
    assert "check failed" not in result.message


@pytest.mark.parametrize(
    ("extra", "error"),
    [({"devices": [0, 0]}, "a GPU index is listed twice: [0, 0]"),
     ({"devices": []}, "list at least one GPU index, or write `all`"),
     ({"metric": "fan_speed"}, "metric"),
     ({"aggregate": "median"}, "aggregate")],
)
def test_gpu_check_config_errors(extra: dict[str, Any], error: str) -> None:
    with pytest.raises(ValidationError, match=error.replace("[", r"\[").replace("]", r"\]")):
        CheckConfig.model_validate({"name": "g", "target": "local", "kind": "gpu",
                                    "metric": "power_w", **extra})


# --- host -----------------------------------------------------------------------------------


def test_host_check_memory_percent_is_the_machines(make_check: MakeCheck) -> None:
    result = make_check({"kind": "host", "metric": "memory_percent"}).execute()

    assert (result.status, result.unit) == (Status.OK, "%")
    assert result.value == pytest.approx(psutil.virtual_memory().percent, abs=5)
    assert "GiB available" in result.message


def test_host_check_disk_percent_measures_the_given_path(
    make_check: MakeCheck, tmp_path: Path
) -> None:
    result = make_check({"kind": "host", "metric": "disk_percent",
                         "path": str(tmp_path), "critical": "> 100"}).execute()

    assert (result.status, result.unit) == (Status.OK, "%")
    assert result.value == pytest.approx(psutil.disk_usage(str(tmp_path)).percent, abs=1)
    assert f"disk at {tmp_path}" in result.message


def test_host_check_disk_path_that_does_not_exist_is_unknown(
    make_check: MakeCheck, tmp_path: Path
) -> None:
    result = make_check({"kind": "host", "metric": "disk_percent",
                         "path": str(tmp_path / "gone")}).execute()

    assert (result.status, result.value) == (Status.UNKNOWN, None)
    assert result.message == f"disk path {tmp_path / 'gone'} not found"


def test_host_check_load1_is_the_one_minute_load(make_check: MakeCheck) -> None:
    result = make_check({"kind": "host", "metric": "load1"}).execute()

    assert result.unit == "load"
    assert result.value == pytest.approx(os.getloadavg()[0], abs=0.5)
    assert f"on {os.cpu_count()} CPUs" in result.message


def test_host_check_cpu_first_run_samples_a_tenth_of_a_second(make_check: MakeCheck) -> None:
    result = make_check({"kind": "host", "metric": "cpu_percent"}).execute()

    assert (result.status, result.unit) == (Status.OK, "%")
    assert result.value is not None and 0.0 <= result.value <= 100.0
    assert 100 <= result.duration_ms < 500
    assert "over 0.1" in result.message and "(first reading)" in result.message


def test_host_check_cpu_uses_the_previous_run_from_the_store_without_waiting(
    make_check: MakeCheck, store: Store, clock: FakeClock
) -> None:
    # The previous run, as another `sglguard check` invocation stored it: 30 of 100 CPU
    # seconds busy since then. The few milliseconds of real CPU time until the run are noise.
    now = cpu_reading()
    StoreSamples(store).save("probe", clock(), {
        **now, "wall": now["wall"] - 20, "busy": now["busy"] - 30, "total": now["total"] - 100,
    }, keep=timedelta(hours=1))

    result = make_check({"kind": "host", "metric": "cpu_percent"}, store=store,
                        clock=clock).execute()

    assert result.value == pytest.approx(30.0, abs=1.0)
    assert "since the previous run" in result.message
    assert result.duration_ms < 90  # no 0.1 s sample taken


def test_host_check_cpu_ignores_a_stale_previous_reading(
    make_check: MakeCheck, store: Store, clock: FakeClock
) -> None:
    now = cpu_reading()
    StoreSamples(store).save("probe", clock(), {**now, "wall": now["wall"] - 3600,
                                                "busy": 0.0, "total": 1.0},
                             keep=timedelta(hours=1))

    result = make_check({"kind": "host", "metric": "cpu_percent", "interval": "30s"},
                        store=store, clock=clock).execute()

    assert "(first reading)" in result.message
    assert result.value is not None and 0.0 <= result.value <= 100.0


def test_host_check_cpu_second_run_covers_the_time_since_the_first(
    make_check: MakeCheck, store: Store, clock: FakeClock
) -> None:
    make_check({"kind": "host", "metric": "cpu_percent"}, store=store, clock=clock).execute()
    clock.advance(30)
    # A new check object with a new sample book on the same store: a separate invocation.
    second = make_check({"kind": "host", "metric": "cpu_percent"}, store=store,
                        clock=clock).execute()

    assert "since the previous run" in second.message
    assert second.value is not None and 0.0 <= second.value <= 100.0


# --- process --------------------------------------------------------------------------------

SLEEP = "import time; time.sleep(30)"
SPIN = "while True: pass"
WITH_CHILD = ("import subprocess, sys, time; "
              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); "
              "time.sleep(30)")


def _shows(pid: int, marker: str) -> bool:
    try:
        return marker in psutil.Process(pid).cmdline()
    except psutil.Error:
        return False


class Children:
    """Real child processes started by a test, each with a unique marker in its command line;
    killed (whole session) at the end."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, code: str = SLEEP, *before: str) -> tuple[subprocess.Popen[bytes], str]:
        """A child whose command line ends with its marker, after the arguments `before`."""
        marker = f"sglguard-test-{uuid.uuid4().hex}"
        child = subprocess.Popen([PYTHON, "-c", code, *before, marker], start_new_session=True,
                                 stdin=subprocess.DEVNULL)
        self.started.append(child)
        # Popen returns once exec began; the kernel shows the new command line a moment later
        wait_for(lambda: _shows(child.pid, marker), 5, 0.01)
        return child, marker

    def kill(self, child: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)

    def close(self) -> None:
        for child in self.started:
            self.kill(child)
            child.wait(5)


@pytest.fixture
def children() -> Iterator[Children]:
    started = Children()
    yield started
    started.close()


def controlled(pidfile: Path) -> TargetConfig:
    """A target whose process control names `pidfile`."""
    return TargetConfig.model_validate({
        "name": "local", "url": UNUSED_URL,
        "control": {"kind": "process", "start": [PYTHON, "-c", SLEEP], "pidfile": str(pidfile)},
    })


def pidfile_for(tmp_path: Path, pid: int, name: str = "server.pid") -> Path:
    path = tmp_path / name
    path.write_text(f"{pid}\n")
    return path


def test_process_check_alive_from_the_targets_pidfile(
    children: Children, make_check: MakeCheck, tmp_path: Path
) -> None:
    child, marker = children.start()
    pidfile = pidfile_for(tmp_path, child.pid)

    result = make_check({"kind": "process"}, target=controlled(pidfile)).execute()

    assert (result.status, result.value, result.unit) == (Status.OK, 1.0, "up")
    assert marker in result.message
    assert f"pid {child.pid} from {pidfile}" in result.message


def test_process_check_shows_the_end_of_a_long_command_line(
    children: Children, make_check: MakeCheck, tmp_path: Path
) -> None:
    """A deep virtual environment and a long SGLang command line: the middle is cut, so the
    arguments at the end (which tell servers apart) stay in the message."""
    child, marker = children.start(SLEEP, "--model-path", "/" + "deep-folder/" * 60)
    pidfile = pidfile_for(tmp_path, child.pid)

    result = make_check({"kind": "process"}, target=controlled(pidfile)).execute()

    assert (result.status, result.value) == (Status.OK, 1.0)
    assert result.message.startswith(f"alive: {PYTHON[:100]}")
    assert marker in result.message
    assert " ... " in result.message
    assert len(result.message) < 400 + len(f"alive: ; pid {child.pid} from {pidfile}") + 10


def test_process_check_pid_that_is_not_running_is_critical(
    children: Children, make_check: MakeCheck, tmp_path: Path
) -> None:
    child, _ = children.start()
    children.kill(child)
    child.wait(5)
    pidfile = pidfile_for(tmp_path, child.pid)

    result = make_check({"kind": "process"}, target=controlled(pidfile)).execute()

    assert (result.status, result.value) == (Status.CRITICAL, 0.0)
    assert result.message == (f"no process: pidfile {pidfile} names pid {child.pid}, "
                              "which is not running")


def test_process_check_zombie_is_not_alive(
    children: Children, make_check: MakeCheck, tmp_path: Path
) -> None:
    child, _ = children.start()
    pidfile = pidfile_for(tmp_path, child.pid)
    children.kill(child)  # not waited for: it stays a zombie until the fixture reaps it
    wait_for(lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE, timeout=5)

    result = make_check({"kind": "process"}, target=controlled(pidfile)).execute()

    assert (result.status, result.value) == (Status.CRITICAL, 0.0)
    assert "which has exited (a zombie)" in result.message


def test_process_check_missing_pidfile_is_critical(
    make_check: MakeCheck, tmp_path: Path
) -> None:
    result = make_check({"kind": "process"}, target=controlled(tmp_path / "none.pid")).execute()

    assert (result.status, result.value) == (Status.CRITICAL, 0.0)
    assert result.message == (f"no process: pidfile {tmp_path / 'none.pid'} is missing or "
                              "holds no pid")


def test_process_check_pid_reused_by_a_newer_process_is_not_alive(
    children: Children, make_check: MakeCheck, tmp_path: Path
) -> None:
    child, marker = children.start()
    pidfile = pidfile_for(tmp_path, child.pid)
    an_hour_ago = time.time() - 3600
    os.utime(pidfile, (an_hour_ago, an_hour_ago))  # written long before this process started

    result = make_check({"kind": "process"}, target=controlled(pidfile)).execute()

    assert (result.status, result.value) == (Status.CRITICAL, 0.0)
    assert "now belongs to a newer process" in result.message
    assert marker in result.message


def test_process_check_finds_the_process_by_command_line(
    children: Children, make_check: MakeCheck
) -> None:
    child, marker = children.start()

    result = make_check({"kind": "process", "match": f"python.*{marker}"}).execute()

    assert (result.status, result.value) == (Status.OK, 1.0)
    assert f"pid {child.pid} matches" in result.message


def test_process_check_match_with_no_process_is_critical(make_check: MakeCheck) -> None:
    pattern = f"sglguard-test-{uuid.uuid4().hex}"

    result = make_check({"kind": "process", "match": pattern}).execute()

    assert (result.status, result.value) == (Status.CRITICAL, 0.0)
    assert result.message == f"no process: no process matches {pattern!r}"


def test_process_check_match_never_finds_sglguard_itself(make_check: MakeCheck) -> None:
    command = " ".join(psutil.Process().cmdline())

    def others() -> set[int]:
        # Another test run started the same way (CI beside a local run) matches too; such runs
        # come and go while this test runs.
        return {process.pid for process in psutil.process_iter(["cmdline"])
                if process.pid != os.getpid()
                and " ".join(process.info["cmdline"] or []) == command}

    before = others()
    result = make_check({"kind": "process", "match": f"^{re.escape(command)}$"}).execute()
    seen = before | others()

    assert f"pid {os.getpid()} " not in result.message
    if not seen:
        assert (result.status, result.value) == (Status.CRITICAL, 0.0)
    if result.value == 1.0:
        assert re.match(r"alive: .*; pid (\d+)", result.message) is not None
        assert int(re.findall(r"; pid (\d+)", result.message)[0]) in seen


def test_process_check_without_pidfile_or_match_says_what_to_set(make_check: MakeCheck) -> None:
    result = make_check({"kind": "process"}).execute()

    assert (result.status, result.value) == (Status.UNKNOWN, None)
    assert "set `match:`" in result.message
    assert "target local has no control with a pidfile" in result.message


def test_process_check_invalid_match_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match=r"invalid regular expression '\('"):
        CheckConfig.model_validate({"name": "p", "target": "local", "kind": "process",
                                    "match": "("})


def test_process_check_resources_of_a_missing_process_are_unknown(
    make_check: MakeCheck, tmp_path: Path
) -> None:
    result = make_check({"kind": "process", "metric": "rss_mib"},
                        target=controlled(tmp_path / "none.pid")).execute()

    assert (result.status, result.value, result.unit) == (Status.UNKNOWN, None, "MiB")
    assert result.message.startswith("cannot measure rss_mib: no process: pidfile")


def test_process_check_rss_fds_and_uptime_of_a_live_process(
    children: Children, make_check: MakeCheck, tmp_path: Path
) -> None:
    child, _ = children.start()
    target = controlled(pidfile_for(tmp_path, child.pid))
    wait_for(lambda: "time" in " ".join(psutil.Process(child.pid).cmdline()), timeout=5)
    process = psutil.Process(child.pid)
    wait_for(lambda: process.memory_info().rss > 5 * 1024**2, timeout=5)

    rss = make_check({"kind": "process", "metric": "rss_mib"}, target=target).execute()
    fds = make_check({"kind": "process", "metric": "open_fds"}, target=target).execute()
    uptime = make_check({"kind": "process", "metric": "uptime_s"}, target=target).execute()

    assert (rss.status, rss.unit) == (Status.OK, "MiB")
    assert rss.value == pytest.approx(process.memory_info().rss / 1024**2, abs=2)
    assert (fds.status, fds.unit, fds.value) == (Status.OK, "fds", float(process.num_fds()))
    assert (uptime.status, uptime.unit) == (Status.OK, "s")
    assert uptime.value is not None
    assert uptime.value == pytest.approx(time.time() - process.create_time(), abs=1)


def test_process_check_cpu_percent_of_a_spinning_process(
    children: Children, make_check: MakeCheck, tmp_path: Path
) -> None:
    spinner, _ = children.start(SPIN)
    sleeper, _ = children.start(SLEEP)
    busy = make_check({"kind": "process", "metric": "cpu_percent"},
                      target=controlled(pidfile_for(tmp_path, spinner.pid, "busy.pid")))
    idle = make_check({"kind": "process", "metric": "cpu_percent"},
                      target=controlled(pidfile_for(tmp_path, sleeper.pid)))
    wait_for(lambda: psutil.Process(spinner.pid).cpu_times().user > 0.05, timeout=5)

    first = busy.execute()
    second = busy.execute()
    quiet = idle.execute()

    assert (first.status, first.unit) == (Status.OK, "%")
    assert first.value is not None and first.value > 30  # ~100: one core spinning
    assert "(first reading)" in first.message
    assert second.value is not None and second.value > 30
    assert "since the previous run" in second.message
    assert quiet.value is not None and quiet.value < 20


def test_process_check_cpu_restarts_its_baseline_for_a_new_process(
    children: Children, make_check: MakeCheck, tmp_path: Path
) -> None:
    old, _ = children.start()
    pidfile = pidfile_for(tmp_path, old.pid)
    check = make_check({"kind": "process", "metric": "cpu_percent"}, target=controlled(pidfile))
    check.execute()
    new, _ = children.start()
    pidfile_for(tmp_path, new.pid)  # the server was restarted

    result = check.execute()

    assert "(first reading)" in result.message
    assert f"pid {new.pid}" in result.message


def test_process_check_children_add_to_the_parents_resources(
    children: Children, make_check: MakeCheck, tmp_path: Path
) -> None:
    parent, _ = children.start(WITH_CHILD)
    target = controlled(pidfile_for(tmp_path, parent.pid))
    wait_for(lambda: psutil.Process(parent.pid).children(), timeout=5)

    alone = make_check({"kind": "process", "metric": "open_fds"}, target=target).execute()
    family = make_check({"kind": "process", "metric": "open_fds", "children": True},
                        target=target).execute()

    assert alone.value is not None and family.value is not None
    assert family.value > alone.value
    assert "over 2 processes" in family.message


# --- log ------------------------------------------------------------------------------------

PATTERNS = ["CUDA out of memory", "watchdog timeout", "Traceback"]


def append(path: Path, text: str) -> None:
    with path.open("a") as log:
        log.write(text)


@pytest.fixture
def server_log(tmp_path: Path) -> Path:
    path = tmp_path / "server.log"
    path.write_text("Traceback (most recent call last): an old crash\nold line\n")
    return path


def log_check(make_check: MakeCheck, path: Path, store: Store, clock: FakeClock,
              **extra: Any) -> Check[Any]:
    return make_check({"kind": "log", "path": str(path), "patterns": PATTERNS,
                       "critical": "> 0", **extra}, store=store, clock=clock)


def test_log_check_first_run_starts_at_the_end(
    make_check: MakeCheck, server_log: Path, store: Store, clock: FakeClock
) -> None:
    check = log_check(make_check, server_log, store, clock)
    history = server_log.stat().st_size

    first = check.execute()
    append(server_log, "Traceback written after the first run\n")
    second = check.execute()

    assert (first.status, first.value, first.unit) == (Status.OK, 0.0, "lines")
    assert first.message == (f"first run: watching {server_log} from its end "
                             f"({history} bytes of history skipped)")
    assert second.value == 1.0  # the old Traceback is history, the new one is news


def test_log_check_first_run_counts_the_unfinished_last_line_once_it_ends(
    make_check: MakeCheck, server_log: Path, store: Store, clock: FakeClock
) -> None:
    check = log_check(make_check, server_log, store, clock)
    append(server_log, "Traceback being writ")

    first = check.execute()
    append(server_log, "ten\n")
    second = check.execute()

    assert first.value == 0.0
    assert second.value == 1.0
    assert "first: 'Traceback being written'" in second.message


def test_log_check_counts_new_matching_lines_per_pattern(
    make_check: MakeCheck, server_log: Path, store: Store, clock: FakeClock
) -> None:
    check = log_check(make_check, server_log, store, clock)
    check.execute()
    append(server_log, "INFO fine\n"
                       "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
                       "Traceback (most recent call last):\n"
                       "Scheduler watchdog timeout (self.watchdog_timeout=300)\n"
                       "INFO still fine\n")
    clock.advance(30)

    result = check.execute()
    again = check.execute()

    assert (result.status, result.value) == (Status.CRITICAL, 3.0)
    assert ("3 new lines match in " f"{server_log} ('CUDA out of memory': 1, "
            "'watchdog timeout': 1, 'Traceback': 1); first: 'torch.OutOfMemoryError: CUDA out "
            "of memory. Tried to allocate 2.00 GiB'") in result.message
    assert "3 lines > 0 (critical)" in result.message
    assert (again.status, again.value) == (Status.OK, 0.0)
    assert again.message == f"no new matching lines in {server_log} (0 new bytes)"


def test_log_check_counts_a_line_once_when_several_patterns_match(
    make_check: MakeCheck, server_log: Path, store: Store, clock: FakeClock
) -> None:
    check = log_check(make_check, server_log, store, clock)
    check.execute()
    append(server_log, "Traceback: watchdog timeout\n")

    result = check.execute()

    assert result.value == 1.0
    assert "('watchdog timeout': 1, 'Traceback': 1)" in result.message


def test_log_check_waits_for_the_end_of_a_partial_line(
    make_check: MakeCheck, server_log: Path, store: Store, clock: FakeClock
) -> None:
    check = log_check(make_check, server_log, store, clock)
    check.execute()
    append(server_log, "RuntimeError: CUDA out of mem")

    partial = check.execute()
    append(server_log, "ory\n")
    finished = check.execute()

    assert partial.value == 0.0
    assert finished.value == 1.0
    assert "first: 'RuntimeError: CUDA out of memory'" in finished.message


def test_log_check_reads_a_truncated_file_from_its_start(
    make_check: MakeCheck, server_log: Path, store: Store, clock: FakeClock
) -> None:
    check = log_check(make_check, server_log, store, clock)
    check.execute()
    server_log.write_text("Traceback\n")  # shorter than what was read

    result = check.execute()

    assert result.value == 1.0
    assert "the file was truncated: read from its start" in result.message


def test_log_check_follows_rotation_reading_the_old_files_rest_first(
    make_check: MakeCheck, server_log: Path, store: Store, clock: FakeClock
) -> None:
    check = log_check(make_check, server_log, store, clock)
    check.execute()
    append(server_log, "watchdog timeout just before rotation\n")
    server_log.rename(f"{server_log}.1")
    server_log.write_text("INFO new file\nTraceback in the new file\n")

    result = check.execute()

    assert result.value == 2.0
    assert "first: 'watchdog timeout just before rotation'" in result.message
    assert "the file was replaced (rotated): read the new one from its start" in result.message


def test_log_check_reads_a_replaced_file_from_its_start_without_the_old_one(
    make_check: MakeCheck, server_log: Path, store: Store, clock: FakeClock
) -> None:
    check = log_check(make_check, server_log, store, clock)
    check.execute()
    server_log.unlink()
    server_log.write_text("Traceback\n" * 2)

    result = check.execute()

    assert result.value == 2.0


def test_log_check_missing_file_is_unknown(
    make_check: MakeCheck, tmp_path: Path, store: Store, clock: FakeClock
) -> None:
    result = log_check(make_check, tmp_path / "absent.log", store, clock).execute()

    assert (result.status, result.value, result.unit) == (Status.UNKNOWN, None, "lines")
    assert result.message == f"log file {tmp_path / 'absent.log'} not found"


def test_the_controls_log_not_written_yet_is_no_data_not_unknown(
    make_check: MakeCheck, tmp_path: Path, store: Store, clock: FakeClock
) -> None:
    """A server its control never started (started some other way, or sglguard is new on the
    host) has no log yet: that says nothing of the server, so it never counts or pages."""
    target = TargetConfig.model_validate({
        "name": "local", "url": UNUSED_URL,
        "control": {"kind": "process", "start": ["true"],
                    "pidfile": str(tmp_path / "server.pid")}})
    check = make_check({"kind": "log", "patterns": PATTERNS, "critical": "> 0"},
                       target=target, store=store, clock=clock)
    absent = check.execute()
    assert (absent.status, absent.value, absent.counts) == (Status.OK, None, False)
    assert absent.message.startswith(f"no data: {tmp_path / 'server.log'} does not exist yet")
    (tmp_path / "server.log").write_text("INFO: started\n")
    assert check.execute().message.startswith("first run: watching")


def test_log_check_state_survives_a_new_sample_book_on_the_same_store(
    make_check: MakeCheck, server_log: Path, store: Store, clock: FakeClock
) -> None:
    log_check(make_check, server_log, store, clock).execute()
    append(server_log, "Traceback one\nTraceback two\n")
    clock.advance(60)

    # A new check and a new StoreSamples: sglguard restarted, or a separate `sglguard check`.
    result = log_check(make_check, server_log, store, clock).execute()

    assert result.value == 2.0
    assert "first: 'Traceback one'" in result.message


def test_log_check_reads_at_most_8_mib_per_run_and_catches_up(
    make_check: MakeCheck, server_log: Path, store: Store, clock: FakeClock
) -> None:
    check = log_check(make_check, server_log, store, clock)
    check.execute()
    filler = ("x" * 1023 + "\n").encode()
    with server_log.open("ab") as log:
        log.write(filler * (9 * 1024))  # 9 MiB of harmless lines, then a match
        log.write(b"Traceback after the burst\n")

    burst = check.execute()
    rest = check.execute()

    assert burst.value == 0.0
    assert "read the 8 MiB limit, 1.0 MiB left for the next run" in burst.message
    assert rest.value == 1.0
    assert "first: 'Traceback after the burst'" in rest.message


def test_log_check_shows_at_most_200_characters_of_the_first_line(
    make_check: MakeCheck, server_log: Path, store: Store, clock: FakeClock
) -> None:
    check = log_check(make_check, server_log, store, clock)
    check.execute()
    append(server_log, "Traceback " + "y" * 500 + "\n")

    result = check.execute()

    shown = result.message.split("first: ")[1].split(";")[0]
    assert len(shown) == 200 + 2  # the repr's quotes
    assert shown.endswith("...'")


def test_log_check_does_not_split_lines_at_carriage_returns(
    make_check: MakeCheck, server_log: Path, store: Store, clock: FakeClock
) -> None:
    check = log_check(make_check, server_log, store, clock)
    check.execute()
    append(server_log, "Traceback 10%\rTraceback 50%\rTraceback 100%\n")  # a progress bar

    assert check.execute().value == 1.0


def test_log_check_invalid_pattern_is_a_config_error_naming_it() -> None:
    with pytest.raises(ValidationError, match=r"patterns\[1\]: invalid regular expression '\('"):
        CheckConfig.model_validate({"name": "l", "target": "local", "kind": "log",
                                    "path": "server.log", "patterns": ["Traceback", "("]})


def test_log_check_relative_path_is_taken_from_the_catalog_folder(
    make_catalog: Callable[[str], Catalog], tmp_path: Path
) -> None:
    catalog = make_catalog("""
        version: 1
        targets:
          - name: local
            url: http://127.0.0.1:30000
        checks:
          - name: errors
            target: local
            kind: log
            path: logs/server.log
            patterns: [Traceback]
    """)

    assert catalog.checks[0].path == tmp_path / "logs" / "server.log"  # type: ignore[attr-defined]


@pytest.mark.parametrize(("control", "expected"), [
    ('{kind: process, start: [sglang], pidfile: run/server.pid, log: logs/sglang.log}',
     "logs/sglang.log"),
    ('{kind: process, start: [sglang], pidfile: run/server.pid}', "run/server.log"),
    ('{kind: command, start: [up], stop: [down], log: out.txt}', "out.txt"),
])
def test_log_check_without_path_reads_the_log_its_targets_control_writes(
    make_catalog: Callable[[str], Catalog], tmp_path: Path, store: Store, clock: FakeClock,
    control: str, expected: str
) -> None:
    """By reference to the control (its `log`, or the default beside its pidfile), not by a
    file name that happens to match."""
    catalog = make_catalog(f"""
        version: 1
        targets:
          - name: local
            url: http://127.0.0.1:30000
            control: {control}
        checks:
          - {{name: errors, target: local, kind: log, patterns: [Traceback], critical: "> 0"}}
    """)
    log = tmp_path / expected
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("old\n")
    with contextlib.closing(SGLangClient(UNUSED_URL)) as client:
        check = CHECKS["log"](catalog.checks[0], CheckContext(
            catalog.targets[0], client, samples=StoreSamples(store), clock=clock))

        assert check.execute().message.startswith(f"first run: watching {log} from its end")
        append(log, "Traceback: the server crashed\n")
        result = check.execute()
    assert (result.status, result.value) == (Status.CRITICAL, 1.0)


@pytest.mark.parametrize(("control", "keeps"), [
    ("control: {kind: systemd, unit: sglang}",
     "the systemd control of target 'local' keeps no log file"),
    ("control: {kind: command, start: [up], stop: [down]}",
     "the command control of target 'local' keeps no log file"),
    ("", "target 'local' has no control"),
])
def test_log_check_without_path_on_a_target_whose_control_keeps_no_log_is_a_config_error(
    make_catalog: Callable[[str], Catalog], control: str, keeps: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        make_catalog(f"""
            version: 1
            targets:
              - name: local
                url: http://127.0.0.1:30000
                {control}
            checks:
              - {{name: errors, target: local, kind: log, patterns: [Traceback]}}
        """)
    assert raised.value.problems == [
        f"checks[0] (line 8): a log check without `path` reads the log its target's control "
        f"writes, but {keeps}: give `path:` (the file the server writes to)"]
