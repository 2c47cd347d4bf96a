"""What one diagnostics bundle is made of: each section read by a function of its own.

Every section is read in a thread of its own against one deadline, so a hung server or a slow
NVML call costs the capture its bound and no more; a section that fails says why in its place."""

from __future__ import annotations

import base64
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sglguard.client import SGLangClient
from sglguard.config.models import DiagnosticsConfig, TargetConfig
from sglguard.controls.base import Control

logger = logging.getLogger(__name__)


@dataclass
class Job:
    """What the sections of one capture read from."""

    target: TargetConfig
    client: SGLangClient
    control: Control[Any] | None
    settings: DiagnosticsConfig
    metrics: frozenset[str]  # metric families the catalog's checks of the target read
    hang: bool  # the incident looks like a hang: take the processes' stacks
    deadline: float = field(default=0.0)  # time.monotonic() by which every section is done

    def left(self) -> float:
        return max(0.1, self.deadline - time.monotonic())


def metric_families(check_configs: Iterable[Any]) -> frozenset[str]:
    """Metric names the checks read: every `...metric` field, nested ones included."""
    found: set[str] = set()

    def walk(value: Any, key: str = "") -> None:
        if isinstance(value, dict):
            for name, item in value.items():
                walk(item, str(name))
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item, key)
        elif isinstance(value, str) and key.endswith("metric") and value:
            found.add(value)

    for config in check_configs:
        walk(config.model_dump(mode="json"))
    return frozenset(found)


def server_info(job: Job) -> dict[str, Any]:
    return {"server_info": job.client.server_info(timeout=job.left())}


def metrics(job: Job) -> dict[str, Any]:
    text = job.client.metrics_text(timeout=job.left())
    lines = [line for line in text.splitlines() if line and (
        not job.metrics or _wanted(_name(line), job.metrics))]
    return {"families": sorted(job.metrics), "lines": lines}


SUFFIXES = ("", "_bucket", "_sum", "_count", "_created")


def _name(line: str) -> str:
    if line.startswith("#"):
        parts = line.split()
        return parts[2] if len(parts) > 2 else ""
    return line.split("{", 1)[0].split(" ", 1)[0]


def _wanted(name: str, families: frozenset[str]) -> bool:
    return any(name == family + suffix for family in families for suffix in SUFFIXES)


def log_tail(job: Job) -> dict[str, Any]:
    path = job.control.config.server_log if job.control is not None else None
    if path is None:
        return {"available": False, "reason": "the target's control keeps no log file "
                                              "(journal, docker logs or none)"}
    if not path.exists():
        return {"available": False, "reason": f"{path} does not exist"}
    keep: deque[str] = deque(maxlen=job.settings.log_lines)
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - 4_000_000))  # the tail is in the last few MB
        for raw in handle:
            keep.append(raw.decode("utf-8", "replace").rstrip("\n"))
    return {"path": str(path), "lines": list(keep)}


def gpu(job: Job) -> dict[str, Any]:
    from sglguard.checks.gpu import nvml_unavailable

    why = nvml_unavailable()
    if why is not None:
        return {"available": False, "reason": f"NVML not available on this host: {why}"}
    import pynvml

    devices = []
    for index in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        devices.append({"index": index, **_device(pynvml, handle)})
    return {"available": True, "devices": devices}


def _device(nvml: Any, handle: Any) -> dict[str, Any]:
    """One device's readings; a reading this device does not support says so."""
    out: dict[str, Any] = {}
    readings: dict[str, Callable[[], Any]] = {
        "name": lambda: _text(nvml.nvmlDeviceGetName(handle)),
        "memory": lambda: _memory(nvml.nvmlDeviceGetMemoryInfo(handle)),
        "utilization_percent": lambda: _util(nvml.nvmlDeviceGetUtilizationRates(handle)),
        "temperature_c": lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU),
        "ecc_uncorrected_volatile": lambda: nvml.nvmlDeviceGetTotalEccErrors(
            handle, nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nvml.NVML_VOLATILE_ECC),
        "processes": lambda: [
            {"pid": proc.pid, "used_bytes": proc.usedGpuMemory}
            for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle)],
    }
    for name, read in readings.items():
        try:
            out[name] = read()
        except Exception as exc:  # NVMLError_NotSupported and friends
            out[name] = f"unavailable: {exc}"
    return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _memory(info: Any) -> dict[str, int]:
    return {"total": int(info.total), "used": int(info.used), "free": int(info.free)}


def _util(rates: Any) -> dict[str, int]:
    return {"gpu": int(rates.gpu), "memory": int(rates.memory)}


def host(job: Job) -> dict[str, Any]:
    import psutil

    memory = psutil.virtual_memory()
    swap = psutil.swap_memory()
    return {"load": list(os.getloadavg()), "cpus": os.cpu_count(),
            "memory": {"total": memory.total, "available": memory.available,
                       "percent": memory.percent},
            "swap": {"total": swap.total, "used": swap.used}}


