"""A stand-in SGLang HTTP server for the demo and the tests, with faults on demand."""

from __future__ import annotations

from .faults import VALID_MODES, Fault, parse_fault
from .options import EmulatorOptions
from .profiles import METRICS_VERSIONS
from .runner import Emulator, run_emulator

__all__ = [
    "METRICS_VERSIONS",
    "VALID_MODES",
    "Emulator",
    "EmulatorOptions",
    "Fault",
    "parse_fault",
    "run_emulator",
]
