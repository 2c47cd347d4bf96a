"""Request dispatch: faults, authentication, routing and the HTTP metrics around them."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass

from . import routes_admin as admin
from . import routes_inference as inference
from . import routes_info as info
from .context import EmulatorContext
from .faults import parse_optional_fault
from .wire import BadRequest, Reply, Request, StreamReply, json_reply

logger = logging.getLogger(__name__)

Handler = Callable[[EmulatorContext, Request], Reply | StreamReply]

CONTROL_PREFIX = "/_emulator/"
# SGLang leaves these open even when an API key is set; the control API is ours.
OPEN_PREFIXES = ("/health", "/ready", "/metrics", CONTROL_PREFIX)

GET = frozenset({"GET"})
POST = frozenset({"POST"})
GET_POST = GET | POST


@dataclass(frozen=True)
class Route:
    """One endpoint: its handler, the methods it takes, and whether it runs inference."""

    handler: Handler
    methods: frozenset[str]
    inference: bool = False


ROUTES: dict[str, Route] = {
    "/health": Route(info.health, GET),
    "/health_generate": Route(info.health, GET),
    "/ready": Route(info.ready, GET),
    "/ping": Route(info.ping, GET),
    "/metrics": Route(info.metrics, GET),
    "/server_info": Route(info.server_info, GET),
    "/get_server_info": Route(info.server_info, GET),
    "/model_info": Route(info.model_info, GET),
    "/get_model_info": Route(info.model_info, GET),
    "/v1/models": Route(info.v1_models, GET),
    "/v1/loads": Route(info.v1_loads, GET),
    "/loads": Route(info.v1_loads, GET),
    "/generate": Route(inference.generate, POST, inference=True),
    "/v1/chat/completions": Route(inference.chat_completions, POST, inference=True),
    "/v1/completions": Route(inference.completions, POST, inference=True),
    "/flush_cache": Route(admin.flush_cache, GET_POST),
    "/abort_request": Route(admin.abort_request, POST),
    "/pause_generation": Route(admin.pause_generation, POST),
    "/continue_generation": Route(admin.continue_generation, POST),
    "/set_internal_state": Route(admin.set_internal_state, POST),
    "/configure_logging": Route(admin.configure_logging, POST),
}

# Endpoints that older releases only had under their old names (/get_server_info, ...).
RENAMED_ENDPOINTS = frozenset({"/server_info", "/model_info"})


def find_route(ctx: EmulatorContext, path: str) -> Route | None:
    if path in RENAMED_ENDPOINTS and not ctx.profile.renamed_endpoints:
        return None
    return ROUTES.get(path)


def authorized(api_key: str | None, req: Request) -> bool:
    if api_key is None or req.path.startswith(OPEN_PREFIXES):
        return True
    scheme, _, token = req.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip(), api_key)


def handle(ctx: EmulatorContext, req: Request) -> Reply | StreamReply | None:
    """Answer one request; None means close the connection without an answer."""
    if req.path.startswith(CONTROL_PREFIX):
        return _guarded(ctx, req, handle_control)
    route = find_route(ctx, req.path)
    if route is None:
        return _serve(ctx, req, None)
    # Like SGLang's middleware, count known endpoints only, so label values stay bounded.
    ctx.state.http_started(req.path, req.method)
    reply: Reply | StreamReply | None = None
    try:
        reply = _serve(ctx, req, route)
    finally:
        ctx.state.http_finished(req.path, req.method, None if reply is None else reply.status)
    return reply


def _serve(ctx: EmulatorContext, req: Request, route: Route | None) -> Reply | StreamReply | None:
    if not ctx.faults.wait_while_hung():
        return None
    # Inference endpoints take the slow fault's delay while counted as running.
    if (route is None or not route.inference) and not ctx.faults.delay_if_slow():
        return None
    if not authorized(ctx.options.api_key, req):
        return json_reply(401, {"error": "Unauthorized"})
    if route is None:
        return json_reply(404, {"detail": "Not Found"})
    if req.method not in route.methods:
        return json_reply(405, {"detail": "Method Not Allowed"})
    status = ctx.faults.error_status() if route.inference else 0
    if status:
        return inference.fault_error_reply(req.path, status)
    return _guarded(ctx, req, route.handler)


def _guarded(ctx: EmulatorContext, req: Request, handler: Handler) -> Reply | StreamReply:
    try:
        return handler(ctx, req)
    except BadRequest as exc:
        return json_reply(exc.status, exc.body)
    except Exception:
        logger.exception("emulator failed to answer %s %s", req.method, req.path)
        return json_reply(500, {"error": {"message": "Internal server error"}})


def handle_control(ctx: EmulatorContext, req: Request) -> Reply:
    """/_emulator/fault: read (GET) or change (POST {"mode": ...}) the fault; never faulted."""
    if req.path != CONTROL_PREFIX + "fault":
        return json_reply(404, {"detail": "Not Found"})
    if req.method == "POST":
        body = req.json_object()
        mode = body.get("mode")
        if mode is not None and not isinstance(mode, str):
            return json_reply(400, {"error": "mode must be a string or null"})
        try:
            fault = parse_optional_fault(mode)
        except ValueError as exc:
            return json_reply(400, {"error": str(exc)})
        ctx.set_fault(fault)
    elif req.method != "GET":
        return json_reply(405, {"detail": "Method Not Allowed"})
    current = ctx.faults.current
    return json_reply(200, {"mode": None if current is None else str(current)})
