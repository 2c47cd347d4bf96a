"""A diagnostics bundle: the sections as one JSON document held under its size bound,
compressed for the store, and summarised in a few lines for messages."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MAX_SHRINKS = 60


@dataclass(frozen=True)
class Bundle:
    """One captured bundle, ready to store."""

    document: dict[str, Any]
    size: int  # bytes of JSON, the figure held under max_bytes
    data: bytes  # the JSON, gzip-compressed
    summary: str


def encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, indent=1, default=str).encode()


def decode(data: bytes) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(gzip.decompress(data))
    return loaded


def build(head: dict[str, Any], sections: dict[str, Any], max_bytes: int) -> Bundle:
    """The document of `head` (stage, target, times) and `sections`, shrunk to `max_bytes`:
    the largest section gives way first (a copied crash dump, then halves of its lines or
    stacks), and what was cut is listed under `truncated`."""
    sections = {name: dict(value) if isinstance(value, dict) else value
                for name, value in sections.items()}
    cut: list[str] = []
    document = {**head, "truncated": cut, "sections": sections}
    raw = encode(document)
    for _ in range(MAX_SHRINKS):
        if len(raw) <= max_bytes:
            break
        largest = max(sections, key=lambda name: len(encode({"s": sections[name]})))
        sections[largest], what = _shrink(sections[largest], len(raw) - max_bytes)
        cut.append(f"{largest}: {what}")
        raw = encode(document)
    if len(raw) > max_bytes:  # only the head left would fit
        document["sections"] = {name: {"dropped": "bundle over max_bytes"} for name in sections}
        raw = encode(document)
    return Bundle(document, len(raw), gzip.compress(raw, 6), summarise(document))


def _shrink(section: Any, over: int) -> tuple[Any, str]:
    if not isinstance(section, dict):
        return {"dropped": "too large"}, "dropped"
    if "content_base64" in section:
        section = {key: value for key, value in section.items() if key != "content_base64"}
        return section, "crash dump not copied"
    lines = section.get("lines")
    if isinstance(lines, list) and len(lines) > 1:
        kept = lines[len(lines) // 2:]
        return {**section, "lines": kept}, f"kept the last {len(kept)} lines"
    dumps = section.get("processes")
    if isinstance(dumps, dict) and any(isinstance(text, str) and len(text) > 200
                                       for text in dumps.values()):
        halved = {pid: text[: len(text) // 2] + "\n[cut]" if isinstance(text, str) else text
                  for pid, text in dumps.items()}
        return {**section, "processes": halved}, "stacks cut in half"
    for key in ("open_files", "children"):
        items = section.get(key)
        if isinstance(items, list) and len(items) > 10:
            return {**section, key: items[:10]}, f"{key}: first 10 kept"
    return {"dropped": f"too large ({over} bytes over the bound)"}, "dropped"


def _kib(size: float) -> str:
    return f"{size / 1024:.0f} KiB" if size < 1024 * 1024 else f"{size / 1024 / 1024:.1f} MiB"


def summarise(document: dict[str, Any]) -> str:
    """A few lines for a notification: what each section holds, or why it is missing."""
    sections: dict[str, Any] = document.get("sections", {})
    lines = [f"Diagnostics ({document.get('stage', '?')}, captured in "
             f"{document.get('took_ms', 0) / 1000:.1f} s): "]
    for name, value in sections.items():
        lines.append(f"- {name}: {_line(name, value)}")
    if document.get("truncated"):
        lines.append(f"- cut to fit: {'; '.join(document['truncated'])}")
    return "\n".join(lines)


def _line(name: str, value: Any) -> str:
    if not isinstance(value, dict):
        return str(value)[:120]
    if "error" in value:
        return str(value["error"])[:200]
    if "dropped" in value:
        return f"dropped ({value['dropped']})"
    if value.get("available") is False or value.get("taken") is False:
        return str(value.get("reason", "not available"))
    describe: Callable[[dict[str, Any]], str] | None = _DESCRIBE.get(name)
    return describe(value) if describe is not None else "captured"


def _process(value: dict[str, Any]) -> str:
    return (f"pid {value.get('pid')} {value.get('status', '')}, RSS {_kib(value.get('rss', 0))}, "
            f"{value.get('threads')} threads, {len(value.get('open_files', []))} open files, "
            f"{len(value.get('children', []))} children")


def _log(value: dict[str, Any]) -> str:
    lines = value.get("lines", [])
    last = f"; last: {lines[-1][:160]}" if lines else ""
    return f"{len(lines)} lines of {value.get('path')}{last}"


def _gpu(value: dict[str, Any]) -> str:
    parts = []
    for device in value.get("devices", []):
        memory = device.get("memory")
        used = (f"{memory['used'] / 2**30:.1f}/{memory['total'] / 2**30:.1f} GiB"
                if isinstance(memory, dict) else "memory ?")
        parts.append(f"GPU{device.get('index')} {used}, {device.get('temperature_c')} C")
    return "; ".join(parts) or "no devices"


def _crash(value: dict[str, Any]) -> str:
    copied = ", copied" if "content_base64" in value else ""
    return f"{value.get('name')} ({value.get('size')} bytes, {value.get('modified')}{copied})"


_DESCRIBE: dict[str, Callable[[dict[str, Any]], str]] = {
    "server_info": lambda value: "captured",
    "metrics": lambda value: f"{len(value.get('lines', []))} lines of "
                             f"{len(value.get('families', []))} families",
    "log": _log,
    "gpu": _gpu,
    "host": lambda value: (f"load {value.get('load', [0])[0]:.2f}, memory "
                           f"{value.get('memory', {}).get('percent')}% used"),
    "process": _process,
    "crash_dump": _crash,
    "stacks": lambda value: f"py-spy stacks of {len(value.get('processes', {}))} processes",
}
