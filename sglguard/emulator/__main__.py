"""``python -m sglguard.emulator``: run an emulated SGLang server in the foreground."""

from __future__ import annotations

import argparse
import logging
import sys

from .faults import VALID_MODES, parse_optional_fault
from .options import DISAGGREGATION_MODES, MAX_LOAD_RPS, EmulatorOptions
from .profiles import METRICS_VERSIONS
from .runner import run_emulator


def build_parser() -> argparse.ArgumentParser:
    defaults = EmulatorOptions()
    parser = argparse.ArgumentParser(
        prog="python -m sglguard.emulator",
        description="Emulated SGLang server (HTTP API and /metrics) for demos and tests.",
    )
    parser.add_argument("--host", default=defaults.host)
    parser.add_argument("--port", type=int, default=defaults.port, help="0 picks a free port")
    parser.add_argument("--model-path", default=defaults.model_path)
    parser.add_argument("--max-running-requests", type=int, default=defaults.max_running_requests)
    parser.add_argument("--api-key", default=None)
    parser.add_argument(
        "--startup-delay",
        type=float,
        default=defaults.startup_delay,
        help="seconds during which /health answers 503",
    )
    parser.add_argument("--fault", default=None, help=f"fault at start: {VALID_MODES}")
    parser.add_argument(
        "--health-latency",
        type=float,
        default=defaults.health_latency,
        help="seconds /health takes to answer 200",
    )
    parser.add_argument(
        "--load",
        type=float,
        default=defaults.load,
        help=f"synthetic requests per second served internally (0..{MAX_LOAD_RPS:g})",
    )
    parser.add_argument(
        "--metrics-version",
        choices=METRICS_VERSIONS,
        default=defaults.metrics_version,
        help="SGLang release to pose as; legacy = the older release of SGLang's docs sample",
    )
    parser.add_argument("--dp-size", type=int, default=defaults.dp_size,
                        help="data-parallel ranks (one scheduler, one series per family, each)")
    parser.add_argument("--enable-priority-scheduling", action="store_true",
                        help="queue/running gauges also per priority; totals under priority=\"\"")
    parser.add_argument("--default-priority-value", type=int, default=None,
                        help="priority of requests sent without one (with priority scheduling; "
                             "else the scheduler gives them the lowest, -2**63)")
    parser.add_argument("--disaggregation-mode", choices=DISAGGREGATION_MODES,
                        default=defaults.disaggregation_mode,
                        help="a PD role: a prefill worker observes no TTFT/ITL/TPOT")
    parser.add_argument("--skip-server-warmup", action="store_true",
                        help="no warm-up request: latency and token series appear with the "
                             "first request")
    parser.add_argument("--decode-speed", type=float, default=defaults.decode_speed,
                        help="tokens/s per request, held running (long requests last minutes); "
                             "0 answers at once")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        parse_optional_fault(args.fault)
        options = EmulatorOptions(
            host=args.host,
            port=args.port,
            model_path=args.model_path,
            max_running_requests=args.max_running_requests,
            api_key=args.api_key,
            startup_delay=args.startup_delay,
            fault=args.fault,
            health_latency=args.health_latency,
            load=args.load,
            metrics_version=args.metrics_version,
            dp_size=args.dp_size,
            enable_priority_scheduling=args.enable_priority_scheduling,
            default_priority_value=args.default_priority_value,
            disaggregation_mode=args.disaggregation_mode,
            skip_server_warmup=args.skip_server_warmup,
            decode_speed=args.decode_speed,
        )
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    return run_emulator(options)


if __name__ == "__main__":
    sys.exit(main())
