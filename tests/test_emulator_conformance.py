"""The emulator's /metrics against what SGLang 0.5.23 registers (fixtures/sglang-0.5.23-
families.json): for every family it serves, the type, the label names per collector and the
histogram buckets. A drifted bucket or label fails here."""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from sglguard.emulator import Emulator

from conftest import FIXTURES, StartEmulator, wait_for

FAMILIES = json.loads((FIXTURES / "sglang-0.5.23-families.json").read_text())["families"]
# prometheus_client's multiprocess mode adds `pid` to gauges written in its "all" mode.
PID_GAUGES = {"sglang:num_retracted_reqs", "sglang:num_paused_reqs"}


@dataclass(frozen=True)
class Shape:
    """The launch flags that add labels."""

    dp_size: int = 1
    priority: bool = False


def expected_labels(name: str, shape: Shape) -> set[str]:
    family = FAMILIES[name]
    labels = set(family["labels"])
    if family["collector"] == "scheduler":
        if shape.dp_size > 1:
            labels.add("dp_rank")
        if name in PID_GAUGES:
            labels.add("pid")
    if shape.priority and "model_name" in labels:  # both collectors; not the HTTP families
        labels.add("priority")
    return labels


def _a_priority(value: str) -> bool:
    """SGLang 0.5.23 labels a priority with str(int), or "" for totals and for a request's own
    counters when it came without one; its scheduler never sees None (it gives -2**63)."""
    try:
        return value == "" or -(2**63) <= int(value) < 2**63
    except ValueError:
        return False


def _bound(value: str) -> float:
    return math.inf if value == "+Inf" else float(value)


def conformance_problems(text: str, shape: Shape) -> list[str]:
    """Every way the page differs from 0.5.23's registry, for the families it serves."""
    problems = []
    for family in text_string_to_metric_families(text):
        name = family.name
        if name not in FAMILIES:
            problems.append(f"{name}: not a family of SGLang 0.5.23")
            continue
        spec = FAMILIES[name]
        if family.type != spec["type"]:
            problems.append(f"{name}: type {family.type}, SGLang {spec['type']}")
        want = expected_labels(name, shape)
        for sample in family.samples:
            got = set(sample.labels) - {"le"}
            if got != want:
                problems.append(f"{sample.name}: labels {sorted(got)}, SGLang {sorted(want)}")
                break
        for sample in family.samples:
            if not _a_priority(sample.labels.get("priority", "")):
                problems.append(f"{sample.name}: priority={sample.labels['priority']!r}, SGLang "
                                "writes an integer or \"\" (no priority: the lowest, -2**63)")
                break
        if spec["type"] == "histogram":
            bounds = {}
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    key = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
                    bounds.setdefault(key, []).append(_bound(sample.labels["le"]))
            wanted = [_bound(str(b)) if b == "+Inf" else float(b) for b in spec["buckets"]]
            for series in bounds.values():
                if sorted(series) != wanted:
                    problems.append(f"{name}: buckets {sorted(series)}, SGLang {wanted}")
                    break
    return problems


def exercise(emulator: Emulator) -> str:
    """Traffic that creates the series SGLang creates on first use, then the page."""
    url = emulator.url
    prompt = "Summarise the incident report for the on-call engineer, in detail. " * 4
    for stream in (False, True):
        requests.post(f"{url}/generate", json={"text": prompt, "stream": stream,
                                               "sampling_params": {"max_new_tokens": 8}},
                      timeout=5).raise_for_status()
    schema = json.dumps({"type": "object", "properties": {"a": {"type": "string"}}})
    requests.post(f"{url}/generate", json={"text": "x", "sampling_params": {
        "json_schema": schema, "max_new_tokens": 16}}, timeout=5).raise_for_status()
    long = threading.Thread(target=requests.post, args=(f"{url}/generate",), kwargs={
        "json": {"text": "x", "rid": "long", "sampling_params": {"max_new_tokens": 5000}},
        "timeout": 10}, daemon=True)
    long.start()
    wait_for(lambda: emulator.active_requests >= 1)
    requests.post(f"{url}/pause_generation", json={"mode": "retract"}, timeout=5)
    requests.post(f"{url}/continue_generation", json={}, timeout=5)
    requests.post(f"{url}/abort_request", json={"abort_all": True}, timeout=5)
    long.join(10)
    requests.post(f"{url}/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "hi"}], "stream": True}, timeout=5)
    return requests.get(f"{url}/metrics", timeout=5).text


SHAPES = {
    "default launch": ({}, Shape()),
    "dp 4 with priority scheduling": ({"dp_size": 4, "enable_priority_scheduling": True},
                                      Shape(dp_size=4, priority=True)),
    "PD prefill worker": ({"disaggregation_mode": "prefill"}, Shape()),
    "PD decode worker": ({"disaggregation_mode": "decode"}, Shape()),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_served_family_matches_sglang_0_5_23(start_emulator: StartEmulator,
                                                   shape: str) -> None:
    options, labels = SHAPES[shape]
    emulator = start_emulator(skip_server_warmup=False, decode_speed=500.0, **options)
    text = exercise(emulator)
    served = {family.name for family in text_string_to_metric_families(text)}
    assert {"sglang:num_retracted_requests", "sglang:num_retracted_input_tokens",
            "sglang:realtime_tokens", "sglang:num_aborted_requests"} <= served
    assert len(served) >= 25
    assert conformance_problems(text, labels) == []


def test_the_conformance_check_fails_on_a_drifted_bucket_or_label(
        start_emulator: StartEmulator) -> None:
    text = exercise(start_emulator(skip_server_warmup=False, decode_speed=500.0))
    assert conformance_problems(text, Shape()) == []
    no_bucket = "\n".join(line for line in text.splitlines()
                          if 'time_to_first_token_seconds_bucket' not in line
                          or 'le="0.6"' not in line)
    assert any("time_to_first_token_seconds: buckets" in problem
               for problem in conformance_problems(no_bucket, Shape()))
    relabelled = text.replace('sglang:num_queue_reqs{engine_type="unified"',
                              'sglang:num_queue_reqs{engine="unified"')
    assert any(problem.startswith("sglang:num_queue_reqs: labels")
               for problem in conformance_problems(relabelled, Shape()))
    assert conformance_problems(text, Shape(dp_size=2)) != []  # dp_rank expected, missing


def test_the_conformance_check_fails_on_a_priority_written_as_none(
        start_emulator: StartEmulator) -> None:
    text = exercise(start_emulator(skip_server_warmup=False, decode_speed=500.0, dp_size=4,
                                   enable_priority_scheduling=True))
    shape = Shape(dp_size=4, priority=True)
    assert conformance_problems(text, shape) == []
    lowest = f'priority="{-(2**63)}"'
    assert lowest in text  # the requests sent without a priority
    assert any("priority='None'" in problem for problem in conformance_problems(
        text.replace(lowest, 'priority="None"'), shape))
