"""The `sglguard` command line: a click group (`sglguard.cli.app`); each command lives in a
module of this package and imports what it needs when it runs, so `sglguard emulator` and
`--help` start fast."""

from __future__ import annotations

# The commands register themselves on `main` when their modules are imported.
import sglguard.cli.catalog
import sglguard.cli.diag
import sglguard.cli.drained
import sglguard.cli.drill
import sglguard.cli.notices
import sglguard.cli.service
import sglguard.cli.silence
import sglguard.cli.web  # noqa: F401
from sglguard.cli.app import main

__all__ = ["main"]
