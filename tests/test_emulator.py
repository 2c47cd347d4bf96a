"""The SGLang emulator, exercised over real HTTP on loopback."""

from __future__ import annotations

import http.client
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import pytest
import requests
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from sglguard.cli import main
from sglguard.emulator import Emulator, EmulatorOptions, Fault, parse_fault
from sglguard.emulator.__main__ import build_parser
from sglguard.emulator.profiles import METRICS_VERSIONS

from conftest import StartEmulator

REPO_ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 5.0
MODEL = "emulated/Llama-3.1-8B-Instruct"
SCHEDULER_LABELS = {
    "model_name": MODEL,
    "engine_type": "unified",
    "tp_rank": "0",
    "pp_rank": "0",
    "moe_ep_rank": "0",
}

@pytest.fixture
def emulator(start_emulator: StartEmulator) -> Emulator:
    return start_emulator()


def get(emulator: Emulator, path: str, **kwargs: Any) -> requests.Response:
    kwargs.setdefault("timeout", TIMEOUT)
    return requests.get(emulator.url + path, **kwargs)


def post(emulator: Emulator, path: str, body: Any = None, **kwargs: Any) -> requests.Response:
    kwargs.setdefault("timeout", TIMEOUT)
    return requests.post(emulator.url + path, json=body, **kwargs)


def generate(emulator: Emulator, **body: Any) -> requests.Response:
    return post(emulator, "/generate", {"text": "Say something kind.", **body})


def set_fault(emulator: Emulator, mode: str | None) -> requests.Response:
    return post(emulator, "/_emulator/fault", {"mode": mode})


