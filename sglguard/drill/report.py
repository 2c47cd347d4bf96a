"""A drill report for people: one row per fault."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from sglguard.drill.run import Report

VERDICT_STYLE = {"pass": "green", "late": "yellow", "missed": "red", "not healed": "red",
                 "error": "red", "skipped": "yellow"}


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def print_report(console: Console, report: Report) -> None:
    kind = "emulator" if report.emulator else "server"
    scale = "" if report.time_scale == 1 else \
        f", the catalog's schedule x {report.time_scale:g} (--time-scale)"
    title = (f"drill #{report.id} of {report.target} ({kind}{scale}), "
             f"{report.started_at[:19]} UTC: {'PASSED' if report.passed else 'FAILED'}")
    table = Table(title=title, title_justify="left")
    for column in ("fault", "detected by", "detection", "bound", "remediation",
                   "healthy after", "notifications", "verdict"):
        table.add_column(column, overflow="fold")
    for item in report.outcomes:
        style = VERDICT_STYLE.get(item.verdict, "")
        detected = f"{item.check} (#{item.incident})" if item.detected else "not detected"
        table.add_row(item.fault, detected, _seconds(item.detection_s), _seconds(item.bound_s),
                      item.remediation or "-", _seconds(item.healthy_s),
                      str(len(item.notifications)),
                      f"[{style}]{item.verdict}[/]" if style else item.verdict)
    console.print(table)
    for item in report.outcomes:
        if item.note:
            console.print(f"{item.fault}: {item.note}", markup=False)
    if report.not_ok:
        console.print("checks not OK before the drills (a fault they catch is not told "
                      "apart): " + ", ".join(report.not_ok), markup=False)
    if report.ignored:
        console.print("incidents open before the drills, not counted: "
                      + ", ".join(f"#{number}" for number in report.ignored), markup=False)
