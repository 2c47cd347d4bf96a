from __future__ import annotations

from sglguard.cli import main

main()
