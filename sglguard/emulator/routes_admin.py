"""Operations endpoints: cache flush, aborts, pause and continue, internal state, logging."""

from __future__ import annotations

import logging
import math

from .context import EmulatorContext
from .wire import BadRequest, Reply, Request, empty_reply, json_reply, text_reply

logger = logging.getLogger(__name__)

FLUSHED = (
    "Cache flushed.\nPlease check backend logs for more details. (When there are running or "
    "waiting requests, the operation will not be performed.)\n"
)
PAUSE_MODES = frozenset({"abort", "retract", "in_place"})
# The only server_args SGLang 0.5.23 changes at run time (plus speculative-decoding thresholds).
MUTABLE_SERVER_ARGS = frozenset({"pp_max_micro_batch_size"})


def _validation_error(loc: list[str], msg: str) -> BadRequest:
    """FastAPI's answer to a request that does not fit the endpoint's model."""
    return BadRequest({"detail": [{"type": "value_error", "loc": loc, "msg": msg}]}, status=422)


def flush_cache(ctx: EmulatorContext, req: Request) -> Reply:
    raw = req.query.get("timeout", "0")
    try:
        timeout = float(raw)
    except ValueError:
        raise _validation_error(["query", "timeout"], "Input should be a valid number") from None
    if not math.isfinite(timeout):
        raise _validation_error(["query", "timeout"], "Input should be a finite number")
    if ctx.state.is_idle():
        ctx.state.flush_prefix_cache()
        return text_reply(200, FLUSHED)
    if timeout <= 0:
        return text_reply(400, "Flush cache failed.")
    if ctx.state.wait_idle(timeout):
        ctx.state.flush_prefix_cache()
        return text_reply(200, FLUSHED)
    return text_reply(400, "Timed out waiting for idle state.")


def abort_request(ctx: EmulatorContext, req: Request) -> Reply:
    body = req.json_object()
    if body.get("abort_all") is True:
        aborted = ctx.abort(None)
    elif isinstance(body.get("rid"), str):
        aborted = ctx.abort(body["rid"])
    else:
        aborted = 0  # SGLang accepts an abort that matches nothing
    logger.info("emulator aborted %d request(s)", aborted)
    return empty_reply(200)


def pause_generation(ctx: EmulatorContext, req: Request) -> Reply:
    body = req.json_object()
    mode = body.get("mode", "abort")
    if mode not in PAUSE_MODES:
        message = "Input should be 'abort', 'retract' or 'in_place'"
        raise _validation_error(["body", "mode"], message)
    if mode == "abort":
        _abort_until_idle(ctx)
    ctx.state.set_flag("paused", True)
    if mode == "retract":
        ctx.state.retract_running()
    return json_reply(200, {"message": "Generation paused successfully.", "status": "ok"})


def _abort_until_idle(ctx: EmulatorContext) -> None:
    """As SGLang's pause in "abort" mode: abort everything, and while requests were still in
    flight at that moment, wait a second and abort everything again (each call counted in
    num_aborted_requests_total)."""
    busy = ctx.state.in_flight() > 0
    ctx.abort(None)
    while busy and ctx.state.pause_for(1.0):
        ctx.abort(None)
        busy = ctx.state.in_flight() > 0


def continue_generation(ctx: EmulatorContext, req: Request) -> Reply:
    req.json()  # a malformed body is still a 400
    ctx.state.resume_retracted()
    ctx.state.set_flag("paused", False)
    return json_reply(200, {"message": "Generation continued successfully.", "status": "ok"})


def set_internal_state(ctx: EmulatorContext, req: Request) -> Reply:
    """HTTP 200 either way; the body says, per DP rank, whether the change was taken."""
    body = req.json_object()
    args = body.get("server_args")
    if not isinstance(args, dict):
        raise _validation_error(["body", "server_args"], "Field required")
    accepted = bool(args) and set(args) <= MUTABLE_SERVER_ARGS
    return json_reply(200, [accepted])


def configure_logging(ctx: EmulatorContext, req: Request) -> Reply:
    """SGLang's ConfigureLoggingReq: every field optional; an empty 200 either way."""
    ctx.request_log.configure(req.json_object())
    return empty_reply(200)
