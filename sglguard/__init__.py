"""sglguard: keeps SGLang inference servers healthy without a human watching."""

from __future__ import annotations

__version__ = "0.1.0"
