"""The backlog of a store outage: in order, in memory up to its bound, then in a spill file that
is created 0600, refuses a symbolic link, survives its process and is bounded too. The store is
the one boundary faked here: `record` raises the error SQLAlchemy raises for a database that
cannot be reached, until the test lets it through."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from sglguard.backlog import Backlog, dump
from sglguard.domain import CheckResult, Status
from sglguard.spill import SpillError, SpillFile

START = datetime(2026, 1, 1, tzinfo=UTC)


class Store:
    """Where results land; down until `up` is set."""

    def __init__(self) -> None:
        self.up = False
        self.written: list[str] = []

    def record(self, result: CheckResult) -> None:
        if not self.up:
            raise OperationalError("insert", {}, Exception("connection refused"))
        self.written.append(result.message)


class Repair:
    """A held item that is not a result (a repair made during the outage)."""

    def __init__(self, store: Store, key: str) -> None:
        self.store, self.key, self.finished = store, key, False

    def ready(self) -> bool:
        return self.finished

    def write(self) -> None:
        self.store.written.append(self.key)


def result(number: int) -> CheckResult:
    return CheckResult(check="liveness", target="local", status=Status.CRITICAL, value=None,
                       unit="", message=f"run {number}", duration_ms=1.5,
                       started_at=START + timedelta(seconds=number))


def hold(backlog: Backlog, numbers: range) -> None:
    for number in numbers:
        backlog.hold(result(number), OperationalError("insert", {}, Exception("refused")))


def test_past_its_memory_bound_the_backlog_spills_to_a_private_file_and_keeps_the_order(
        tmp_path: Path) -> None:
    store = Store()
    spill = SpillFile(tmp_path / "backlog.jsonl", 1 << 20)
    backlog = Backlog(store.record, memory=3, spill=spill)
    hold(backlog, range(10))
    assert backlog.pending == 10 and backlog.outage
    assert len(spill.read()) == 10  # all of them, the first three moved there too
    assert oct(os.stat(spill.path).st_mode & 0o777) == "0o600"
    assert not backlog.replay()  # still down: nothing lost, nothing reordered
    store.up = True
    assert backlog.replay()
    assert store.written == [f"run {number}" for number in range(10)]
    assert not spill.path.exists() and backlog.pending == 0 and not backlog.outage


def test_a_spill_file_left_by_a_killed_process_is_written_by_the_next_one(
        tmp_path: Path) -> None:
    store = Store()
    path = tmp_path / "backlog.jsonl"
    hold(Backlog(store.record, memory=1, spill=SpillFile(path, 1 << 20)), range(5))
    later = Backlog(store.record, memory=1, spill=SpillFile(path, 1 << 20))  # a new process
    assert later.pending == 5 and later.outage
    hold(later, range(5, 7))  # still down at its start: after those of the last process
    store.up = True
    assert later.replay()
    assert store.written == [f"run {number}" for number in range(7)]
    held = result(3)
    assert held.duration_ms == 1.5 and held.started_at == START + timedelta(seconds=3)


def test_a_repair_is_written_after_the_results_before_it_and_only_once_it_is_done(
        tmp_path: Path) -> None:
    store = Store()
    backlog = Backlog(store.record, memory=2, spill=SpillFile(tmp_path / "b.jsonl", 1 << 20))
    repair = Repair(store, "local@restart")
    hold(backlog, range(2))
    backlog.hold_action(repair)
    hold(backlog, range(2, 4))
    store.up = True
    assert not backlog.replay()  # the repair is still running: the results after it wait
    assert store.written == ["run 0", "run 1"]
    repair.finished = True
    assert backlog.replay()
    assert store.written == ["run 0", "run 1", "local@restart", "run 2", "run 3"]


def test_a_symbolic_link_in_place_of_the_spill_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    (tmp_path / "backlog.jsonl").symlink_to(target)
    spill = SpillFile(tmp_path / "backlog.jsonl", 1 << 20)
    with pytest.raises(SpillError, match="symbolic link"):
        spill.append(["{}"])
    backlog = Backlog(Store().record, memory=2, spill=spill)
    hold(backlog, range(5))  # held in memory instead, the oldest dropped past the bound
    assert target.read_text() == "" and backlog.pending == 2 and backlog.dropped == 3


def test_a_full_spill_file_keeps_the_newest_in_memory_after_it(tmp_path: Path) -> None:
    store = Store()
    line = len(dump(result(0))) + 1
    spill = SpillFile(tmp_path / "backlog.jsonl", 5 * line + line // 2)  # five lines fit
    backlog = Backlog(store.record, memory=2, spill=spill)
    hold(backlog, range(12))
    in_file = len(spill.read())
    assert in_file == 5 and backlog.dropped == 12 - 5 - 2
    store.up = True
    assert backlog.replay()
    kept = [f"run {number}" for number in range(in_file)] + ["run 10", "run 11"]
    assert store.written == kept  # in order: the file's, then the newest two