def server_pid(job: Job) -> int | None:
    if job.control is None:
        return None
    try:
        return job.control.server_pid()
    except Exception:
        return None


def process(job: Job) -> dict[str, Any]:
    import psutil

    pid = server_pid(job)
    if pid is None:
        return {"available": False, "reason": "no pid: the target's control keeps no pidfile"}
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            found: dict[str, Any] = {
                "pid": pid, "status": proc.status(), "cmdline": proc.cmdline()[:40],
                "rss": proc.memory_info().rss, "threads": proc.num_threads(),
                "started": datetime.fromtimestamp(proc.create_time(), UTC).isoformat()}
        found["open_files"] = [item.path for item in proc.open_files()][:200]
        found["children"] = [_child(child) for child in proc.children(recursive=True)][:100]
        return found
    except psutil.NoSuchProcess:
        return {"available": False, "reason": f"pid {pid} is not running"}
    except psutil.AccessDenied as exc:
        return {"available": False, "pid": pid, "reason": f"access denied: {exc}"}


def _child(child: Any) -> dict[str, Any]:
    try:
        return {"pid": child.pid, "name": child.name(), "rss": child.memory_info().rss,
                "status": child.status()}
    except Exception as exc:
        return {"pid": child.pid, "error": str(exc)}


def crash_dump(job: Job) -> dict[str, Any]:
    folder = job.target.crash_dump_folder
    if folder is None:
        return {"available": False, "reason": "no crash_dump_folder on the target (the server's "
                                              "--crash-dump-folder)"}
    if not folder.is_dir():
        return {"available": False, "reason": f"{folder} is not a folder"}
    files = [path for path in folder.rglob("*") if path.is_file()]
    if not files:
        return {"available": False, "reason": f"no crash dump in {folder}"}
    newest = max(files, key=lambda path: path.stat().st_mtime)
    stat = newest.stat()
    found: dict[str, Any] = {
        "name": str(newest), "size": stat.st_size,
        "modified": datetime.fromtimestamp(stat.st_mtime, UTC).isoformat()}
    if stat.st_size <= job.settings.copy_crash_dump_below:
        found["content_base64"] = base64.b64encode(newest.read_bytes()).decode()
    return found


def py_spy() -> str | None:
    """py-spy on PATH, or beside this Python (installed in sglguard's virtual environment)."""
    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(beside) if beside.is_file() else None)


def stacks(job: Job) -> dict[str, Any]:
    wanted = job.settings.stacks == "always" or (job.settings.stacks == "hang" and job.hang)
    if not wanted:
        return {"taken": False, "reason": "not a hang"}
    spy = py_spy()
    if spy is None:
        return {"taken": False, "reason": "py-spy is not installed (pip install py-spy)"}
    pid = server_pid(job)
    if pid is None:
        return {"taken": False, "reason": "no pid: the target's control keeps no pidfile"}
    import psutil

    try:
        pids = [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        return {"taken": False, "reason": f"pid {pid} is not running"}
    dumps: dict[str, str] = {}
    for one in pids[:16]:
        try:
            done = subprocess.run([spy, "dump", "--pid", str(one)], capture_output=True,
                                  text=True, timeout=max(0.5, job.left() - 0.2), check=False)
            dumps[str(one)] = (done.stdout if done.returncode == 0
                               else f"py-spy failed ({done.returncode}): {done.stderr.strip()}")
        except subprocess.TimeoutExpired:
            dumps[str(one)] = "py-spy timed out"
            break
    return {"taken": True, "tool": spy, "processes": dumps}


SECTIONS: dict[str, Callable[[Job], dict[str, Any]]] = {
    "server_info": server_info, "metrics": metrics, "log": log_tail, "gpu": gpu,
    "host": host, "process": process, "crash_dump": crash_dump, "stacks": stacks,
}


def read_all(job: Job, timeout: float) -> dict[str, Any]:
    """Every section, each in a daemon thread, all within `timeout` seconds; a section not done
    by then is recorded as timed out and left to finish on its own."""
    job.deadline = time.monotonic() + timeout
    results: dict[str, Any] = {}
    lock = threading.Lock()

    def run(name: str, read: Callable[[Job], dict[str, Any]]) -> None:
        try:
            value = read(job)
        except Exception as exc:
            value = {"error": f"{type(exc).__name__}: {exc}"}
        with lock:
            results[name] = value

    threads = [threading.Thread(target=run, args=(name, read), name=f"diag-{name}",
                                daemon=True) for name, read in SECTIONS.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, job.deadline - time.monotonic()))
    with lock:
        return {name: results.get(name, {"error": f"timed out after {timeout:g} s"})
                for name in SECTIONS}