def scrape(emulator: Emulator) -> list[Sample]:
    response = get(emulator, "/metrics")
    assert response.status_code == 200
    families = text_string_to_metric_families(response.text)
    return [sample for family in families for sample in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`."""
    hits = [s.value for s in samples if s.name == name and labels.items() <= s.labels.items()]
    assert hits, f"no sample {name} {labels}"
    return sum(hits)


def poll(check: Callable[[], bool], deadline_s: float = 3.0) -> None:
    deadline = time.monotonic() + deadline_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        time.sleep(0.01)


# -- health and start-up ---------------------------------------------------------------------


def test_health_answers_503_during_startup_delay_then_200(start_emulator: StartEmulator) -> None:
    emulator = start_emulator(startup_delay=0.3)
    began = time.monotonic()
    first = get(emulator, "/health")
    assert first.status_code == 503
    assert first.content == b""
    assert get(emulator, "/ready").status_code == 503
    assert get(emulator, "/ping").status_code == 503
    poll(lambda: get(emulator, "/health").status_code == 200)
    assert time.monotonic() - began >= 0.25
    assert get(emulator, "/health_generate").status_code == 200
    assert get(emulator, "/ready").status_code == 200


def test_health_takes_health_latency_before_answering(start_emulator: StartEmulator) -> None:
    emulator = start_emulator(health_latency=0.2)
    began = time.monotonic()
    assert get(emulator, "/health").status_code == 200
    assert time.monotonic() - began >= 0.2


def test_health_answers_503_while_draining_after_sigterm(emulator: Emulator) -> None:
    assert emulator.drain(timeout=1.0)  # what run_emulator does on SIGTERM
    assert get(emulator, "/health").status_code == 503
    assert get(emulator, "/ready").status_code == 503
    assert get(emulator, "/model_info").status_code == 200


def test_responses_on_a_keep_alive_connection_take_about_a_millisecond(emulator: Emulator) -> None:
    with requests.Session() as session:
        session.get(emulator.url + "/model_info", timeout=TIMEOUT)
        began = time.monotonic()
        for _ in range(20):
            assert session.get(emulator.url + "/model_info", timeout=TIMEOUT).status_code == 200
        # Split header/body writes would hit delayed ACKs: ~40 ms each, 800 ms in all.
        assert time.monotonic() - began < 0.4


# -- metrics ---------------------------------------------------------------------------------

SCHEDULER_GAUGES = [
    "num_running_reqs",
    "num_queue_reqs",
    "num_grammar_queue_reqs",
    "token_usage",
    "cache_hit_rate",
    "gen_throughput",
    "max_total_num_tokens",
    "num_used_tokens",
    "utilization",
    "kv_used_tokens",
    "kv_available_tokens",
    "kv_evictable_tokens",
]
TOKENIZER_LABELS = {"model_name": MODEL, "engine_type": "unified"}
TOKENIZER_COUNTERS = ["prompt_tokens_total", "generation_tokens_total", "num_requests_total"]
REQUEST_HISTOGRAMS = [
    "time_to_first_token_seconds",
    "inter_token_latency_seconds",
    "request_time_per_output_token_seconds",
    "e2e_request_latency_seconds",
]


def test_metrics_parse_and_use_sglang_0_5_23_names_and_labels(emulator: Emulator) -> None:
    assert generate(emulator).status_code == 200
    raw = get(emulator, "/metrics", headers={"Authorization": "Bearer wrong"}).text
    assert "# HELP sglang:num_running_reqs " in raw
    assert "# TYPE sglang:time_to_first_token_seconds histogram" in raw
    samples = scrape(emulator)
    for name in SCHEDULER_GAUGES:
        assert next(s for s in samples if s.name == f"sglang:{name}").labels == SCHEDULER_LABELS
    retracted = next(s for s in samples if s.name == "sglang:num_retracted_reqs")
    assert retracted.labels == {**SCHEDULER_LABELS, "pid": retracted.labels["pid"]}
    decode = next(s for s in samples if s.name == "sglang:realtime_tokens_total"
                  and s.labels.get("mode") == "decode")
    assert decode.labels == {**SCHEDULER_LABELS, "mode": "decode"}
    for name in TOKENIZER_COUNTERS:
        found = next(s for s in samples if s.name == f"sglang:{name}")
        assert found.labels == {**TOKENIZER_LABELS, "is_streaming": "false"}
    for name in REQUEST_HISTOGRAMS:
        labels = dict(TOKENIZER_LABELS)
        if name != "inter_token_latency_seconds":
            labels["is_streaming"] = "false"
        assert value(samples, f"sglang:{name}_count", **labels) >= 1
        assert any(s.name == f"sglang:{name}_sum" for s in samples)
    assert value(samples, "sglang:queue_time_seconds_count") == 1
    ttft_bounds = [s.labels["le"] for s in samples if s.name.endswith("first_token_seconds_bucket")]
    assert ttft_bounds[:3] == ["0.1", "0.2", "0.4"]
    assert ttft_bounds[-2:] == ["400.0", "+Inf"]
    assert value(samples, "sglang:max_total_num_tokens") > 100_000
    assert value(samples, "sglang:http_requests_total", endpoint="/generate", method="POST") == 1
    ok = {"endpoint": "/generate", "status_code": "200", "method": "POST"}
    assert value(samples, "sglang:http_responses_total", **ok) == 1


def test_generate_moves_token_counters_and_latency_histograms(emulator: Emulator) -> None:
    before = scrape(emulator)
    answer = generate(emulator, sampling_params={"max_new_tokens": 12}).json()
    after = scrape(emulator)

    def delta(name: str, **labels: str) -> float:
        old = [s for s in before if s.name == name and labels.items() <= s.labels.items()]
        return value(after, name, **labels) - sum(s.value for s in old)

    meta = answer["meta_info"]
    assert delta("sglang:generation_tokens_total") == meta["completion_tokens"] == 12
    assert delta("sglang:prompt_tokens_total") == meta["prompt_tokens"] > 0
    assert delta("sglang:num_requests_total") == 1
    assert delta("sglang:e2e_request_latency_seconds_count") == 1
    assert delta("sglang:inter_token_latency_seconds_count") == 11
    assert 0 < value(after, "sglang:e2e_request_latency_seconds_sum") < 5
    assert value(after, "sglang:gen_throughput") > 0


def test_repeated_prompt_is_partly_served_from_prefix_cache(emulator: Emulator) -> None:
    generate(emulator)
    meta = generate(emulator).json()["meta_info"]
    assert 0 < meta["cached_tokens"] < meta["prompt_tokens"]
    assert value(scrape(emulator), "sglang:cache_hit_rate") > 0


# -- /generate -------------------------------------------------------------------------------


def test_generate_is_deterministic_and_honours_max_new_tokens(emulator: Emulator) -> None:
    first = generate(emulator, sampling_params={"max_new_tokens": 5}).json()
    second = generate(emulator, sampling_params={"max_new_tokens": 5}).json()
    assert first["text"] == second["text"]
    assert len(first["text"].split()) == 5
    assert first["meta_info"]["finish_reason"] == {"type": "length", "length": 5}
    assert set(first["meta_info"]) >= {"id", "prompt_tokens", "cached_tokens", "e2e_latency"}
    default = generate(emulator).json()
    assert default["meta_info"]["completion_tokens"] == 16


def test_stream_sends_cumulative_text_events_and_ends_with_done(emulator: Emulator) -> None:
    response = generate(emulator, stream=True, sampling_params={"max_new_tokens": 6})
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line for line in response.text.split("\n\n") if line]
    assert all(event.startswith("data: ") for event in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-1]]
    texts = [chunk["text"] for chunk in chunks]
    assert len(texts) == 6
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(texts))
    assert chunks[-1]["meta_info"]["finish_reason"] == {"type": "length", "length": 6}
    assert chunks[0]["meta_info"]["finish_reason"] is None
    samples = scrape(emulator)
    assert value(samples, "sglang:e2e_request_latency_seconds_count", is_streaming="true") == 1


def test_json_schema_sent_as_object_is_refused_with_400(emulator: Emulator) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}}}
    response = generate(emulator, sampling_params={"json_schema": schema})
    assert response.status_code == 400
    assert response.json() == {"error": "invalid type: map, expected a string"}


def test_json_schema_string_yields_json_that_fits_the_schema(emulator: Emulator) -> None:
    properties = {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "score": {"type": "number"},
        "ok": {"type": "boolean"},
    }
    schema = json.dumps({"type": "object", "properties": properties})
    answer = generate(emulator, sampling_params={"json_schema": schema}).json()
    value_ = json.loads(answer["text"])
    assert isinstance(value_["name"], str)
    assert isinstance(value_["age"], int)
    assert isinstance(value_["score"], float)
    assert value_["ok"] is True
    assert answer["meta_info"]["finish_reason"]["type"] == "stop"


def test_simple_regex_yields_a_matching_string(emulator: Emulator) -> None:
    answer = generate(emulator, sampling_params={"regex": "(yes|no)"}).json()
    assert answer["text"] == "yes"


def test_bad_regex_is_refused_with_failed_to_compile(emulator: Emulator) -> None:
    response = generate(emulator, sampling_params={"regex": "(unclosed"})
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("Failed to compile regex grammar: ")
    streamed = generate(emulator, stream=True, sampling_params={"regex": "(unclosed"})
    assert streamed.status_code == 200
    first = json.loads(streamed.text.split("\n\n")[0].removeprefix("data: "))
    finish = first["meta_info"]["finish_reason"]
    assert finish["type"] == "abort"
    assert finish["status_code"] == 400
    assert finish["message"].startswith("Failed to compile")
    assert streamed.text.endswith("data: [DONE]\n\n")
    assert value(scrape(emulator), "sglang:num_grammar_aborted_total") == 2


def test_two_constraints_at_once_are_refused_with_400(emulator: Emulator) -> None:
    params = {"regex": "a+", "json_schema": json.dumps({"type": "object"})}
    assert generate(emulator, sampling_params=params).status_code == 400


def test_invalid_json_body_is_refused_with_400(emulator: Emulator) -> None:
    response = requests.post(emulator.url + "/generate", data=b"{not json", timeout=TIMEOUT)
    assert response.status_code == 400
    assert "error" in response.json()


# -- OpenAI-compatible endpoints -----------------------------------------------------------------


def test_chat_completions_answers_in_openai_shape_and_needs_json(emulator: Emulator) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    answer = post(emulator, "/v1/chat/completions", body).json()
    assert answer["object"] == "chat.completion"
    assert len(answer["choices"][0]["message"]["content"].split()) == 4
    assert answer["usage"]["completion_tokens"] == 4
    not_json = requests.post(
        emulator.url + "/v1/chat/completions",
        data=json.dumps(body),
        headers={"Content-Type": "text/plain"},
        timeout=TIMEOUT,
    )
    assert not_json.status_code == 422
    completion = post(emulator, "/v1/completions", {"prompt": "Once", "max_tokens": 3}).json()
    assert completion["object"] == "text_completion"
    assert completion["usage"]["completion_tokens"] == 3


# -- authentication and information endpoints ------------------------------------------------


def test_api_key_guards_everything_but_health_ready_and_metrics(
    start_emulator: StartEmulator,
) -> None:
    emulator = start_emulator(api_key="s3cret")
    good = {"Authorization": "Bearer s3cret"}
    denied = get(emulator, "/model_info")
    assert denied.status_code == 401
    assert denied.json() == {"error": "Unauthorized"}
    assert get(emulator, "/model_info", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert get(emulator, "/model_info", headers=good).status_code == 200
    assert generate(emulator).status_code == 401
    assert post(emulator, "/generate", {"text": "x"}, headers=good).status_code == 200
    assert get(emulator, "/ping").status_code == 401
    assert get(emulator, "/ping", headers=good).status_code == 200
    for path in ("/health", "/health_generate", "/ready", "/metrics", "/_emulator/fault"):
        assert get(emulator, path).status_code == 200, path


def test_server_info_alias_has_the_same_body_and_echoes_the_api_key(
    start_emulator: StartEmulator,
) -> None:
    emulator = start_emulator(api_key="s3cret", max_running_requests=64)
    auth = {"Authorization": "Bearer s3cret"}
    info = get(emulator, "/server_info", headers=auth).json()
    old = get(emulator, "/get_server_info", headers=auth).json()
    assert info == old
    assert info["api_key"] == "s3cret"
    assert info["version"] == "0.5.23"
    assert info["port"] == int(emulator.url.rsplit(":", 1)[1])
    assert info["max_running_requests"] == 64
    assert info["max_queued_requests"] is None
    assert isinstance(info["launch_command"], str)
    state = info["internal_states"][0]
    assert state["effective_max_running_requests_per_dp"] == 64
    assert set(state["memory_usage"]) == {"weight", "kvcache", "token_capacity", "graph"}
    assert set(state["memory_usage"]["graph"]) == {"decode", "prefill"}


def test_model_info_models_and_loads_describe_the_server(emulator: Emulator) -> None:
    info = get(emulator, "/model_info").json()
    assert info == get(emulator, "/get_model_info").json()
    assert info["model_path"] == MODEL
    assert info["is_generation"] is True
    assert get(emulator, "/v1/models").json()["data"][0]["id"] == MODEL
    load = get(emulator, "/v1/loads").json()["loads"][0]
    assert load["num_running_reqs"] == 0
    assert load["max_running_requests"] == 256
    assert {"num_waiting_reqs", "token_usage", "gen_throughput", "cache_hit_rate"} <= set(load)


def test_unknown_path_answers_404_json(emulator: Emulator) -> None:
    response = get(emulator, "/no_such_thing")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}


# -- operations ------------------------------------------------------------------------------


def test_flush_cache_succeeds_when_idle_and_fails_while_requests_wait(emulator: Emulator) -> None:
    idle = post(emulator, "/flush_cache")
    assert idle.status_code == 200
    assert idle.text.startswith("Cache flushed.\n")
    assert get(emulator, "/flush_cache").status_code == 200
    set_fault(emulator, "queue:3")
    busy = post(emulator, "/flush_cache")
    assert (busy.status_code, busy.text) == (400, "Flush cache failed.")
    timed = post(emulator, "/flush_cache?timeout=0.05")
    assert (timed.status_code, timed.text) == (400, "Timed out waiting for idle state.")


def test_set_internal_state_refuses_max_running_requests_with_false(emulator: Emulator) -> None:
    refused = post(emulator, "/set_internal_state", {"server_args": {"max_running_requests": 8}})
    assert (refused.status_code, refused.json()) == (200, [False])
    taken = post(emulator, "/set_internal_state", {"server_args": {"pp_max_micro_batch_size": 2}})
    assert taken.json() == [True]
    assert post(emulator, "/configure_logging", {"log_requests": True}).status_code == 200


def test_configure_logging_switches_request_dumps_on_and_off_as_sglang_does(
        emulator: Emulator, tmp_path: Path) -> None:
    import pickle

    folder = tmp_path / "dumps"
    on = post(emulator, "/configure_logging",
              {"dump_requests_folder": str(folder), "dump_requests_threshold": 2})
    assert (on.status_code, on.content) == (200, b"")
    generate(emulator, sampling_params={"max_new_tokens": 3})
    assert not folder.exists()  # a file is written once the threshold is reached
    generate(emulator, text="The second one.", sampling_params={"max_new_tokens": 3})
    [dump] = wait_for_files(folder)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d\.pkl", dump.name)
    with dump.open("rb") as kept:
        data = pickle.load(kept)
    assert set(data) == {"server_args", "requests"} and len(data["requests"]) == 2
    request, output, created, finished = data["requests"][1]
    assert request["text"] == "The second one." and output["meta_info"]["completion_tokens"] == 3
    assert created <= finished
    off = post(emulator, "/configure_logging", {"dump_requests_folder": ""})
    assert off.status_code == 200
    for _ in range(3):
        generate(emulator, sampling_params={"max_new_tokens": 1})
    assert list(folder.iterdir()) == [dump]
    wrong = post(emulator, "/configure_logging", {"dump_requests_threshold": "many"})
    assert wrong.status_code == 422
    assert wrong.json()["detail"][0]["loc"] == ["body", "dump_requests_threshold"]


def wait_for_files(folder: Path) -> list[Path]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = sorted(folder.glob("*.pkl")) if folder.exists() else []
        if found:
            return found
        time.sleep(0.02)
    return []


def test_abort_all_clears_the_queue_and_counts_the_call_once(emulator: Emulator) -> None:
    assert "num_aborted_requests_total" not in get(emulator, "/metrics").text  # first use
    set_fault(emulator, "queue:4")
    response = post(emulator, "/abort_request", {"abort_all": True})
    assert (response.status_code, response.content) == (200, b"")
    samples = scrape(emulator)
    assert value(samples, "sglang:num_queue_reqs") == 0
    assert value(samples, "sglang:num_aborted_requests_total") == 1  # as SGLang: per call
    post(emulator, "/abort_request", {"rid": "no-such-request"})
    assert value(scrape(emulator), "sglang:num_aborted_requests_total") == 1
    assert post(emulator, "/flush_cache").status_code == 200


def test_pause_queues_requests_fails_ready_keeps_ping_until_continued(emulator: Emulator) -> None:
    paused = post(emulator, "/pause_generation", {"mode": "in_place"})
    assert paused.status_code == 200
    answers: list[requests.Response] = []
    waiter = threading.Thread(target=lambda: answers.append(generate(emulator)))
    waiter.start()
    poll(lambda: get(emulator, "/v1/loads").json()["loads"][0]["num_waiting_reqs"] == 1)
    assert get(emulator, "/ready").status_code == 503
    assert get(emulator, "/ping").status_code == 200
    assert get(emulator, "/health").status_code == 503  # no output arrives while paused
    assert post(emulator, "/flush_cache").status_code == 400
    assert post(emulator, "/continue_generation", {}).status_code == 200
    waiter.join(TIMEOUT)
    assert answers[0].status_code == 200
    assert get(emulator, "/ready").status_code == 200


def test_abort_all_ends_requests_waiting_in_a_pause(emulator: Emulator) -> None:
    post(emulator, "/pause_generation", {"mode": "in_place"})
    answers: list[requests.Response] = []
    waiter = threading.Thread(target=lambda: answers.append(generate(emulator)))
    waiter.start()
    poll(lambda: value(scrape(emulator), "sglang:num_queue_reqs") == 1)
    assert post(emulator, "/abort_request", {"abort_all": True}).status_code == 200
    waiter.join(TIMEOUT)
    assert answers[0].json()["meta_info"]["finish_reason"]["type"] == "abort"
    samples = scrape(emulator)
    assert value(samples, "sglang:num_aborted_requests_total") == 1
    assert total(samples, "sglang:num_requests_total") == 0


@pytest.mark.parametrize(("default", "queued_as", "counted_as"), [
    (None, str(-(2**63)), ""),  # 0.5.23's scheduler gives it the lowest priority
    (5, "5", "5")])  # --default-priority-value: both sides
def test_a_request_without_priority_is_labelled_as_sglang_labels_it(
        start_emulator: StartEmulator, default: int | None, queued_as: str,
        counted_as: str) -> None:
    emulator = start_emulator(enable_priority_scheduling=True, default_priority_value=default,
                              max_running_requests=1, decode_speed=20.0)
    waiters = [threading.Thread(target=generate, args=(emulator,),
                                kwargs={"sampling_params": {"max_new_tokens": 400}})
               for _ in range(2)]
    for waiter in waiters:
        waiter.start()
    try:
        poll(lambda: value(scrape(emulator), "sglang:num_queue_reqs", priority="") == 1)
        samples = scrape(emulator)
        assert value(samples, "sglang:num_queue_reqs", priority=queued_as) == 1
        assert value(samples, "sglang:num_running_reqs", priority=queued_as) == 1
        gauges = {s.labels["priority"] for s in samples if s.name == "sglang:num_queue_reqs"}
        assert gauges == {"", queued_as}  # neither "None" nor "0"
    finally:
        post(emulator, "/abort_request", {"abort_all": True})
        for waiter in waiters:
            waiter.join(TIMEOUT)
    generate(emulator, sampling_params={"max_new_tokens": 2})
    finished = {s.labels["priority"] for s in scrape(emulator)
                if s.name == "sglang:num_requests_total"}
    assert finished == {counted_as}


@pytest.mark.parametrize(("path", "body"), [
    ("/generate", {"text": "Tell a long story.", "stream": True,
                   "sampling_params": {"max_new_tokens": 400}}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "A long story."}],
                              "stream": True, "max_tokens": 400})])
def test_a_client_that_hangs_up_mid_stream_aborts_its_request_counted_once(
        start_emulator: StartEmulator, path: str, body: dict[str, Any]) -> None:
    emulator = start_emulator(decode_speed=40.0)  # 400 tokens: 10 s
    with requests.post(emulator.url + path, json=body, stream=True, timeout=TIMEOUT) as answer:
        lines = answer.iter_lines()
        first = next(line for line in lines if line.startswith(b"data: "))
        assert b"[DONE]" not in first  # mid-stream
        poll(lambda: value(scrape(emulator), "sglang:num_running_reqs") == 1)
    # the connection is closed here, the request still decoding
    poll(lambda: total(scrape(emulator), "sglang:num_aborted_requests_total") == 1)
    poll(lambda: value(scrape(emulator), "sglang:num_running_reqs") == 0)
    samples = scrape(emulator)
    assert value(samples, "sglang:num_aborted_requests_total") == 1  # once, not per look
    assert {s.labels["model_name"] for s in samples
            if s.name == "sglang:num_aborted_requests_total"} == {MODEL}
    # as SGLang: aborted while running, it still finishes (its e2e observed, no TTFT, no TPOT)
    assert value(samples, "sglang:num_requests_total", is_streaming="true") == 1
    assert value(samples, "sglang:e2e_request_latency_seconds_count") == 1
    assert total(samples, "sglang:time_to_first_token_seconds_count") == 0
    decoded = value(samples, "sglang:realtime_tokens_total", mode="decode")
    assert 0 < decoded < 400
    assert value(samples, "sglang:http_responses_total", endpoint=path, status_code="200") == 1


def test_a_client_that_hangs_up_on_a_plain_request_aborts_it_at_the_next_wait_timeout(
        start_emulator: StartEmulator) -> None:
    emulator = start_emulator(decode_speed=20.0)  # 400 tokens: 20 s
    client = http.client.HTTPConnection(emulator.url.removeprefix("http://"), timeout=TIMEOUT)
    client.request("POST", "/generate", json.dumps(
        {"text": "hi", "sampling_params": {"max_new_tokens": 400}}),
        {"Content-Type": "application/json"})
    poll(lambda: value(scrape(emulator), "sglang:num_running_reqs") == 1)
    client.close()  # gives up without reading the answer
    # SGLang looks every 4 s while it waits for output
    poll(lambda: total(scrape(emulator), "sglang:num_aborted_requests_total") == 1, 6.0)
    samples = scrape(emulator)
    assert value(samples, "sglang:num_running_reqs") == 0
    gone = {"endpoint": "/generate", "status_code": "400"}  # its ValueError, sent to nobody
    poll(lambda: total(scrape(emulator), "sglang:http_responses_total", **gone) == 1)
    assert value(samples, "sglang:num_requests_total", is_streaming="false") == 1


def test_a_client_that_waits_for_its_answer_aborts_nothing(
        start_emulator: StartEmulator) -> None:
    emulator = start_emulator(decode_speed=200.0)
    with requests.post(emulator.url + "/generate", stream=True, timeout=TIMEOUT,
                       json={"text": "hi", "stream": True,
                             "sampling_params": {"max_new_tokens": 200}}) as answer:
        events = [line for line in answer.iter_lines() if line.startswith(b"data: ")]
    assert events[-1] == b"data: [DONE]" and len(events) > 2  # sent while decoding
    assert json.loads(events[-2][6:])["meta_info"]["completion_tokens"] == 200
    assert generate(emulator, sampling_params={"max_new_tokens": 100}).status_code == 200
    samples = scrape(emulator)
    assert total(samples, "sglang:num_aborted_requests_total") == 0
    assert value(samples, "sglang:num_requests_total") == 2


def test_pause_in_abort_mode_aborts_again_a_second_later_while_requests_were_in_flight(
        start_emulator: StartEmulator) -> None:
    emulator = start_emulator(decode_speed=20.0)
    assert post(emulator, "/pause_generation", {"mode": "abort"}).status_code == 200
    assert value(scrape(emulator), "sglang:num_aborted_requests_total") == 1  # idle: once
    post(emulator, "/continue_generation", {})
    waiter = threading.Thread(target=generate, args=(emulator,),
                              kwargs={"sampling_params": {"max_new_tokens": 400}})
    waiter.start()
    poll(lambda: value(scrape(emulator), "sglang:num_running_reqs") == 1)
    assert post(emulator, "/pause_generation", {"mode": "abort"}).status_code == 200
    waiter.join(TIMEOUT)
    # SGLang: abort_all, its model lock still held by the request, 1 s, abort_all again
    assert value(scrape(emulator), "sglang:num_aborted_requests_total") == 3


def test_a_structured_request_is_counted_when_it_finishes(
        start_emulator: StartEmulator) -> None:
    emulator = start_emulator(decode_speed=1.0)  # the short JSON answer takes seconds
    schema = json.dumps({"type": "object", "properties": {"a": {"type": "string"}}})
    answers: list[requests.Response] = []
    waiter = threading.Thread(target=lambda: answers.append(generate(
        emulator, sampling_params={"json_schema": schema, "max_new_tokens": 100})))
    waiter.start()
    poll(lambda: value(scrape(emulator), "sglang:num_running_reqs") == 1)
    assert "num_so_requests_total" not in get(emulator, "/metrics").text  # not on arrival
    waiter.join(TIMEOUT)
    assert answers[0].status_code == 200
    assert value(scrape(emulator), "sglang:num_so_requests_total") == 1


# -- faults ----------------------------------------------------------------------------------


def test_error_fault_fails_inference_and_counts_the_status(emulator: Emulator) -> None:
    assert set_fault(emulator, "error:503").json() == {"mode": "error:503"}
    assert generate(emulator).status_code == 503
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    assert post(emulator, "/v1/chat/completions", chat).status_code == 503
    assert get(emulator, "/model_info").status_code == 200
    failed = {"endpoint": "/generate", "status_code": "503", "method": "POST"}
    assert value(scrape(emulator), "sglang:http_responses_total", **failed) == 1
    set_fault(emulator, None)
    assert generate(emulator).status_code == 200


def test_queue_fault_shows_waiting_requests(emulator: Emulator) -> None:
    set_fault(emulator, "queue:7")
    assert value(scrape(emulator), "sglang:num_queue_reqs") == 7
    assert get(emulator, "/v1/loads").json()["loads"][0]["num_waiting_reqs"] == 7
    assert get(emulator, "/_emulator/fault").json() == {"mode": "queue:7"}
    set_fault(emulator, "none")
    assert value(scrape(emulator), "sglang:num_queue_reqs") == 0


def test_slow_fault_delays_every_endpoint_but_the_control_api(emulator: Emulator) -> None:
    emulator.set_fault("slow:0.3")
    calls: list[Callable[[], requests.Response]] = [
        lambda: get(emulator, "/metrics"),
        lambda: generate(emulator),
    ]
    for call in calls:
        began = time.monotonic()
        assert call().status_code == 200
        assert time.monotonic() - began >= 0.3
    began = time.monotonic()
    assert get(emulator, "/_emulator/fault").json() == {"mode": "slow:0.3"}
    assert time.monotonic() - began < 0.2


def test_hang_fault_answers_nothing_until_cleared(start_emulator: StartEmulator) -> None:
    emulator = start_emulator(fault="hang")
    with pytest.raises(requests.ReadTimeout):
        get(emulator, "/health", timeout=0.3)
    assert get(emulator, "/_emulator/fault").json() == {"mode": "hang"}
    set_fault(emulator, None)
    assert get(emulator, "/health").status_code == 200


def stop_during(emulator: Emulator, ask: Callable[[], object]) -> list[object]:
    """Stop the emulator while `ask` is in flight in a thread; the stop must take under 1 s.
    What `ask` returned or raised, once its thread has ended."""
    outcomes: list[object] = []

    def request() -> None:
        try:
            outcomes.append(ask())
        except requests.RequestException as exc:
            outcomes.append(exc)

    client = threading.Thread(target=request)
    client.start()
    poll(lambda: emulator.active_requests == 1)
    began = time.monotonic()
    emulator.stop()
    assert time.monotonic() - began < 1.0
    client.join(TIMEOUT)
    assert not client.is_alive()
    return outcomes


def test_stop_returns_promptly_while_requests_hang(start_emulator: StartEmulator) -> None:
    emulator = start_emulator(fault="hang")
    stop_during(emulator, lambda: get(emulator, "/model_info"))


def test_crash_fault_calls_the_exit_function_and_stops_serving(
    start_emulator: StartEmulator,
) -> None:
    exits: list[int] = []
    exited = threading.Event()

    def fake_exit(code: int) -> None:  # stands in for os._exit, which would end pytest
        exits.append(code)
        exited.set()

    emulator = start_emulator(exit_fn=fake_exit)
    assert set_fault(emulator, "crash:0.05").status_code == 200
    assert exited.wait(TIMEOUT)
    assert exits == [1]
    poll(lambda: _refused(emulator))


def _refused(emulator: Emulator) -> bool:
    try:
        get(emulator, "/health", timeout=0.5)
    except requests.ConnectionError:
        return True
    return False


def test_crash_at_start_exits_at_once(start_emulator: StartEmulator) -> None:
    exited = threading.Event()
    start_emulator(exit_fn=lambda code: exited.set(), fault="crash")
    assert exited.wait(TIMEOUT)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hang", Fault("hang")),
        ("slow:2.5", Fault("slow", seconds=2.5)),
        ("crash", Fault("crash")),
        ("crash:3", Fault("crash", seconds=3.0)),
        ("error:503", Fault("error", status=503)),
        ("queue:50", Fault("queue", count=50)),
        (" SLOW : 1 ", Fault("slow", seconds=1.0)),
        ("slow_ttft:1.5", Fault("slow_ttft", seconds=1.5)),
        ("bad_output", Fault("bad_output")),
        ("stall", Fault("stall")),
        ("errors:0.25", Fault("errors", fraction=0.25)),
        ("errors:1", Fault("errors", fraction=1.0)),
        ("memory_growth:64", Fault("memory_growth", rate=64.0)),
    ],
)
def test_parse_fault_reads_each_mode(text: str, expected: Fault) -> None:
    assert parse_fault(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("explode", "unknown fault 'explode': valid modes are hang, slow:SECONDS"),
        ("slow", "slow needs SECONDS"),
        ("slow:soon", "SECONDS must be a number"),
        ("slow:-1", "SECONDS must be a finite number >= 0"),
        ("error:200", "STATUS must be between 400 and 599"),
        ("queue:many", "N must be an integer"),
        ("hang:5", "hang takes no argument"),
        ("slow_ttft", "slow_ttft needs SECONDS"),
        ("stall:3", "stall takes no argument"),
        ("bad_output:json", "bad_output takes no argument"),
        ("errors", "errors needs FRACTION"),
        ("errors:1.5", "FRACTION must be between 0 and 1"),
        ("errors:-0.1", "FRACTION must be a finite number >= 0"),
        ("memory_growth:fast", "MIB_PER_MIN must be a number"),
    ],
)
def test_parse_fault_names_the_valid_modes_on_bad_text(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="valid modes are hang, slow:SECONDS, crash") as caught:
        parse_fault(text)
    assert message in str(caught.value)
    for mode in NEW_MODES:
        assert mode in str(caught.value)


NEW_MODES = ("slow_ttft:SECONDS", "bad_output", "stall", "errors:FRACTION", "memory_growth:")


def test_fault_endpoint_refuses_bad_modes_with_400(emulator: Emulator) -> None:
    response = set_fault(emulator, "explode")
    assert response.status_code == 400
    assert "valid modes" in response.json()["error"]
    assert get(emulator, "/_emulator/fault").json() == {"mode": None}
    with pytest.raises(ValueError, match="unknown fault"):
        Emulator(EmulatorOptions(port=0, fault="explode"))


# -- synthetic load (--load) -----------------------------------------------------------------

GENERATE = {"endpoint": "/generate", "method": "POST"}


def total(samples: list[Sample], name: str, **labels: str) -> float:
    """Like value(), but 0 when no such series exists yet."""
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def test_load_serves_synthetic_generate_requests_that_move_the_metrics(
    start_emulator: StartEmulator,
) -> None:
    emulator = start_emulator(load=50)
    ok = {**GENERATE, "status_code": "200"}
    poll(lambda: total(scrape(emulator), "sglang:http_responses_total", **ok) >= 3)
    poll(lambda: value(scrape(emulator), "sglang:num_running_reqs") > 0)
    samples = scrape(emulator)
    assert value(samples, "sglang:num_requests_total") >= 3
    assert value(samples, "sglang:prompt_tokens_total") > 0
    assert value(samples, "sglang:generation_tokens_total") >= 3 * 24
    assert value(samples, "sglang:http_requests_total", **GENERATE) >= 3
    for name in (*REQUEST_HISTOGRAMS, "queue_time_seconds"):
        assert value(samples, f"sglang:{name}_count") >= 3, name
    # Each synthetic request models 24..64 tokens at ~11 ms: 0.27 s or more from end to end.
    e2e_mean = value(samples, "sglang:e2e_request_latency_seconds_sum") / value(
        samples, "sglang:e2e_request_latency_seconds_count"
    )
    assert e2e_mean > 0.25
    assert get(emulator, "/v1/loads").json()["loads"][0]["num_running_reqs"] > 0


def test_load_costs_little_cpu_and_stops_with_the_emulator(start_emulator: StartEmulator) -> None:
    emulator = start_emulator(load=20)
    poll(lambda: value(scrape(emulator), "sglang:num_running_reqs") > 0)
    cpu, wall = time.process_time(), time.monotonic()
    time.sleep(0.5)  # CPU use is a rate: it needs a window of wall time
    share = (time.process_time() - cpu) / (time.monotonic() - wall)
    assert share < 0.10
    assert value(scrape(emulator), "sglang:num_running_reqs") > 0
    emulator.stop()
    poll(lambda: not _load_threads())


def _load_threads() -> list[str]:
    prefixes = ("sglguard-emulator-load", "sglguard-emulator-synthetic")
    return [t.name for t in threading.enumerate() if t.name.startswith(prefixes)]


# -- faults: slow_ttft, bad_output, stall, errors, memory_growth ------------------------------


def test_slow_ttft_delays_the_first_streamed_chunk_and_shows_in_ttft(emulator: Emulator) -> None:
    assert set_fault(emulator, "slow_ttft:0.3").json() == {"mode": "slow_ttft:0.3"}
    body = {"text": "hi", "stream": True, "sampling_params": {"max_new_tokens": 4}}
    began = time.monotonic()
    with requests.post(emulator.url + "/generate", json=body, stream=True, timeout=TIMEOUT) as r:
        headers_after = time.monotonic() - began
        first = next(r.iter_lines())
        first_after = time.monotonic() - began
    assert headers_after < 0.25
    assert first_after >= 0.3
    assert first.startswith(b"data: ")
    began = time.monotonic()
    assert generate(emulator).status_code == 200
    assert time.monotonic() - began >= 0.3
    samples = scrape(emulator)
    assert total(samples, "sglang:time_to_first_token_seconds_bucket", le="0.2") == 0
    assert value(samples, "sglang:time_to_first_token_seconds_sum") >= 2 * 0.3
    assert value(samples, "sglang:e2e_request_latency_seconds_sum") >= 2 * 0.3


def test_slow_ttft_is_modelled_for_synthetic_load(start_emulator: StartEmulator) -> None:
    emulator = start_emulator(load=50, fault="slow_ttft:5")
    poll(lambda: total(scrape(emulator), "sglang:time_to_first_token_seconds_count") >= 3)
    samples = scrape(emulator)
    count = value(samples, "sglang:time_to_first_token_seconds_count")
    assert value(samples, "sglang:time_to_first_token_seconds_bucket", le="4.0") == 0
    assert value(samples, "sglang:time_to_first_token_seconds_sum") >= 5 * count
    e2e_count = value(samples, "sglang:e2e_request_latency_seconds_count")
    assert value(samples, "sglang:e2e_request_latency_seconds_sum") >= 5 * e2e_count


def test_bad_output_breaks_constrained_output_in_an_ordinary_200(emulator: Emulator) -> None:
    set_fault(emulator, "bad_output")
    schema = json.dumps({"type": "object", "properties": {"name": {"type": "string"}}})
    for params in ({"json_schema": schema}, {"json_schema": json.dumps({"type": "integer"})}):
        answer = generate(emulator, sampling_params=params)
        assert answer.status_code == 200
        with pytest.raises(json.JSONDecodeError):
            json.loads(answer.json()["text"])
    for pattern in ("(yes|no)", r"\d{4}-\d{2}-\d{2}", "[a-z]+"):
        answer = generate(emulator, sampling_params={"regex": pattern})
        assert answer.status_code == 200
        assert re.fullmatch(pattern, answer.json()["text"]) is None, pattern
    plain = generate(emulator, sampling_params={"max_new_tokens": 5}).json()
    assert len(plain["text"].split()) == 5
    set_fault(emulator, None)
    assert json.loads(generate(emulator, sampling_params={"json_schema": schema}).json()["text"])


def test_stall_keeps_requests_running_blocks_generate_and_fails_health_at_its_timeout(
    emulator: Emulator,
) -> None:
    assert set_fault(emulator, "stall").status_code == 200
    assert value(scrape(emulator), "sglang:num_running_reqs") == 1  # stuck, though none sent
    answers: list[requests.Response] = []
    clients = [threading.Thread(target=lambda: answers.append(generate(emulator))) for _ in "ab"]
    for client in clients:
        client.start()
    poll(lambda: get(emulator, "/v1/loads").json()["loads"][0]["num_running_reqs"] == 2)
    began = time.monotonic()
    assert get(emulator, "/health").status_code == 503  # no output within the health timeout
    assert time.monotonic() - began >= 0.2
    samples = scrape(emulator)
    assert value(samples, "sglang:num_running_reqs") == 2
    assert total(samples, "sglang:generation_tokens_total") == 0
    assert get(emulator, "/server_info").status_code == 200
    assert post(emulator, "/flush_cache").status_code == 400
    assert not answers
    assert set_fault(emulator, None).status_code == 200
    for client in clients:
        client.join(TIMEOUT)
    assert [a.status_code for a in answers] == [200, 200]
    assert value(scrape(emulator), "sglang:generation_tokens_total") == 2 * 16
    assert get(emulator, "/health").status_code == 200


def test_stall_stops_synthetic_load_from_completing(start_emulator: StartEmulator) -> None:
    emulator = start_emulator(load=50)
    poll(lambda: total(scrape(emulator), "sglang:generation_tokens_total") > 0)
    set_fault(emulator, "stall")
    before = scrape(emulator)
    assert get(emulator, "/health").status_code == 503  # waits 0.2 s: time for tokens to move
    after = scrape(emulator)
    for name in ("sglang:generation_tokens_total", "sglang:num_requests_total",
                 "sglang:realtime_tokens_total"):
        assert value(after, name) == value(before, name), name
    assert value(after, "sglang:num_running_reqs") >= 1
    set_fault(emulator, None)
    tokens = value(after, "sglang:generation_tokens_total")
    poll(lambda: value(scrape(emulator), "sglang:generation_tokens_total") > tokens)


def test_stop_returns_promptly_while_generate_is_stalled(start_emulator: StartEmulator) -> None:
    emulator = start_emulator(fault="stall")
    assert stop_during(emulator, lambda: generate(emulator))


def test_errors_fault_fails_an_exact_share_in_an_even_pattern(emulator: Emulator) -> None:
    set_fault(emulator, "errors:0.37")
    with requests.Session() as session:
        url = emulator.url + "/generate"
        answers = [session.post(url, json={"text": "x"}, timeout=TIMEOUT) for _ in range(100)]
    statuses = [answer.status_code for answer in answers]
    assert statuses.count(503) == 37
    assert set(statuses) == {200, 503}
    failed = {**GENERATE, "status_code": "503"}
    assert value(scrape(emulator), "sglang:http_responses_total", **failed) == 37
    assert get(emulator, "/model_info").status_code == 200  # only inference fails
    set_fault(emulator, "errors:0.25")  # the count starts again with each fault
    assert [generate(emulator).status_code for _ in range(8)] == [200, 503, 200, 200] * 2
    set_fault(emulator, "errors:0.5")
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    assert post(emulator, "/v1/chat/completions", chat).status_code == 503
    assert post(emulator, "/v1/completions", {"prompt": "Once"}).status_code == 200
    assert post(emulator, "/v1/completions", {"prompt": "Once"}).status_code == 503


def test_errors_fault_fails_synthetic_load_too(start_emulator: StartEmulator) -> None:
    emulator = start_emulator(load=50, fault="errors:1")
    failed = {**GENERATE, "status_code": "503"}
    poll(lambda: total(scrape(emulator), "sglang:http_responses_total", **failed) >= 3)
    samples = scrape(emulator)
    assert total(samples, "sglang:http_responses_total", **GENERATE, status_code="200") == 0
    assert total(samples, "sglang:num_requests_total") == 0


def test_memory_growth_grows_kvcache_at_the_set_rate(start_emulator: StartEmulator) -> None:
    now = [1000.0]  # the one faked boundary: the emulator's clock
    emulator = start_emulator(clock=lambda: now[0])

    def usage() -> dict[str, Any]:
        memory: dict[str, Any] = get(emulator, "/server_info").json()["internal_states"][0][
            "memory_usage"
        ]
        return memory

    before = usage()
    assert set_fault(emulator, "memory_growth:60").json() == {"mode": "memory_growth:60"}
    assert usage() == before
    now[0] += 120.0  # two minutes at 60 MiB/min: 120 MiB
    after = usage()
    assert after["kvcache"] - before["kvcache"] == pytest.approx(120 / 1024, abs=1e-9)
    assert after["weight"] == before["weight"]
    samples = scrape(emulator)
    assert value(samples, "sglang:num_used_tokens") == 120 / 1024 * 8192  # 128 KiB a token
    assert value(samples, "sglang:token_usage") > 0
    set_fault(emulator, None)
    assert usage() == before


# -- older releases (--metrics-version legacy) ------------------------------------------------

DOCS_SAMPLE = REPO_ROOT / "tests" / "fixtures" / "sglang-metrics-docs-sample.txt"


def _bounds(samples: list[Sample], histogram: str) -> list[float]:
    return [float(s.labels["le"]) for s in samples if s.name == histogram + "_bucket"]


def test_legacy_metrics_have_the_docs_sample_families_labels_and_buckets(
    start_emulator: StartEmulator,
) -> None:
    emulator = start_emulator(metrics_version="legacy")
    generate(emulator, sampling_params={"max_new_tokens": 8})
    generate(emulator, stream=True, sampling_params={"max_new_tokens": 8})
    text = get(emulator, "/metrics").text
    families = list(text_string_to_metric_families(text))
    samples = [sample for family in families for sample in family.samples]
    sample_families = list(text_string_to_metric_families(DOCS_SAMPLE.read_text()))
    reference = [sample for family in sample_families for sample in family.samples]
    expected = {f.name for f in sample_families} - {"sglang:func_latency_seconds"}
    assert {f.name for f in families} == expected
    assert all(set(s.labels) - {"le"} == {"model_name"} for s in samples)
    assert "request_time_per_output_token" not in text
    for name in ("time_to_first_token", "e2e_request_latency", "time_per_output_token"):
        histogram = f"sglang:{name}_seconds"
        assert _bounds(samples, histogram) == _bounds(reference, histogram), name
    # Observed per output token, as the sample's counts show: 7 gaps in each of 2 requests.
    assert value(samples, "sglang:time_per_output_token_seconds_count") == 14


def test_legacy_release_has_old_endpoint_names_and_a_plain_health(
    start_emulator: StartEmulator,
) -> None:
    emulator = start_emulator(metrics_version="legacy", health_latency=5.0, fault="stall")
    began = time.monotonic()
    assert get(emulator, "/health").status_code == 200  # no generation, not even when stuck
    assert time.monotonic() - began < 1.0
    assert get(emulator, "/server_info").status_code == 404
    assert get(emulator, "/model_info").status_code == 404
    info = get(emulator, "/get_server_info").json()
    assert info["version"] != "0.5.23"
    assert isinstance(info["internal_states"][0]["memory_usage"]["graph"], float)
    assert get(emulator, "/get_model_info").json()["model_path"] == MODEL


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"load": -1.0}, "load must be a finite number >= 0"),
        ({"load": float("inf")}, "load must be a finite number >= 0"),
        ({"load": 5000.0}, "load must be at most 1000"),
        ({"metrics_version": "0.4"}, "metrics_version must be one of 0.5.23, legacy"),
    ],
)
def test_emulator_options_refuse_bad_load_and_metrics_version(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        EmulatorOptions(**options)


# -- the command line ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_module_serves_quickly_and_exits_0_on_sigterm() -> None:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "sglguard.emulator", "--port", str(port)]
    began = time.monotonic()
    child = subprocess.Popen(
        [*command, "--health-latency", "0.02"], cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return requests.get(url + "/health", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        poll(healthy, deadline_s=5.0)
        assert time.monotonic() - began < 1.5  # interpreter start included
        child.send_signal(signal.SIGTERM)
        _, stderr = child.communicate(timeout=5)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0
    assert f"sglguard emulator listening on {url}" in stderr.decode()


def test_cli_emulator_lists_the_new_options_and_refuses_bad_values_with_2() -> None:
    runner = CliRunner()
    shown = runner.invoke(main, ["emulator", "--help"])
    assert shown.exit_code == 0
    for text in ("--load", "--metrics-version", "[0.5.23|legacy]", "slow_ttft:SECONDS", "stall"):
        assert text in shown.output
    bad = {
        ("--load", "-1"): "Invalid value for '--load'",
        ("--load", "fast"): "Invalid value for '--load'",
        ("--metrics-version", "0.4"): "Invalid value for '--metrics-version'",
        ("--fault", "errors:2"): "FRACTION must be between 0 and 1",
    }
    for args, message in bad.items():
        result = runner.invoke(main, ["emulator", "--port", "0", *args])
        assert result.exit_code == 2, args
        assert message in result.output, args
    command = main.commands["emulator"]
    choice = next(p.type for p in command.params if p.name == "metrics_version")
    assert isinstance(choice, click.Choice)
    assert tuple(choice.choices) == METRICS_VERSIONS


def test_module_parser_takes_load_and_metrics_version() -> None:
    args = build_parser().parse_args(["--load", "5", "--metrics-version", "legacy"])
    assert (args.load, args.metrics_version) == (5.0, "legacy")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--metrics-version", "0.4"])


# -- fidelity to 0.5.23 ------------------------------------------------------------------------


def test_a_chunked_request_body_is_read_as_a_gateway_sends_it(emulator: Emulator) -> None:
    body = json.dumps({"text": "Say something kind.", "sampling_params": {"max_new_tokens": 4}})

    def pieces() -> Any:
        yield body[:10].encode()
        yield body[10:].encode()

    response = requests.post(emulator.url + "/generate", data=pieces(), timeout=TIMEOUT,
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    assert response.json()["meta_info"]["completion_tokens"] == 4


def test_streamed_chat_completion_sends_chunks_then_done(emulator: Emulator) -> None:
    response = post(emulator, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 5})
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in response.text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    text = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks)
    assert text
    streamed = {"endpoint": "/v1/chat/completions", "method": "POST", "status_code": "200"}
    samples = scrape(emulator)
    assert value(samples, "sglang:http_responses_total", **streamed) == 1
    assert value(samples, "sglang:num_requests_total", is_streaming="true") == 1


def test_loads_and_v1_loads_list_one_load_per_dp_rank(start_emulator: StartEmulator) -> None:
    emulator = start_emulator(dp_size=3)
    for path in ("/loads", "/v1/loads"):
        body = get(emulator, path).json()
        assert body["dp_rank_count"] == 3
        assert [load["dp_rank"] for load in body["loads"]] == [0, 1, 2]


def test_warmup_creates_the_latency_series_unless_skipped(start_emulator: StartEmulator) -> None:
    warm = start_emulator(skip_server_warmup=False)
    cold = start_emulator(skip_server_warmup=True)
    warm_page, cold_page = get(warm, "/metrics").text, get(cold, "/metrics").text
    assert "sglang:time_to_first_token_seconds_count" in warm_page
    assert "sglang:generation_tokens_total" in warm_page
    for absent in ("time_to_first_token_seconds", "generation_tokens_total",
                   "realtime_tokens_total", "num_requests_total"):
        assert absent not in cold_page, absent
    assert 'sglang:startup_time_seconds{engine_type="unified"' in cold_page
    assert value(scrape(warm), "sglang:http_requests_total", endpoint="/generate") == 1


def test_a_prefill_worker_observes_no_ttft_itl_or_tpot(start_emulator: StartEmulator) -> None:
    emulator = start_emulator(disaggregation_mode="prefill")
    generate(emulator, sampling_params={"max_new_tokens": 8})
    page = get(emulator, "/metrics").text
    for absent in ("time_to_first_token_seconds", "inter_token_latency_seconds",
                   "request_time_per_output_token_seconds"):
        assert absent not in page, absent
    samples = scrape(emulator)
    assert value(samples, "sglang:e2e_request_latency_seconds_count",
                 engine_type="prefill") == 1
    assert total(samples, "sglang:realtime_tokens_total", mode="decode") == 0
    assert value(samples, "sglang:realtime_tokens_total", mode="prefill_compute") > 0


def test_decode_counter_moves_every_step_of_a_long_request(start_emulator: StartEmulator) -> None:
    emulator = start_emulator(decode_speed=100.0)
    worker = threading.Thread(target=generate, args=(emulator,), kwargs={
        "rid": "long", "sampling_params": {"max_new_tokens": 1000}}, daemon=True)
    worker.start()
    poll(lambda: emulator.active_requests >= 1)

    def decoded() -> float:
        return total(scrape(emulator), "sglang:realtime_tokens_total", mode="decode")

    first = decoded()
    poll(lambda: decoded() > first + 5)
    samples = scrape(emulator)
    assert value(samples, "sglang:num_running_reqs") == 1
    assert total(samples, "sglang:generation_tokens_total") == 0  # nothing finished
    post(emulator, "/abort_request", {"rid": "long"})
    worker.join(TIMEOUT)


def test_a_restarted_emulator_starts_clean(start_emulator: StartEmulator) -> None:
    first = start_emulator()
    post(first, "/abort_request", {"abort_all": True})
    generate(first, stream=True)
    assert "num_aborted_requests_total" in get(first, "/metrics").text
    port = int(first.url.rsplit(":", 1)[1])
    first.stop()
    again = start_emulator(port=port)
    page = get(again, "/metrics").text
    assert "num_aborted_requests_total" not in page
    assert 'is_streaming="true"' not in page


def test_pause_in_retract_mode_counts_retractions_on_first_use(
        start_emulator: StartEmulator) -> None:
    emulator = start_emulator(decode_speed=100.0)
    assert "num_retracted_requests_total" not in get(emulator, "/metrics").text
    worker = threading.Thread(target=generate, args=(emulator,), kwargs={
        "rid": "long", "sampling_params": {"max_new_tokens": 1000}}, daemon=True)
    worker.start()
    poll(lambda: value(scrape(emulator), "sglang:num_running_reqs") == 1)
    assert post(emulator, "/pause_generation", {"mode": "retract"}).status_code == 200
    samples = scrape(emulator)
    assert value(samples, "sglang:num_retracted_requests_total") == 1
    assert value(samples, "sglang:num_retracted_input_tokens_total") > 0
    assert "pid" in next(s for s in samples if s.name == "sglang:num_retracted_reqs").labels
    assert (value(samples, "sglang:num_retracted_reqs"), value(samples, "sglang:num_running_reqs"),
            value(samples, "sglang:num_queue_reqs")) == (1, 0, 1)
    assert post(emulator, "/continue_generation", {}).status_code == 200
    samples = scrape(emulator)
    assert (value(samples, "sglang:num_retracted_reqs"),
            value(samples, "sglang:num_running_reqs")) == (0, 1)
    post(emulator, "/abort_request", {"rid": "long"})
    worker.join(TIMEOUT)
