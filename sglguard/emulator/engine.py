"""Runs one emulated generation: admission, queueing, output and what it adds to the metrics."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from .context import EmulatorContext
from .snapshot import GenerationRecord
from .structured import Constraint, constrained_text, violating_text
from .textgen import output_pieces, prompt_tokens, synth_words, word_pieces
from .wire import BadRequest

DEFAULT_MAX_NEW_TOKENS = 16
LLAMA_EOS_TOKEN = 128009

# Latency model of an 8B model on one H100, added to the real time a request took so that the
# histograms read like a GPU server's without the emulator sleeping for every token.
PREFILL_BASE_S = 0.018
PREFILL_PER_TOKEN_S = 0.00009
DECODE_ITL_S = 0.011
QUEUE_BASE_S = 0.0004
QUEUE_PER_WAITING_S = 0.02  # what a backlog (the `queue` fault) costs each new request
# A stream decoding in real time sends an event this often at least, and at most
# MAX_PROGRESS_EVENTS of them (cumulative text resent per event must stay small).
PROGRESS_EVERY_S = 0.5
MAX_PROGRESS_EVENTS = 32


@dataclass(frozen=True)
class Job:
    """One generation request as the engine needs it."""

    rid: str
    prompt: str
    max_new_tokens: int
    constraint: Constraint | None
    streaming: bool
    started: float  # time.monotonic() when the request arrived
    # Synthetic load (--load): held running for its modelled duration; fault delays modelled.
    synthetic: bool = False
    priority: int | None = None  # with --enable-priority-scheduling
    client_gone: Callable[[], bool] | None = None  # the HTTP client hung up: abort
    # Called with the output so far while the request decodes in real time (a live stream).
    on_progress: Callable[[Outcome], None] | None = None


@dataclass(frozen=True)
class Outcome:
    """A finished (or aborted) generation."""

    rid: str
    pieces: tuple[str, ...]
    prompt_tokens: int
    cached_tokens: int
    finish_reason: dict[str, Any]
    e2e_latency: float
    first_token_delay: float = 0.0  # a stream waits this long before its first event
    disconnected: bool = False  # aborted because the client hung up

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def completion_tokens(self) -> int:
        return len(self.pieces)


def new_rid() -> str:
    return uuid.uuid4().hex


def read_max_new_tokens(params: Mapping[str, Any], key: str = "max_new_tokens") -> int:
    value = params.get(key)
    if value is None:
        return DEFAULT_MAX_NEW_TOKENS
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest({"error": {"message": f"{key} must be a non-negative integer"}})
    return value


def run_job(ctx: EmulatorContext, job: Job) -> Outcome:
    """Queue, 'generate' and record one request; faults hold it while it runs."""
    state = ctx.state
    prompt = prompt_tokens(job.prompt)
    cached = state.admit(job.rid, prompt, job.priority, client_gone=job.client_gone,
                         streaming=job.streaming)
    try:
        backlog = state.queued_by_fault
        if not state.wait_to_run(job.rid):
            return _aborted(ctx, job, len(prompt), cached)
        running_since = time.monotonic()
        queue_time = running_since - job.started + QUEUE_BASE_S + QUEUE_PER_WAITING_S * backlog
        admitted = _Admitted(len(prompt), cached, queue_time, running_since)
        ctx.faults.delay_if_slow()
        outcome = None if state.was_aborted(job.rid) else _generate(ctx, job, admitted)
        if outcome is None:  # aborted while running: SGLang counts it as finished
            state.record_aborted(job.rid, GenerationRecord(
                prompt_tokens=len(prompt), completion_tokens=0, cached_tokens=cached,
                queue_time=queue_time, ttft=0.0, itl=0.0,
                e2e=time.monotonic() - job.started, streaming=job.streaming,
                structured=job.constraint is not None))
            return _aborted(ctx, job, len(prompt), cached)
        return outcome
    finally:
        state.release(job.rid)


@dataclass(frozen=True)
class _Admitted:
    prompt_tokens: int
    cached_tokens: int
    queue_time: float
    running_since: float


def _generate(ctx: EmulatorContext, job: Job, adm: _Admitted) -> Outcome | None:
    """Output, latencies and metrics of a running request; None if it got aborted meanwhile."""
    pieces, finish = _output(job, bad=ctx.faults.is_active("bad_output"))
    prefill = PREFILL_BASE_S + PREFILL_PER_TOKEN_S * (adm.prompt_tokens - adm.cached_tokens)
    ttft = adm.queue_time + (time.monotonic() - adm.running_since) + prefill
    decode = DECODE_ITL_S * max(len(pieces) - 1, 0)
    if job.synthetic and not ctx.state.hold(job.rid, prefill + decode):
        return None
    speed = ctx.options.decode_speed
    if speed > 0 and not job.synthetic:  # a real-time decode: the request runs that long
        decode = len(pieces) / speed
        ctx.state.begin_decode(job.rid, len(pieces))
        if not _decode(ctx, job, Outcome(job.rid, pieces, adm.prompt_tokens, adm.cached_tokens,
                                         {}, 0.0), speed):
            return None
    extra = _first_token_delay(ctx, job)
    rec = GenerationRecord(
        prompt_tokens=adm.prompt_tokens,
        completion_tokens=len(pieces),
        cached_tokens=adm.cached_tokens,
        queue_time=adm.queue_time,
        ttft=ttft + extra,
        itl=DECODE_ITL_S,
        e2e=ttft + extra + decode,
        streaming=job.streaming,
        structured=job.constraint is not None,
    )
    waited = ctx.state.record(job.rid, rec)  # blocks while the `stall` fault lasts
    if waited is None:
        return None
    e2e_latency = round(rec.e2e + waited, 6)
    delay = extra if job.streaming and not job.synthetic else 0.0
    return Outcome(
        job.rid, pieces, adm.prompt_tokens, adm.cached_tokens, finish, e2e_latency, delay
    )


def _decode(ctx: EmulatorContext, job: Job, whole: Outcome, speed: float) -> bool:
    """Hold the request while it decodes `whole` at `speed`, telling `job.on_progress` the
    output so far now and then; False if it got aborted meanwhile."""
    decode = whole.completion_tokens / speed
    if job.on_progress is None:
        return ctx.state.hold(job.rid, decode)
    every = max(PROGRESS_EVERY_S, decode / MAX_PROGRESS_EVENTS)
    began = time.monotonic()
    while (left := decode - (time.monotonic() - began)) > 0:
        if not ctx.state.hold(job.rid, min(every, left)):
            return False
        done = min(whole.completion_tokens, int((time.monotonic() - began) * speed))
        if done < whole.completion_tokens:
            job.on_progress(replace(whole, pieces=whole.pieces[:done],
                                    e2e_latency=round(time.monotonic() - job.started, 6)))
    return True


def _first_token_delay(ctx: EmulatorContext, job: Job) -> float:
    """The `slow_ttft` fault's delay: slept here for a plain answer, before the first event of a
    stream, and only modelled for synthetic load."""
    extra = ctx.faults.ttft_extra()
    if extra and not job.synthetic and not job.streaming:
        ctx.faults.sleep(extra)
    return extra


def _output(job: Job, bad: bool) -> tuple[tuple[str, ...], dict[str, Any]]:
    words = synth_words(job.prompt, max(job.max_new_tokens, 1))
    if job.constraint is None:
        pieces = word_pieces(words[: job.max_new_tokens])
        return tuple(pieces), {"type": "length", "length": len(pieces)}
    # Constrained output ends at end-of-text unless max_new_tokens cuts it short.
    make_text = violating_text if bad else constrained_text
    pieces = output_pieces(make_text(job.constraint, words))
    if len(pieces) > job.max_new_tokens:
        pieces = pieces[: job.max_new_tokens]
        return tuple(pieces), {"type": "length", "length": len(pieces)}
    return tuple(pieces), {"type": "stop", "matched": LLAMA_EOS_TOKEN}


def _aborted(ctx: EmulatorContext, job: Job, prompt: int, cached: int) -> Outcome:
    finish = {"type": "abort", "message": "Abort before prefill"}
    return Outcome(job.rid, (), prompt, cached, finish, round(time.monotonic() - job.started, 6),
                   disconnected=ctx.state.client_disconnected(job.rid))
