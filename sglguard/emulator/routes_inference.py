"""Inference endpoints: /generate and the OpenAI-compatible completions."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .context import EmulatorContext
from .engine import Job, Outcome, new_rid, read_max_new_tokens, run_job
from .live import live_stream
from .structured import GrammarError, read_constraint
from .wire import BadRequest, Reply, Request, StreamReply, json_reply, sse_event, status_phrase

# Cumulative-text streaming resends the whole text per event; grouping tokens into at most this
# many events keeps a long answer from costing quadratic bytes.
MAX_STREAM_EVENTS = 32


def generate(ctx: EmulatorContext, req: Request) -> Reply | StreamReply:
    started, created = time.monotonic(), time.time()
    body = req.json_object()
    params = body.get("sampling_params") or {}
    if not isinstance(params, dict):
        raise BadRequest({"error": {"message": "sampling_params must be a JSON object"}})
    stream = bool(body.get("stream", False))
    prompts = _prompts(body)
    if stream and isinstance(prompts, list):
        raise BadRequest({"error": {"message": "Streaming a batch of prompts is not emulated."}})
    max_new_tokens = read_max_new_tokens(params)
    given_rid = body.get("rid")
    rid = given_rid if isinstance(given_rid, str) else new_rid()
    try:
        constraint = read_constraint(params)
    except GrammarError as exc:
        ctx.state.count_grammar_abort()
        return _grammar_failure(rid, str(exc), stream, started)
    if isinstance(prompts, list):
        jobs = [Job(new_rid(), p, max_new_tokens, constraint, False, started) for p in prompts]
        answers = [_answer(run_job(ctx, job)) for job in jobs]
        for answer in answers:
            ctx.request_log.finished(body, answer, created)
        return json_reply(200, answers)
    job = Job(rid, prompts, max_new_tokens, constraint, stream, started,
              priority=_priority(body), client_gone=req.disconnected)
    if stream and ctx.options.decode_speed > 0:
        return StreamReply(200, live_stream(ctx, job, _generate_events))
    outcome = run_job(ctx, job)
    ctx.request_log.finished(body, _answer(outcome), created)
    if stream:
        return StreamReply(200, _stream_events(ctx, outcome))
    if outcome.disconnected:
        return _disconnected(outcome)
    return json_reply(200, _answer(outcome))


def _disconnected(out: Outcome) -> Reply:
    """What SGLang answers (to nobody) a request whose client hung up: its ValueError as 400,
    which http_responses_total counts."""
    message = (f"Request is disconnected from the client side (type 1). "
               f"Abort request obj.rid={out.rid!r}")
    return json_reply(400, {"error": {"message": message}})


def _generate_events(out: Outcome, final: bool) -> Iterator[bytes]:
    """A live /generate stream: the text so far in each event, then the finished one."""
    if not final:
        yield sse_event({"text": out.text,
                         "meta_info": _meta(out, out.completion_tokens, None, out.e2e_latency)})
        return
    yield sse_event({"text": out.text, "meta_info": _meta(
        out, out.completion_tokens, out.finish_reason, out.e2e_latency)})
    yield sse_event("[DONE]")


def _priority(body: Mapping[str, Any]) -> int | None:
    value = body.get("priority")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _prompts(body: Mapping[str, Any]) -> str | list[str]:
    text = body.get("text")
    if isinstance(text, str):
        return text
    if isinstance(text, list) and text and all(isinstance(t, str) for t in text):
        return list(text)
    ids = body.get("input_ids")
    if isinstance(ids, list) and all(isinstance(i, int) for i in ids):
        return " ".join(str(i) for i in ids)
    raise BadRequest({"error": {"message": "Either text or input_ids should be provided."}})


def _meta(out: Outcome, tokens: int, finish: Any, e2e: float) -> dict[str, Any]:
    return {
        "id": out.rid,
        "finish_reason": finish,
        "prompt_tokens": out.prompt_tokens,
        "weight_version": "default",
        "completion_tokens": tokens,
        "cached_tokens": out.cached_tokens,
        "e2e_latency": e2e,
    }


def _answer(out: Outcome) -> dict[str, Any]:
    meta = _meta(out, out.completion_tokens, out.finish_reason, out.e2e_latency)
    return {"text": out.text, "meta_info": meta}


def _stream_events(ctx: EmulatorContext, out: Outcome) -> Iterator[bytes]:
    # The `slow_ttft` fault: headers go out at once, the first token comes late.
    if out.first_token_delay and not ctx.faults.sleep(out.first_token_delay):
        return
    total = out.completion_tokens
    step = max(1, math.ceil(total / MAX_STREAM_EVENTS))
    for end in [*range(step, total, step), total]:
        final = end == total
        finish = out.finish_reason if final else None
        e2e = out.e2e_latency if final else round(out.e2e_latency * end / total, 6)
        meta = _meta(out, end, finish, e2e)
        yield sse_event({"text": "".join(out.pieces[:end]), "meta_info": meta})
    yield sse_event("[DONE]")


def _grammar_failure(rid: str, message: str, stream: bool, started: float) -> Reply | StreamReply:
    if not stream:
        return json_reply(400, {"error": {"message": message}})
    finish = {"type": "abort", "message": message, "status_code": 400}
    meta = {
        "id": rid,
        "finish_reason": finish,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cached_tokens": 0,
        "e2e_latency": round(time.monotonic() - started, 6),
    }
    return StreamReply(200, [sse_event({"text": "", "meta_info": meta}), sse_event("[DONE]")])


def chat_completions(ctx: EmulatorContext, req: Request) -> Reply | StreamReply:
    body = _openai_body(req)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _openai_error(400, "messages must be a non-empty list")
    # Llama 3 chat template, so prompt token counts include the template's overhead.
    prompt = "".join(
        f"<|start_header_id|>{m.get('role', 'user')}<|end_header_id|>\n\n{_content(m)}<|eot_id|>"
        for m in messages
        if isinstance(m, dict)
    )
    stream = body.get("stream") is True
    if stream and ctx.options.decode_speed > 0:
        job = _openai_job(body, prompt, stream, req)
        return StreamReply(200, live_stream(ctx, job, _live_chat_chunks(ctx, body, job.rid)))
    out = _run_openai(ctx, body, prompt, stream, req)
    if stream:
        return StreamReply(200, _chat_chunks(ctx, body, out))
    if out.disconnected:
        return _disconnected(out)
    message = {
        "role": "assistant",
        "content": out.text,
        "reasoning_content": None,
        "tool_calls": None,
    }
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": _openai_finish(out),
        "matched_stop": None,
    }
    return json_reply(200, _openai_envelope(ctx, body, out, "chat.completion", choice))


def _chunker(ctx: EmulatorContext, body: Mapping[str, Any],
             rid: str) -> Callable[[dict[str, Any], str | None], bytes]:
    model = body.get("model") if isinstance(body.get("model"), str) else ctx.model_name
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish,
                  "matched_stop": None}
        return sse_event({"id": rid, "object": "chat.completion.chunk", "created": created,
                          "model": model, "choices": [choice]})

    return chunk


def _live_chat_chunks(ctx: EmulatorContext, body: Mapping[str, Any],
                      rid: str) -> Callable[[Outcome, bool], Iterator[bytes]]:
    """A live chat stream: the role first, then each new piece of text as it decodes."""
    chunk = _chunker(ctx, body, rid)
    sent: list[int] = []  # pieces sent so far, once the role went out

    def render(out: Outcome, final: bool) -> Iterator[bytes]:
        if not sent:
            sent.append(0)
            yield chunk({"role": "assistant", "content": ""}, None)
        if out.completion_tokens > sent[0]:
            yield chunk({"content": "".join(out.pieces[sent[0]:])}, None)
            sent[0] = out.completion_tokens
        if final:
            yield chunk({}, _openai_finish(out))
            yield sse_event("[DONE]")

    return render


def _chat_chunks(ctx: EmulatorContext, body: Mapping[str, Any], out: Outcome) -> Iterator[bytes]:
    """Server-sent `chat.completion.chunk` events: the role, the text in pieces, the finish
    reason, then `data: [DONE]`, as SGLang streams a chat completion."""
    if out.first_token_delay and not ctx.faults.sleep(out.first_token_delay):
        return
    chunk = _chunker(ctx, body, out.rid)
    yield chunk({"role": "assistant", "content": ""}, None)
    total = out.completion_tokens
    step = max(1, math.ceil(total / MAX_STREAM_EVENTS))
    for begin in range(0, total, step):
        yield chunk({"content": "".join(out.pieces[begin:begin + step])}, None)
    yield chunk({}, _openai_finish(out))
    yield sse_event("[DONE]")


def completions(ctx: EmulatorContext, req: Request) -> Reply:
    body = _openai_body(req)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise _openai_error(400, "prompt must be a string")
    out = _run_openai(ctx, body, prompt, req=req)
    if out.disconnected:
        return _disconnected(out)
    choice = {
        "index": 0,
        "text": out.text,
        "logprobs": None,
        "finish_reason": _openai_finish(out),
        "matched_stop": None,
    }
    return json_reply(200, _openai_envelope(ctx, body, out, "text_completion", choice))


def _openai_body(req: Request) -> dict[str, Any]:
    content_type = req.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        # FastAPI answers a body model sent without a JSON content type with 422.
        detail = [
            {
                "type": "model_attributes_type",
                "loc": ["body"],
                "msg": "Input should be a valid dictionary or object to extract fields from",
                "input": req.body.decode("utf-8", "replace"),
            }
        ]
        raise BadRequest({"detail": detail}, status=422)
    try:
        return req.json_object()
    except BadRequest as exc:
        raise _openai_error(400, str(exc.body)) from None


def _run_openai(ctx: EmulatorContext, body: Mapping[str, Any], prompt: str,
                stream: bool = False, req: Request | None = None) -> Outcome:
    created = time.time()
    outcome = run_job(ctx, _openai_job(body, prompt, stream, req))
    ctx.request_log.finished(dict(body), _answer(outcome), created)
    return outcome


def _openai_job(body: Mapping[str, Any], prompt: str, stream: bool,
                req: Request | None) -> Job:
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    try:
        max_tokens = read_max_new_tokens(body, key)
    except BadRequest:
        raise _openai_error(400, f"{key} must be a non-negative integer") from None
    return Job(new_rid(), prompt, max_tokens, None, stream, time.monotonic(),
               priority=_priority(body), client_gone=req.disconnected if req else None)


def _content(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def _openai_finish(out: Outcome) -> str:
    kind = out.finish_reason.get("type")
    return "length" if kind == "length" else "abort" if kind == "abort" else "stop"


def _openai_envelope(
    ctx: EmulatorContext, body: Mapping[str, Any], out: Outcome, kind: str, choice: dict[str, Any]
) -> dict[str, Any]:
    model = body.get("model") if isinstance(body.get("model"), str) else ctx.model_name
    usage = {
        "prompt_tokens": out.prompt_tokens,
        "completion_tokens": out.completion_tokens,
        "total_tokens": out.prompt_tokens + out.completion_tokens,
        "prompt_tokens_details": None,
    }
    return {
        "id": out.rid,
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage,
    }


def _openai_error(status: int, message: str) -> BadRequest:
    body = {
        "object": "error",
        "message": message,
        "type": status_phrase(status),
        "param": None,
        "code": status,
    }
    return BadRequest(body, status=status)


def fault_error_reply(path: str, status: int) -> Reply:
    """What an inference endpoint answers under the `error:STATUS` and `errors:F` faults."""
    message = f"{status_phrase(status)} (emulated fault)"
    if path == "/generate":
        return json_reply(status, {"error": {"message": message}})
    return json_reply(status, _openai_error(status, message).body)
