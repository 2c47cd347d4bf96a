"""Read-only endpoints: health, readiness, metrics, server, model and load information."""

from __future__ import annotations

import shlex
from datetime import UTC, datetime
from typing import Any

from .context import EmulatorContext
from .metrics import Launch, render_metrics
from .state import GRAPH_GB, KV_CACHE_GB, MAX_TOTAL_NUM_TOKENS, WEIGHT_GB
from .wire import Reply, Request, empty_reply, json_reply

PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_MODEL_LEN = 131072


def health(ctx: EmulatorContext, req: Request) -> Reply:
    """/health and /health_generate: 503 starting or draining, else 200 after a 'generation'."""
    state = ctx.state
    if state.is_starting() or state.flags.draining:
        return empty_reply(503)
    if not ctx.profile.health_generates:
        return empty_reply(200)  # older releases: a plain 200, even when nothing advances
    # While paused or stalled no output arrives, so SGLang waits out its health-check timeout.
    if not state.wait_for_output(ctx.health_check_timeout):
        return empty_reply(503)
    if not state.pause_for(ctx.options.health_latency):
        return empty_reply(503)
    return empty_reply(200)


def ready(ctx: EmulatorContext, req: Request) -> Reply:
    state = ctx.state
    busy = state.is_starting() or state.flags.draining or state.flags.paused
    return empty_reply(503 if busy else 200)


def ping(ctx: EmulatorContext, req: Request) -> Reply:
    state = ctx.state
    return empty_reply(503 if state.is_starting() or state.flags.draining else 200)


def metrics(ctx: EmulatorContext, req: Request) -> Reply:
    opts = ctx.options
    launch = Launch(engine_type=opts.engine_type, dp_size=opts.dp_size,
                    priority_scheduling=opts.enable_priority_scheduling)
    text = render_metrics(ctx.snapshot(), ctx.model_name, ctx.profile, launch)
    return Reply(200, text.encode(), PROMETHEUS_TYPE)


def server_info(ctx: EmulatorContext, req: Request) -> Reply:
    return json_reply(200, server_info_body(ctx))


# Launch arguments the emulator does not vary: SGLang's values for one 80 GB GPU.
FIXED_SERVER_ARGS: dict[str, Any] = {
    "admin_api_key": None,
    "max_queued_requests": None,
    "max_total_tokens": None,
    "mem_fraction_static": 0.88,
    "chunked_prefill_size": 8192,
    "max_prefill_tokens": 16384,
    "schedule_policy": "fcfs",
    "schedule_conservativeness": 1.0,
    "tp_size": 1,
    "dp_size": 1,
    "pp_size": 1,
    "ep_size": 1,
    "enable_metrics": True,
    "watchdog_timeout": 300,
    "grammar_backend": "xgrammar",
    "crash_dump_folder": None,
    "log_level": "info",
    "random_seed": 42,
}


def server_info_body(ctx: EmulatorContext) -> dict[str, Any]:
    """Launch arguments as flat keys, as SGLang returns them (api_key included, unredacted)."""
    opts = ctx.options
    internal = {
        "effective_max_running_requests_per_dp": opts.max_running_requests,
        "last_gen_throughput": round(ctx.snapshot().last_gen_throughput, 3),
        "memory_usage": memory_usage(ctx),
    }
    return {
        "model_path": opts.model_path,
        "tokenizer_path": opts.model_path,
        "served_model_name": ctx.model_name,
        "host": opts.host,
        "port": ctx.port,
        "api_key": opts.api_key,
        "max_running_requests": opts.max_running_requests,
        **FIXED_SERVER_ARGS,
        "launch_command": _launch_command(ctx),
        "max_total_num_tokens": MAX_TOTAL_NUM_TOKENS,
        "version": ctx.version,
        "dp_size": opts.dp_size,
        "enable_priority_scheduling": opts.enable_priority_scheduling,
        "disaggregation_mode": opts.disaggregation_mode,
        "skip_server_warmup": opts.skip_server_warmup,
        "internal_states": [internal] * opts.dp_size,
    }


def memory_usage(ctx: EmulatorContext) -> dict[str, Any]:
    """GB by use; the memory_growth fault's leak lands in `kvcache`, unrounded, so that a
    check can recompute the rate (MiB/min = growth GB * 1024 / minutes)."""
    graph: Any = dict(GRAPH_GB) if ctx.profile.graph_by_phase else round(sum(GRAPH_GB.values()), 2)
    return {
        "weight": WEIGHT_GB,
        "kvcache": KV_CACHE_GB + ctx.faults.memory_growth_gb(),
        "token_capacity": MAX_TOTAL_NUM_TOKENS,
        "graph": graph,
    }


def _launch_command(ctx: EmulatorContext) -> str:
    opts = ctx.options
    argv = [
        "python3",
        "-m",
        "sglang.launch_server",
        "--model-path",
        opts.model_path,
        "--host",
        opts.host,
        "--port",
        str(ctx.port),
        "--max-running-requests",
        str(opts.max_running_requests),
        "--enable-metrics",
    ]
    if opts.api_key is not None:
        # The real launch_command is the command line, secrets and all.
        argv += ["--api-key", opts.api_key]
    return shlex.join(argv)


def model_info(ctx: EmulatorContext, req: Request) -> Reply:
    return json_reply(
        200,
        {
            "model_path": ctx.options.model_path,
            "tokenizer_path": ctx.options.model_path,
            "served_model_name": ctx.model_name,
            "is_generation": True,
            "preferred_sampling_params": None,
            "weight_version": "default",
            "has_image_understanding": False,
            "has_audio_understanding": False,
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
        },
    )


def v1_models(ctx: EmulatorContext, req: Request) -> Reply:
    model = {
        "id": ctx.model_name,
        "object": "model",
        "created": int(ctx.launched_at),
        "owned_by": "sglang",
        "root": ctx.options.model_path,
        "parent": None,
        "max_model_len": MAX_MODEL_LEN,
    }
    return json_reply(200, {"object": "list", "data": [model]})


def v1_loads(ctx: EmulatorContext, req: Request) -> Reply:
    """/v1/loads (and /loads): one load per DP rank, and their aggregate."""
    snap = ctx.snapshot()
    loads = []
    for rank, view in enumerate(snap.ranks):
        loads.append({
            "dp_rank": rank,
            "num_running_reqs": view.num_running_reqs,
            "num_waiting_reqs": view.num_queue_reqs,
            "num_total_reqs": view.num_running_reqs + view.num_queue_reqs,
            "num_used_tokens": view.num_used_tokens,
            "max_total_num_tokens": view.max_total_num_tokens,
            "token_usage": round(view.token_usage, 6),
            "gen_throughput": round(view.gen_throughput, 3),
            "cache_hit_rate": round(view.cache_hit_rate, 6),
            "utilization": view.utilization,
            "max_running_requests": snap.max_running_requests,
        })
    count = max(len(loads), 1)
    aggregate = {
        "total_running_reqs": snap.num_running_reqs,
        "total_waiting_reqs": snap.num_queue_reqs,
        "total_reqs": snap.num_running_reqs + snap.num_queue_reqs,
        "avg_token_usage": round(sum(item["token_usage"] for item in loads) / count, 6),
        "avg_throughput": round(sum(item["gen_throughput"] for item in loads) / count, 3),
        "avg_utilization": sum(item["utilization"] for item in loads) / count,
    }
    return json_reply(
        200,
        {
            "timestamp": datetime.now(UTC).isoformat(),
            "version": ctx.version,
            "dp_rank_count": len(loads),
            "loads": loads,
            "aggregate": aggregate,
        },
    )
